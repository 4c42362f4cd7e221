"""The frontier: what precision and latency a served LLM needs before its advice pays, by simulation.

The `simulated` advisor (`services/advisor/backends.py`) answers as the planner would with probability `precision`
and a uniformly wrong answer otherwise, after `latency_s`, at most `max_concurrency` answers in flight: what a
vLLM server with a model of that quality gives. Through `ala up`, scored with advice off, each (precision, latency,
kind) cell runs beside `plain` on the same seeds; the heat map shows the geometric mean over seeds of plain's env
steps to 0.8 over the cell's (above 1: advice pays). Trust is on, as deployed: a cell where trust cuts bad advice off
shows as about 1.

    python -m benchmarks.frontier --env MiniGrid-DoorKey-8x8-v0 --seeds 5 \\
        --precisions 0.5 0.7 0.9 1.0 --latencies 0.1 1 5 --kinds actions --kinds options
"""

from __future__ import annotations

import itertools
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import typer

from benchmarks.learning import Run, paired_ratios, run_stack, steps_per_seed
from benchmarks.learning_value import ARMS, BUDGET, DEFAULT_BUDGET, advised
from benchmarks.report import provenance
from benchmarks.stats import geometric_mean_ratio


def cell_name(precision: float, latency_s: float, kind: str) -> str:
    return f"sim-p{precision:g}-L{latency_s:g}-{kind}"


def main(
    env: Annotated[str, typer.Option(help="Environment.")] = "MiniGrid-DoorKey-8x8-v0",
    seeds: Annotated[int, typer.Option(help="Seeds 1..N per cell and for plain.")] = 5,
    precisions: Annotated[list[float] | None, typer.Option(help="Precision of each row.")] = None,
    latencies: Annotated[list[float] | None, typer.Option(help="Seconds per answer, each column.")] = None,
    kinds: Annotated[list[str] | None, typer.Option(help="actions (per step) and/or options (per situation).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Env-step budget per run (default: learning_value's).")] = None,
    max_seconds: Annotated[float | None, typer.Option(help="Seconds per run (default: learning_value's).")] = None,
    out: Annotated[Path, typer.Option(help="Markdown report; heat map PNG and JSON beside it.")] = Path(
        "benchmarks/results/frontier-8x8.md"
    ),
) -> None:
    precisions = precisions or [0.5, 0.7, 0.9, 1.0]
    latencies = latencies or [0.1, 1.0, 5.0]
    kinds = kinds or ["actions", "options"]
    steps, seconds = BUDGET.get(env, DEFAULT_BUDGET)
    budget = (max_steps or steps, max_seconds or seconds)
    cells = list(itertools.product(precisions, latencies, kinds))
    arms = {
        cell_name(p, latency, kind): advised(
            {"backend": "simulated", "precision": p, "latency_s": latency, "advice": kind, "seed": 1}
        )
        for p, latency, kind in cells
    }
    runs: dict[str, list[Run]] = {"plain": []}
    for seed in range(1, seeds + 1):  # interleaved per seed: machine noise spreads over every cell alike
        plain = run_stack(env, "plain", seed, *budget, ARMS["plain"], True)
        runs["plain"].append(plain)
        print(f"plain seed {seed}: {plain.steps_to_threshold}", flush=True)
        for name, arm in arms.items():
            run = run_stack(env, name, seed, *budget, arm, True)
            runs.setdefault(name, []).append(run)
            print(f"{name} seed {seed}: {run.steps_to_threshold}", flush=True)
    speedup = {name: 1 / geometric_mean_ratio(paired_ratios(runs[name], runs["plain"])).point for name in arms}
    draw(speedup, precisions, latencies, kinds, out.with_suffix(".png"))
    command = "python -m benchmarks.frontier " + " ".join(sys.argv[1:])
    lines = [
        f"# The frontier on {env}: speed-up of simulated advice over plain PPO, by precision and latency",
        "",
        provenance(command, {name: arm.env for name, arm in arms.items()}),
        "",
        f"{seeds} seeds per cell, each beside `plain` on the same seed; budget {budget[0]:,} env steps or"
        f" {budget[1]:g} s per run; runs stop at evaluation 0.8 (two in a row, advice off). Speed-up: plain's env"
        " steps over the cell's, geometric mean over seeds (a run that never reached 0.8 counts at the steps it ran,"
        " so a speed-up beside a censored run is a bound). Heat map: "
        f"[{out.with_suffix('.png').name}]({out.with_suffix('.png').name}).",
        "",
        "| advice | precision | latency (s) | speed-up over plain | per seed (env steps to 0.8; ratio to plain) |",
        "|---|---:|---:|---:|---|",
    ]
    for p, latency, kind in cells:
        name = cell_name(p, latency, kind)
        lines.append(
            f"| {kind} | {p:g} | {latency:g} | {speedup[name]:.2f} | {steps_per_seed(runs[name], runs['plain'])} |"
        )
    lines += ["", f"plain: {steps_per_seed(runs['plain'])}", ""]
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps({name: [asdict(r) for r in rs] for name, rs in runs.items()}))
    print("\n".join(lines))


def draw(
    speedup: dict[str, float], precisions: list[float], latencies: list[float], kinds: list[str], path: Path
) -> None:
    figure, axes = plt.subplots(1, len(kinds), figsize=(4.5 * len(kinds), 3.8), squeeze=False)
    for axis, kind in zip(axes[0], kinds, strict=True):
        grid = np.array([[speedup[cell_name(p, latency, kind)] for latency in latencies] for p in precisions])
        image = axis.imshow(np.log2(grid), cmap="RdYlGn", vmin=-2, vmax=2, origin="lower", aspect="auto")
        axis.set_xticks(range(len(latencies)), [f"{latency:g}" for latency in latencies])
        axis.set_yticks(range(len(precisions)), [f"{p:g}" for p in precisions])
        axis.set_xlabel("latency per answer (s)")
        axis.set_ylabel("precision")
        axis.set_title(f"{kind}: speed-up over plain")
        for (row, column), value in np.ndenumerate(grid):
            axis.text(column, row, f"{value:.2f}", ha="center", va="center")
    figure.colorbar(image, ax=axes[0].tolist(), label="log2 speed-up")
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


if __name__ == "__main__":
    typer.run(main)
