"""Late stability through the stack: does the evaluation stay up once the policy has learned the task?

`make run` showed the evaluation fall from 0.96 to 0.00 and recover, long after DoorKey-5x5 was learned, with no
advice applied; `ala train --local` held. This runs `ala up` without advice (actor, learner, evaluator) for a long
budget per arm and counts *drops*: evaluations under 0.5 after the first at or above 0.8. Arms:

- `default`: the learner's defaults (decoupled PPO, `target_kl` 0.02).
- `no-target-kl`: the same without early stopping (`ALA_LEARNER_TARGET_KL=0`, what every run had before).
- `none`: no off-policy correction (the PPO ratio against the actor's recorded policy, no importance weights).

The learner records every update's statistics (ALA_LEARNER_STATS_PATH), and the report's diagnostic puts each drop
next to them: the largest minibatch KL, the entropy and the raw advantage scale in the updates just before it,
against the same over the stable stretch after learning.

    python -m benchmarks.stability [--seeds 3] [--steps 450000] [--seconds 600] [--arms default --arms no-target-kl]
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from benchmarks.learning import Run, StackArm, arm_settings, plot_curves, run_stack, save, steps_per_seed
from benchmarks.report import command_line, provenance

ENV_ID = "MiniGrid-DoorKey-5x5-v0"
SERVICES = ("actor", "learner", "evaluator")
EVERY_2_S = {"ALA_EVALUATOR_MIN_INTERVAL_S": "2"}
"""Long runs are scored every 2 s, not back to back: a collapsed policy's evaluation plays 250-step episodes and
would take the learner's core."""
ARMS = {
    "default": StackArm(env=EVERY_2_S, services=SERVICES, learner_stats=True),
    "no-target-kl": StackArm(env=EVERY_2_S | {"ALA_LEARNER_TARGET_KL": "0"}, services=SERVICES, learner_stats=True),
    "none": StackArm(env=EVERY_2_S | {"ALA_LEARNER_CORRECTION": "none"}, services=SERVICES, learner_stats=True),
}
LEARNED, DROPPED = 0.8, 0.5
BEFORE_DROP = 20_000
"""The updates within this many env steps before a drop's evaluation are the ones that could have caused it."""


def after_learning(run: Run) -> list[float] | None:
    """The evaluation returns from the first at or above `LEARNED` on; None if none got there."""
    returns = [ret for _, _, ret in run.curve]
    first = next((i for i, ret in enumerate(returns) if ret >= LEARNED), None)
    return None if first is None else returns[first:]


def drops(run: Run) -> int:
    """Evaluations under `DROPPED` after the first at or above `LEARNED`."""
    return sum(ret < DROPPED for ret in after_learning(run) or [])


def first_drop(run: Run) -> int | None:
    """Env steps of the first evaluation under `DROPPED` after the first at or above `LEARNED`."""
    learned = False
    for steps, _, ret in run.curve:
        learned = learned or ret >= LEARNED
        if learned and ret < DROPPED:
            return steps
    return None


