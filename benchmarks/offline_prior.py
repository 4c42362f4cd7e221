"""CQL-Prior against CQL and behaviour cloning, offline, on a dataset the stack itself stored in JetStream (issue 31).

1. Collect: one `ala up` run (an arm of benchmarks/arms.toml named by `--arm`, by default the simulated advisor at
   precision 0.7: the planner's answer, wrong 30% of the time, as a served LLM's would be) for `--dataset-steps` env
   steps, its broker's JetStream store kept on disk; `--full-states` has the actors record each step's full state
   too (what the planner needs to rank the dataset's states, `ala preference fit`). Or reuse a dataset with
   `--dataset`; or stop after collecting with `--collect-only`.
2. Export: the run's chunks read back from that store by `ala.dataset` (as `ala dataset export` does), with the
   dataset's provenance: which run, chunks, env steps, transitions, advised transitions, policy versions.
3. Train each method (`ala.rl.offline`: `bc`, `cql`, `cql-prior`) for `--train-steps` gradient steps per seed, the
   same dataset for all, scoring the network every `--every` steps on held-out seeds (greedy and sampled play,
   `ala.rl.evaluate`, as the evaluator service scores).

Reported: the final greedy return per method (median and range over seeds), paired per-seed ratios of CQL-Prior to
CQL, training seconds, and gradient steps to 90% of CQL's median final return (the seed paper's "training time");
PNG curves. The seed paper (arXiv 2505.07274) reports +14-29% return over CQL and 38-40% less training time.

    python -m benchmarks.offline_prior [--seeds 5] [--dataset .ala/datasets/MiniGrid-DoorKey-8x8-v0-simulated-150000]
"""

from __future__ import annotations

import asyncio
import copy
import json
import multiprocessing
import statistics
import tempfile
import tomllib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer

from ala.envs import adapter_for
from ala.rl.evaluate import evaluate
from ala.rl.offline import METHODS, Checkpoint, OfflineSettings, Transitions, train
from ala.rl.policy import Agent
from benchmarks.report import command_line, provenance, provenance_dict, write_report

RESULTS = Path(__file__).with_name("results")
DATASET_ARM: dict[str, Any] = {"advisor": {"advisors": [{"backend": "simulated", "precision": 0.7}]}}
BENCH_RUN = "bench"
"""The run name `benchmarks.learning.run_stack` gives every stack run."""


@dataclass
class Trained:
    method: str
    seed: int
    curve: list[tuple[int, float, float, float]] = field(default_factory=list)
    """(gradient steps, training seconds, greedy return, sampled return) at every checkpoint."""
    mean_output: list[float] = field(default_factory=list)
    """The network's mean output over 2,048 dataset states at every checkpoint: for CQL the mean Q-value, which a
    sound Q-function keeps within the returns the task pays (at most 1 on MiniGrid); for BC, logits."""

    @property
    def final_greedy(self) -> float:
        return self.curve[-1][2]


def dataset_overlay(arm: str | None, full_states: bool) -> dict[str, Any]:
    """The collecting run's settings overlay: `arm`'s table in benchmarks/arms.toml, or the default dataset arm."""
    from benchmarks.learning_value import ARMS_FILE, merged

    if arm is None:
        overlay = copy.deepcopy(DATASET_ARM)
    else:
        arms = tomllib.loads(ARMS_FILE.read_text())
        if arm not in arms:
            raise typer.BadParameter(f"no arm {arm!r} in {ARMS_FILE.name}; there are {', '.join(arms)}")
        overlay = arms[arm]
    if full_states:
        overlay = merged(overlay, {"actor": {"experimental": {"chunk_full_states": True}}})
    return overlay


