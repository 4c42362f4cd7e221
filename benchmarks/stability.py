"""Late stability through the stack: does the evaluation stay up once the policy has learned the task?

`make run` showed the evaluation fall from 0.96 to 0.00 and recover, long after DoorKey-5x5 was learned, with no
advice applied; `ala train --local` held. This runs `ala up` without advice (actor, learner, evaluator) for a long
budget per arm and counts *drops*: evaluations under 0.5 after the first at or above 0.8. Arms differ in the
learner's off-policy correction:

- `exact` (the default): decoupled PPO, ratio against the learner's own policy before the update, samples weighted
  by pi_prox / mu (truncated at `max_weight`).
- `none`: the PPO ratio against the actor's recorded policy, no weights (wrong by design under advice; here there
  is none, so it is plain PPO on data one version old).

    python -m benchmarks.stability [--seeds 3] [--steps 450000] [--seconds 170]
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from benchmarks.learning import Run, StackArm, arm_settings, plot_curves, run_stack, save
from benchmarks.report import command_line, provenance

ENV_ID = "MiniGrid-DoorKey-5x5-v0"
SERVICES = ("actor", "learner", "evaluator")
ARMS = {
    "exact": StackArm(services=SERVICES),
    "none": StackArm(env={"ALA_LEARNER_CORRECTION": "none"}, services=SERVICES),
}
LEARNED, DROPPED = 0.8, 0.5


def after_learning(run: Run) -> list[float] | None:
    """The evaluation returns from the first at or above `LEARNED` on; None if none got there."""
    returns = [ret for _, _, ret in run.curve]
    first = next((i for i, ret in enumerate(returns) if ret >= LEARNED), None)
    return None if first is None else returns[first:]


def drops(run: Run) -> int:
    """Evaluations under `DROPPED` after the first at or above `LEARNED`."""
    return sum(ret < DROPPED for ret in after_learning(run) or [])


def report(runs: list[Run], seeds: int, steps: int, seconds: float, command: str) -> str:
    lines = [
        "# Late stability through the stack (no advice)",
        "",
        provenance(command, {arm: arm_settings(spec) for arm, spec in ARMS.items()}),
        "",
        f"{ENV_ID}, actor + learner + evaluator, {seeds} seeds per arm, interleaved, each to {steps:,} env steps or "
        f"{seconds:g} s. A drop: an evaluation under {DROPPED} after the first at or above {LEARNED}.",
        "",
        "| arm | reached 0.8 | runs with a drop | drops | evaluations after 0.8 | lowest after 0.8 | final return |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for arm in ARMS:
        mine = [r for r in runs if r.arm == arm]
        after = [returns for returns in map(after_learning, mine) if returns is not None]
        lowest = min((min(a) for a in after), default=float("nan"))
        finals = [r.curve[-1][2] for r in mine if r.curve]
        lines.append(
            f"| {arm} | {len(after)}/{len(mine)} | {sum(drops(r) > 0 for r in mine)}/{len(mine)} | "
            f"{sum(drops(r) for r in mine)} | {sum(len(a) for a in after)} | {lowest:.2f} | "
            f"{sum(finals) / max(len(finals), 1):.2f} |"
        )
    lines.append("")
    return "\n".join(lines)


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5))
    plot_curves(axis, runs, ENV_ID, ARMS)
    axis.set_title(f"{ENV_ID}: evaluation without advice, through the stack")
    figure.savefig(path, dpi=100, bbox_inches="tight")


def main(
    seeds: Annotated[int, typer.Option(help="Seeds per arm.")] = 3,
    steps: Annotated[int, typer.Option(help="Env steps per run.")] = 450_000,
    seconds: Annotated[float, typer.Option(help="Wall-clock bound per run.")] = 170.0,
    out: Annotated[Path, typer.Option(help="Markdown report; PNG and JSON beside it.")] = Path(
        "benchmarks/results/stability-5x5.md"
    ),
) -> None:
    runs = []
    for seed in range(1, seeds + 1):
        for arm, spec in ARMS.items():
            run = run_stack(ENV_ID, arm, seed, steps, seconds, spec, stop_at_threshold=False)
            runs.append(run)
            print(f"{arm} seed {seed}: {drops(run)} drops, {len(run.curve)} evaluations", flush=True)
    save(runs, report(runs, seeds, steps, seconds, command_line()), out, plot)


if __name__ == "__main__":
    typer.run(main)