def diagnostic(runs: list[Run]) -> list[str]:
    """Each drop next to the learner's statistics: the updates just before it against the stable stretch."""
    lines = [
        f"### Diagnostic: the learner's updates in the {BEFORE_DROP:,} env steps before each drop",
        "",
        "Stable: the updates from the first evaluation >= 0.8 to that window (runs without a drop: to the end). Max KL:"
        " the largest approximate KL of any minibatch to the policy before its update; raw advantage std: before"
        " per-minibatch normalisation scales it to 1.",
        "",
        "| arm | seed | drop at | max KL before | stable: median, p99 of max KL | entropy before (stable) |"
        " raw advantage std before (stable) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        if not run.updates:
            continue
        learned_at = next((steps for steps, _, ret in run.curve if ret >= LEARNED), None)
        if learned_at is None:
            continue
        drop = first_drop(run)
        end = (drop - BEFORE_DROP) if drop is not None else run.updates[-1]["samples_trained"] + 1
        stable = [u for u in run.updates if learned_at <= u["samples_trained"] < end]
        before = [u for u in run.updates if drop is not None and end <= u["samples_trained"] <= drop]
        if not stable:
            continue

        def column(rows: list[dict[str, float]], key: str) -> np.ndarray:
            return np.array([row[key] for row in rows if key in row]) if rows else np.array([np.nan])

        stable_kl = column(stable, "losses/approx_kl_max")
        kl, entropy, scale = (
            (
                f"{column(before, 'losses/approx_kl_max').max():.3f}",
                f"{column(before, 'losses/entropy').min():.3f}",
                f"{np.median(column(before, 'adv/raw_std')):.4f}",
            )
            if before
            else ("-", "-", "-")
        )
        lines.append(
            f"| {run.arm} | {run.seed} | {'-' if drop is None else f'{drop:,}'} | {kl} | "
            f"{np.median(stable_kl):.4f}, {np.percentile(stable_kl, 99):.3f} | "
            f"{entropy} ({np.median(column(stable, 'losses/entropy')):.3f}) | "
            f"{scale} ({np.median(column(stable, 'adv/raw_std')):.4f}) |"
        )
    return [*lines, ""]


def report(runs: list[Run], seeds: int, steps: int, seconds: float, command: str) -> str:
    lines = [
        "# Late stability through the stack (no advice)",
        "",
        provenance(command, {arm: arm_settings(spec) for arm, spec in ARMS.items() if any(r.arm == arm for r in runs)}),
        "",
        f"{ENV_ID}, actor + learner + evaluator, {seeds} seeds per arm, interleaved, each to {steps:,} env steps or "
        f"{seconds:g} s. A drop: an evaluation under {DROPPED} after the first at or above {LEARNED}.",
        "",
        "| arm | reached 0.8 | env steps to 0.8 per seed | runs with a drop | drops | evaluations after 0.8 | lowest"
        " after 0.8 | final return |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for arm in dict.fromkeys(r.arm for r in runs):
        mine = [r for r in runs if r.arm == arm]
        after = [returns for returns in map(after_learning, mine) if returns is not None]
        lowest = min((min(a) for a in after), default=float("nan"))
        finals = [r.curve[-1][2] for r in mine if r.curve]
        lines.append(
            f"| {arm} | {len(after)}/{len(mine)} | {steps_per_seed(mine)} | "
            f"{sum(drops(r) > 0 for r in mine)}/{len(mine)} | "
            f"{sum(drops(r) for r in mine)} | {sum(len(a) for a in after)} | {lowest:.2f} | "
            f"{sum(finals) / max(len(finals), 1):.2f} |"
        )
    lines.append("")
    return "\n".join(lines + diagnostic(runs))


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(4, 1, figsize=(9, 12), sharex=True)
    plot_curves(axes[0], runs, ENV_ID, ARMS)
    axes[0].set(title=f"{ENV_ID}: evaluation without advice, through the stack", ylabel="evaluation return")
    panels = (
        ("losses/entropy", "entropy"),
        ("losses/approx_kl_max", "max minibatch KL"),
        ("adv/raw_std", "raw adv std"),
    )
    colours = {arm: f"C{i}" for i, arm in enumerate(ARMS)}
    for axis, (key, label) in zip(axes[1:], panels, strict=True):
        for run in runs:
            rows = [u for u in run.updates if key in u]
            if rows:
                axis.plot([u["samples_trained"] for u in rows], [u[key] for u in rows], lw=0.5, color=colours[run.arm])
            if (drop := first_drop(run)) is not None:
                axis.axvline(drop, color=colours[run.arm], linestyle=":")
        axis.set(yscale="log", ylabel=label)
    axes[-1].set_xlabel("env steps (dotted: a run's first drop)")
    figure.savefig(path, dpi=100, bbox_inches="tight")


def main(
    seeds: Annotated[int, typer.Option(help="Seeds per arm.")] = 3,
    steps: Annotated[int, typer.Option(help="Env steps per run.")] = 450_000,
    seconds: Annotated[float, typer.Option(help="Wall-clock bound per run.")] = 600.0,
    arms: Annotated[list[str] | None, typer.Option(help=f"Arms (default: all of {list(ARMS)}).")] = None,
    out: Annotated[Path, typer.Option(help="Markdown report; PNG and JSON beside it.")] = Path(
        "benchmarks/results/stability-5x5.md"
    ),
) -> None:
    runs = []
    for seed in range(1, seeds + 1):
        for arm in arms or list(ARMS):
            spec = ARMS[arm]
            run = run_stack(ENV_ID, arm, seed, steps, seconds, spec, stop_at_threshold=False)
            runs.append(run)
            print(f"{arm} seed {seed}: {drops(run)} drops, {len(run.curve)} evaluations", flush=True)
    save(runs, report(runs, seeds, steps, seconds, command_line()), out, plot)


if __name__ == "__main__":
    typer.run(main)
