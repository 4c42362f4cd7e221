"""Scale-out on this machine: env steps/s and trained samples/s of `ala up` with 1, 2, 4 and 8 actor processes
and one learner, each actor its own process with its own name (the throughput benchmark's stack, advice off); then
2 actor processes with 2 learner ranks on torch.distributed, synchronous (`sync`) and periodic merge (`merge`).

    python -m benchmarks.scale [--actors 1 --actors 2 ...] [--window 15]

Where it saturates, and why, is in the report. Learning with 2 ranks against 1 learner, to the same samples and
scored by the evaluator, is `python -m benchmarks.learning_value --arms plain --arms ranks2-sync --arms ranks2-merge`.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Annotated

import typer

from benchmarks.report import command_line, provenance, write_report
from benchmarks.throughput import distributed_steps_per_s

Config = tuple[int, int, str]
"""(actor processes, learner ranks, scheme)."""


def measure(env_id: str, configs: list[Config], repeats: int, warmup: float, window: float) -> dict[Config, dict]:
    """Every configuration `repeats` times, interleaved so that machine noise spreads over all alike; the median of
    each figure."""
    runs: dict[Config, list[dict[str, float]]] = {config: [] for config in configs}
    for _ in range(repeats):
        for actors, ranks, scheme in configs:
            result = distributed_steps_per_s(env_id, actors, warmup, window, learner_ranks=ranks, scheme=scheme)
            runs[(actors, ranks, scheme)].append(result)
            print(f"{actors} actors, {ranks} learner ranks ({scheme}): {result}", flush=True)
    return {
        config: {key: statistics.median(run[key] for run in results) for key in results[0]}
        | {"spread": max(r["trained_per_s"] for r in results) / min(r["trained_per_s"] for r in results)}
        for config, results in runs.items()
    }


FLAT = 1.2
"""At best under this many times the first row's env steps/s, more actor processes are said not to add samples."""


def processes(count: int) -> str:
    return f"{count} actor process{'es' if count > 1 else ''}"


def conclusion(rows: list[tuple[int, dict[str, float]]], cores: int | None) -> str:
    """The scale-out table in words, every clause generated from its figures: the fixed sentence this replaces
    claimed a flat curve and a learner-bound stack whatever was measured."""
    if len(rows) < 2:
        return "One configuration only: no scaling to state."
    (first, one), (last, many) = rows[0], rows[-1]
    base = one["env_steps_per_s"]
    best, at = max((r["env_steps_per_s"] / base, n) for n, r in rows)
    ratio = many["env_steps_per_s"] / base
    sentences = [
        f"From {processes(first)} to {last} (and one learner) on {cores} cores, env steps/s went from "
        f"{base:,.0f} to {many['env_steps_per_s']:,.0f}: {ratio:.2f}x, a scaling efficiency of "
        f"{ratio * first / last:.2f}; the most was {best:.2f}x, at {at}."
    ]
    waiting = (
        f"the actors' share of time waiting for the learner (flow control) went from {one['flow_wait_share']:.0%} "
        f"to {many['flow_wait_share']:.0%}"
    )
    flat = f"at most {best:.2f}x, under the {FLAT}x taken as a gain"
    if best < FLAT and many["flow_wait_share"] > one["flow_wait_share"]:
        sentences.append(f"More actor processes added waiting, not env steps ({flat}): {waiting}.")
    elif best < FLAT:
        sentences.append(f"More actor processes did not add env steps ({flat}); {waiting}.")
    else:
        sentences.append(f"More actor processes added env steps; {waiting}.")
    if many["trained_per_s"] < 0.98 * many["env_steps_per_s"]:
        dropped = (
            f", and dropped {many['stale_chunks']:.0f} chunks more than `max_policy_lag` versions behind"
            if many["stale_chunks"]
            else ""
        )
        sentences.append(
            f"At {last} the learner trained {many['trained_per_s']:,.0f} of the {many['env_steps_per_s']:,.0f} env "
            f"steps/s the actors made{dropped}."
        )
    return " ".join(sentences)