def collect(env_id: str, steps: int, overlay: dict[str, Any], out: Path) -> tuple[Path, dict[str, Any]]:
    """Run the stack with the dataset's overlay, keep its JetStream store, export the run; returns the dataset and
    facts."""
    # Imported here: training from a saved dataset (on a GPU machine, say) needs neither the stack nor a broker.
    from ala.broker import EmbeddedBroker
    from ala.config import NatsSettings
    from ala.dataset import export_to
    from benchmarks.learning import run_stack
    from benchmarks.learning_value import arm_of
    from tests.support import broker_settings

    arm = arm_of(copy.deepcopy(overlay), "offline_prior dataset arm")
    with tempfile.TemporaryDirectory() as scratch:
        store = Path(scratch) / "nats"
        run = run_stack(env_id, "dataset", 0, steps, 3600.0, arm, stop_at_threshold=False, store_dir=store)
        with EmbeddedBroker(broker_settings(store)) as broker:  # the stopped run's store, served again
            arrays, about, _ = asyncio.run(export_to(NatsSettings(url=broker.url), BENCH_RUN, env_id, out))
    facts = json.loads(about.read_text()) | {
        "collected_by": "benchmarks.offline_prior (ala up, seed 0)",
        "collected_at_commit": provenance_dict(command_line())["commit"],
        "arm": overlay,
        "collecting_run_last_eval_return": run.curve[-1][2] if run.curve else None,
    }
    about.write_text(json.dumps(facts, indent=2) + "\n")
    return arrays, facts


def train_and_score(
    dataset: Path, env_id: str, method: str, seed: int, steps: int, every: int, episodes: int, device: str
) -> Trained:
    """One method and seed (in a process of its own where runs are parallel): train on `device`, score on the CPU."""
    torch.set_num_threads(1)
    data = Transitions.load(dataset)
    adapter = adapter_for(env_id)
    result = Trained(method, seed)
    rows = np.random.default_rng(seed).choice(len(data), min(2048, len(data)), replace=False)
    states = torch.as_tensor(data.observations[rows])

    def score(agent: Agent, checkpoint: Checkpoint) -> None:
        network = copy.deepcopy(agent).cpu()
        scored = evaluate(network, adapter, episodes, seed=seed)
        assert scored.greedy is not None
        result.curve.append(
            (checkpoint.step, checkpoint.seconds, scored.greedy.mean_return, scored.sampled.mean_return)
        )
        with torch.no_grad():
            result.mean_output.append(float(network.actor(network.encode(states)).mean()))

    settings = OfflineSettings(method=method, steps=steps, seed=seed)  # type: ignore[arg-type]
    train(data, adapter.probe_spec(), settings, every, score, device=device)
    return result


def steps_to(trained: Trained, level: float) -> int | None:
    return next((step for step, _, greedy, _ in trained.curve if greedy >= level), None)


GREEDY, SAMPLED = 2, 3
"""Columns of `Trained.curve`."""


def ratios_to(runs: list[Trained], baseline: list[Trained], column: int) -> list[str]:
    """Per seed, the final `column` return of `runs` over the baseline's ("n/a" where the baseline's is 0)."""
    return [
        f"{r.curve[-1][column] / b.curve[-1][column]:.2f}" if b.curve[-1][column] > 0 else "n/a"
        for r, b in zip(runs, baseline, strict=True)
    ]


