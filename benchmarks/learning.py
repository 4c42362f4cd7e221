"""Plain PPO (no advice): env steps until the mean return of the last 100 episodes reaches 0.8, per seed.

Runs the `ala train --local` code (the distributed stack runs the same rollout and update). Seeds run in parallel
worker processes, one per core; steps-to-threshold does not depend on wall time, so that is fair.

    python -m benchmarks.learning [--envs MiniGrid-DoorKey-5x5-v0 --envs MiniGrid-DoorKey-8x8-v0] [--seeds 3]
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

THRESHOLD = 0.8
MAX_STEPS = {"MiniGrid-DoorKey-5x5-v0": 300_000, "MiniGrid-DoorKey-8x8-v0": 1_500_000}


@dataclass
class SeedResult:
    env_id: str
    seed: int
    steps_to_threshold: int | None
    env_steps: int
    seconds: float
    curve: list[tuple[int, float]]
    """(env steps, mean return of the last 100 episodes) after every update."""


def run_seed(job: tuple[str, int, int]) -> SeedResult:
    from ala.rl.local import Progress, train_local
    from services.actor.settings import ActorSettings
    from services.learner.settings import LearnerSettings

    env_id, seed, max_steps = job
    curve: list[tuple[int, float]] = []

    def record(progress: Progress) -> bool:
        curve.append((progress.env_steps, progress.mean_return))
        return progress.mean_return >= THRESHOLD

    run = train_local(ActorSettings(env_id=env_id, seed=seed), LearnerSettings(seed=seed), max_steps, record)
    reached = curve[-1][1] >= THRESHOLD
    return SeedResult(env_id, seed, run.env_steps if reached else None, run.env_steps, run.seconds, curve)


def plot(results: list[SeedResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted({r.env_id for r in results})
    figure, axes = plt.subplots(1, len(envs), figsize=(6 * len(envs), 4), squeeze=False)
    for axis, env_id in zip(axes[0], envs, strict=True):
        runs = [r for r in results if r.env_id == env_id]
        grid = np.linspace(0, max(r.env_steps for r in runs), 200)
        curves = []
        for run in runs:
            steps, returns = np.array(run.curve, dtype=float).T
            returns = np.nan_to_num(returns)
            # A run that stopped at the threshold stays there for the rest of the grid.
            curves.append(np.interp(grid, steps, returns, right=returns[-1]))
            axis.plot(steps, returns, alpha=0.3, linewidth=0.8)
        stacked = np.stack(curves)
        axis.plot(grid, stacked.mean(0), color="black", label=f"mean of {len(runs)} seeds")
        axis.fill_between(grid, stacked.min(0), stacked.max(0), alpha=0.2, color="grey", label="min-max")
        axis.axhline(THRESHOLD, linestyle="--", color="red", linewidth=0.8)
        axis.set(title=f"{env_id}: plain PPO", xlabel="env steps", ylabel="mean return (last 100 episodes)")
        axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main(
    envs: Annotated[list[str] | None, typer.Option(help="Environments (repeat the option).")] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per environment.")] = 3,
    jobs: Annotated[int, typer.Option(help="Seeds trained in parallel.")] = os.cpu_count() or 1,
    out_dir: Annotated[Path, typer.Option(help="Where the report, raw JSON and PNG go.")] = Path("benchmarks/results"),
) -> None:
    env_ids = envs or list(MAX_STEPS)
    work = [(env_id, seed, MAX_STEPS.get(env_id, 1_000_000)) for env_id in env_ids for seed in range(1, seeds + 1)]
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        results = []
        for result in pool.imap_unordered(run_seed, work):
            print(f"{result.env_id} seed {result.seed}: {result.steps_to_threshold} steps to {THRESHOLD}", flush=True)
            results.append(result)
    results.sort(key=lambda r: (r.env_id, r.seed))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "learning.json").write_text(json.dumps([asdict(r) for r in results]))
    plot(results, out_dir / "learning.png")

    lines = [
        "# Learning: plain PPO, steps to mean return 0.8",
        "",
        f"`python -m benchmarks.learning --seeds {seeds}` ({platform.machine()}, {time.strftime('%Y-%m-%d')}): the "
        "`ala train --local` code, default settings, mean return of the last 100 training episodes "
        "(stochastic policy).",
        "",
        "| env | seed | steps to 0.8 | env steps run | wall s | steps/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        reached = f"{r.steps_to_threshold:,}" if r.steps_to_threshold else f"not within {r.env_steps:,}"
        rate = r.env_steps / r.seconds
        lines.append(f"| {r.env_id} | {r.seed} | {reached} | {r.env_steps:,} | {r.seconds:.0f} | {rate:,.0f} |")
    lines.append("")
    for env_id in env_ids:
        reached = [r.steps_to_threshold for r in results if r.env_id == env_id and r.steps_to_threshold]
        if reached:
            lines.append(
                f"- {env_id}: median {statistics.median(reached):,.0f} steps over {len(reached)} seeds that reached 0.8"
            )
    lines += ["", "![curves](learning.png)", ""]
    (out_dir / "learning.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    typer.run(main)