def main(
    env_id: Annotated[str, typer.Option(help="Environment.")] = "MiniGrid-DoorKey-8x8-v0",
    actors: Annotated[list[int] | None, typer.Option(help="Actor process counts (repeat).")] = None,
    warmup: Annotated[float, typer.Option(help="Seconds before measuring.")] = 8.0,
    window: Annotated[float, typer.Option(help="Seconds measured per configuration.")] = 15.0,
    ranks_actors: Annotated[int, typer.Option(help="Actor processes in the 2-learner-rank runs.")] = 2,
    repeats: Annotated[int, typer.Option(help="Interleaved repetitions of every configuration.")] = 2,
    out: Annotated[Path, typer.Option(help="Markdown report.")] = Path("benchmarks/results/scale.md"),
) -> None:
    counts = actors or [1, 2, 4, 8]
    configs = [(n, 1, "sync") for n in counts] + [(ranks_actors, 2, scheme) for scheme in ("sync", "merge")]
    medians = measure(env_id, configs, repeats, warmup, window)
    rows = [(n, medians[(n, 1, "sync")]) for n in counts]
    ranked = [(scheme, medians[(ranks_actors, 2, scheme)]) for scheme in ("sync", "merge")]
    one_learner = dict(rows).get(ranks_actors)
    first, base = rows[0][0], rows[0][1]["env_steps_per_s"]
    # Every configuration runs the defaults but for the learner ranks: `distributed_steps_per_s` sets only plumbing
    # (URLs, ports, directories) besides ALA_UP_LEARNER_RANKS and ALA_LEARNER_DISTRIBUTED (ignored with one rank).
    settings: dict[str, dict[str, str]] = {f"{processes(n)}, 1 learner": {} for n in counts}
    settings |= {
        f"{processes(ranks_actors)}, 2 learner ranks, {scheme}": {
            "ALA_UP_LEARNER_RANKS": "2",
            "ALA_LEARNER_DISTRIBUTED": scheme,
        }
        for scheme in ("sync", "merge")
    }
    lines = [
        "# Scale-out: actor processes against one learner",
        "",
        provenance(command_line(), settings),
        "",
        f"{env_id}, window {window:g} s after {warmup:g} s of warm-up. Each actor 16 bots in its own process; "
        f"medians of {repeats} interleaved runs per row (max/min of trained/s in the last column). Scaling "
        f"efficiency: the speed-up over {processes(first)} divided by the growth in actor processes (1.00: linear).",
        "",
        f"| actor processes | env steps/s | trained/s | vs {first} | scaling efficiency | stale chunks dropped "
        "| actors waiting | spread |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {n} | {r['env_steps_per_s']:,.0f} | {r['trained_per_s']:,.0f} | {r['env_steps_per_s'] / base:.2f} | "
            f"{r['env_steps_per_s'] / base * first / n:.2f} | {r['stale_chunks']:.0f} | {r['flow_wait_share']:.0%} | "
            f"{r['spread']:.2f} |"
            for n, r in rows
        ),
        "",
        conclusion(rows, os.cpu_count()),
        "",
        "**An expectation, not a result** (not measured): with a core for each actor process and the learner on a "
        "GPU, env steps/s would grow with actor processes until the learner's samples/s or the broker's bytes/s "
        "(206 bytes per env step, wire.md) saturate.",
        "",
        f"## Learner ranks: {ranks_actors} actor processes, 2 learner ranks on torch.distributed (gloo, CPU)",
        "",
        "| learners | env steps/s | trained/s | trained/s vs 1 learner | stale chunks dropped | actors waiting "
        "| spread |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {label} | {r['env_steps_per_s']:,.0f} | {r['trained_per_s']:,.0f} | "
            f"{r['trained_per_s'] / one_learner['trained_per_s']:.2f} | {r['stale_chunks']:.0f} | "
            f"{r['flow_wait_share']:.0%} | {r['spread']:.2f} |"
            for label, r in [("1 learner", one_learner), *((f"2 ranks, {k}", r) for k, r in ranked)]
            if one_learner is not None
        ),
        "",
    ]
    text = "\n".join(lines)
    write_report(text, out)


if __name__ == "__main__":
    typer.run(main)