def report(results: list[Trained], dataset: dict[str, Any], command: str, seeds: int) -> str:
    by_method = {m: sorted((r for r in results if r.method == m), key=lambda r: r.seed) for m in METHODS}
    cql_final = statistics.median(r.final_greedy for r in by_method["cql"])
    level = 0.9 * cql_final
    lines = [
        "# CQL-Prior vs CQL vs BC, offline, on a dataset the stack stored in JetStream",
        "",
        provenance(command, {"dataset run": {"overlay": json.dumps(dataset.get("arm", {}))}}),
        "",
        "## The dataset",
        "",
        "| fact | value |",
        "|---|---|",
        *[f"| {key} | {json.dumps(value)} |" for key, value in dataset.items()],
        "",
        f"## Results ({seeds} seeds per method, the same dataset; greedy return on held-out seeds, advice off)",
        "",
        "| method | final greedy return, median (min-max) | final sampled return, median | per-seed ratio to CQL"
        " (final greedy) | per-seed ratio to CQL (final sampled) | mean output on dataset states at the end (Q for"
        " CQL), median | training s per run, median | gradient steps to 90% of CQL's median final"
        f" ({level:.3f}), median |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, runs in by_method.items():
        finals = [r.final_greedy for r in runs]
        ratios, sampled_ratios = (ratios_to(runs, by_method["cql"], column) for column in (GREEDY, SAMPLED))
        outputs = [r.mean_output[-1] for r in runs if r.mean_output]
        reached = [steps_to(r, level) for r in runs]
        reached_cell = (
            f"{statistics.median(s for s in reached if s is not None):,.0f} ({sum(s is not None for s in reached)}"
            f"/{len(runs)} reached)"
            if level > 0 and any(s is not None for s in reached)
            else "n/a"
        )
        lines.append(
            f"| {method} | {statistics.median(finals):.3f} ({min(finals):.3f}-{max(finals):.3f})"
            f" | {statistics.median(r.curve[-1][3] for r in runs):.3f} | {', '.join(ratios)}"
            f" | {', '.join(sampled_ratios)} | {f'{statistics.median(outputs):.2f}' if outputs else '-'}"
            f" | {statistics.median(r.curve[-1][1] for r in runs):.1f} | {reached_cell} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: list[Trained], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for method in METHODS:
        runs = [r for r in results if r.method == method]
        steps = [step for step, *_ in runs[0].curve]
        values = np.array([[greedy for _, _, greedy, _ in r.curve] for r in runs])
        axis.plot(steps, np.median(values, 0), label=method)
        axis.fill_between(steps, values.min(0), values.max(0), alpha=0.2)
    axis.set_xlabel("gradient steps")
    axis.set_ylabel("greedy return, held-out seeds (median, range)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(
    env_id: Annotated[str, typer.Option()] = "MiniGrid-DoorKey-8x8-v0",
    dataset: Annotated[Path | None, typer.Option(help="Reuse this exported dataset (.npz beside its .json).")] = None,
    arm: Annotated[str | None, typer.Option(help="The collecting run's arm (benchmarks/arms.toml).")] = None,
    full_states: Annotated[bool, typer.Option(help="Record each step's full state in the dataset.")] = False,
    collect_only: Annotated[bool, typer.Option(help="Collect and export the dataset, train nothing.")] = False,
    dataset_steps: Annotated[int, typer.Option(help="Env steps of the collecting run.")] = 150_000,
    seeds: Annotated[int, typer.Option()] = 5,
    train_steps: Annotated[int, typer.Option(help="Gradient steps per method and seed.")] = 20_000,
    every: Annotated[int, typer.Option(help="Gradient steps between scorings.")] = 4_000,
    episodes: Annotated[int, typer.Option(help="Held-out episodes per scoring.")] = 50,
    device: Annotated[str, typer.Option(help="torch device for training (cpu, cuda).")] = "cpu",
    parallel: Annotated[int, typer.Option(help="Runs at a time, each in a process of its own.")] = 1,
    out: Annotated[Path, typer.Option()] = RESULTS / "offline-prior.md",
) -> None:
    if dataset is None:
        # No dot in the name: `with_suffix` would take what follows it for a suffix.
        name = f"{env_id}-{arm or 'simulated'}-{dataset_steps}{'-full' if full_states else ''}"
        dataset, facts = collect(env_id, dataset_steps, dataset_overlay(arm, full_states), Path(".ala/datasets") / name)
        print(f"dataset: {dataset} ({json.dumps(facts)})", flush=True)
        if collect_only:
            return
    else:
        facts = json.loads(dataset.with_suffix(".json").read_text())
    arrays = dataset.with_suffix(".npz")
    data = Transitions.load(arrays)
    print(f"dataset: {len(data):,} transitions, {int(data.advised.sum()):,} advised", flush=True)
    jobs = [
        (arrays, env_id, method, seed, train_steps, every, episodes, device)
        for seed in range(seeds)
        for method in METHODS
    ]
    # spawn: CUDA cannot be used in a forked child.
    with ProcessPoolExecutor(parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = []
        for trained in pool.map(train_and_score, *zip(*jobs, strict=True)):
            print(f"{trained.method} seed {trained.seed}: {trained.curve[-1]}", flush=True)
            results.append(trained)
    write_report(report(results, facts, command_line(), seeds), out)
    plot(results, out.with_suffix(".png"))
    out.with_suffix(".json").write_text(json.dumps({"dataset": facts, "runs": [asdict(r) for r in results]}))


if __name__ == "__main__":
    typer.run(main)
