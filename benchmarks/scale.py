"""Scale-out on this machine: env steps/s and trained samples/s of `ala up` with 1, 2, 4 and 8 actor processes
and one learner, each actor its own process with its own name (the throughput benchmark's stack, advice off); then
2 actor processes with 2 learner ranks on torch.distributed, synchronous (`sync`) and periodic merge (`merge`).

    python -m benchmarks.scale [--actors 1 --actors 2 ...] [--window 15]

Where it saturates, and why, is in the report. Learning with 2 ranks against 1 learner, to the same samples and
scored by the evaluator, is `python -m benchmarks.learning_value --arms plain --arms ranks2-sync --arms ranks2-merge`.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Annotated

import typer

from benchmarks.report import write_report
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
    base = rows[0][1]["env_steps_per_s"]
    low = min(r["env_steps_per_s"] for _, r in rows) / base
    high = max(r["env_steps_per_s"] for _, r in rows) / base
    lines = [
        "# Scale-out: actor processes against one learner",
        "",
        f"`python -m benchmarks.scale --env-id {env_id} --window {window:g} --repeats {repeats}` on "
        f"{os.cpu_count()} cores ({platform.machine()}), {time.strftime('%Y-%m-%d')}. Each actor 16 bots in its own "
        f"process; medians of {repeats} interleaved runs per row (max/min of trained/s in the last column).",
        "",
        "| actor processes | env steps/s | trained/s | vs 1 actor | stale chunks dropped | actors waiting | spread |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {n} | {r['env_steps_per_s']:,.0f} | {r['trained_per_s']:,.0f} | {r['env_steps_per_s'] / base:.2f} | "
            f"{r['stale_chunks']:.0f} | {r['flow_wait_share']:.0%} | {r['spread']:.2f} |"
            for n, r in rows
        ),
        "",
        f"On {os.cpu_count()} cores the learner and the actors share the CPU: env steps/s stay within "
        f"{low:.2f}-{high:.2f}"
        " of one actor's, so more actor processes add waiting (flow control), not samples; with many actors the "
        f"learner trains less than they step ({rows[-1][1]['trained_per_s']:,.0f} of "
        f"{rows[-1][1]['env_steps_per_s']:,.0f}/s at {rows[-1][0]}) and drops the chunks that fall more than "
        "`max_policy_lag` versions behind (counted above). Expected on a 16-core box with the learner on a GPU "
        "(not measured): each actor process gets its own core, so steps/s grow with actors until the learner's "
        "samples/s or the broker's bytes/s (206 bytes per env step) saturate.",
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
