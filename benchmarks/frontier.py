"""The frontier: what precision and latency a served LLM needs before its advice pays, by simulation.

The `simulated` advisor (`services/advisor/backends/planners.py`) answers as the planner would with probability
`precision` and a uniformly wrong answer otherwise, after `latency_s`, at most `max_concurrency` answers in flight:
what a vLLM server with a model of that quality gives. Through `ala up`, scored with advice off, each (precision,
latency, kind) cell runs beside `plain` on the same seeds; the heat map shows the geometric mean over seeds of
plain's env steps to 0.8 over the cell's (above 1: advice pays). Trust is on, as deployed: a cell where trust cuts
bad advice off shows as about 1.

    python -m benchmarks.frontier --env MiniGrid-DoorKey-8x8-v0 --seeds 5 \\
        --precisions 0.5 0.7 0.9 1.0 --latencies 0.1 1 5 --kinds actions --kinds options
"""

from __future__ import annotations

import itertools
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import typer

from benchmarks.learning import Run, paired_ratios, run_stack, steps_per_seed
from benchmarks.learning_value import ARMS, BUDGET, DEFAULT_BUDGET, arm_of
from benchmarks.report import provenance
from benchmarks.stats import geometric_mean_ratio


def simulated(precision: float, latency_s: float, kind: str) -> dict[str, Any]:
    """The overlay of one cell: the simulated advisor (the planner at a precision, after a latency)."""
    advisor = {"backend": "simulated", "precision": precision, "latency_s": latency_s, "advice": kind, "seed": 1}
    return {"advisor": {"advisors": [advisor]}}


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
    plain_max_seconds: Annotated[
        float | None, typer.Option(help="Seconds per plain run (default: learning_value's), the baseline's own budget.")
    ] = None,
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
    arms = {cell_name(*cell): arm_of(simulated(*cell), cell_name(*cell)) for cell in cells}
    plain_budget = (budget[0], plain_max_seconds or seconds)
    store = out.with_suffix(".json")
    done = resumed(store, env, budget, plain_budget)
    runs: dict[str, list[Run]] = {}
    for seed in range(1, seeds + 1):  # interleaved per seed: machine noise spreads over every cell alike
        for name, arm in {"plain": ARMS["plain"], **arms}.items():
            run = done.get((name, seed)) or run_stack(
                env, name, seed, *(plain_budget if name == "plain" else budget), arm, True
            )
            runs.setdefault(name, []).append(run)
            print(f"{name} seed {seed}: {run.steps_to_threshold} ({run.stopped})", flush=True)
            save(store, env, budget, plain_budget, runs)  # after every run: a long sweep resumes where it stopped
    speedup = {name: 1 / geometric_mean_ratio(paired_ratios(runs[name], runs["plain"])).point for name in arms}
    bound = {name: bound_sign(runs[name], runs["plain"]) for name in arms}
    draw(speedup, bound, precisions, latencies, kinds, out.with_suffix(".png"))
    command = "python -m benchmarks.frontier " + " ".join(sys.argv[1:])
    lines = [
        f"# The frontier on {env}: speed-up of simulated advice over plain PPO, by precision and latency",
        "",
        provenance(command, {name: arm.env for name, arm in arms.items()}),
        "",
        f"{seeds} seeds per cell, each beside `plain` on the same seed; budget {budget[0]:,} env steps or"
        f" {budget[1]:g} s per run (plain: {plain_budget[1]:g} s); runs stop at evaluation 0.8 (two in a row, advice"
        " off). Speed-up: plain's env steps over the cell's, geometric mean over seeds (a run that never reached 0.8"
        " counts at the steps it ran,"
        " so a speed-up beside a censored run is a bound). Heat map: "
        f"[{out.with_suffix('.png').name}]({out.with_suffix('.png').name}).",
        "",
        "Advised steps: the share of env steps taken under advice; trust: the router's at the end of each run (both"
        " medians over seeds): where they are low, trust has cut the advice off.",
        "",
        "| advice | precision | latency (s) | speed-up over plain | advised steps | trust | per seed (env steps to 0.8;"
        " ratio to plain) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for p, latency, kind in cells:
        name = cell_name(p, latency, kind)
        advised_share = np.median([share(run, "biased_state_steps") for run in runs[name]])
        trust = np.median([run.scraped.get("trust", float("nan")) for run in runs[name]])
        lines.append(
            f"| {kind} | {p:g} | {latency:g} | {bound[name]}{speedup[name]:.2f} | {advised_share:.1%} | {trust:.2f} |"
            f" {steps_per_seed(runs[name], runs['plain'])} |"
        )
    lines += ["", f"plain: {steps_per_seed(runs['plain'])}", ""]
    out.write_text("\n".join(lines))
    print("\n".join(lines))


def share(run: Run, counter: str) -> float:
    return run.scraped.get(counter, 0.0) / max(run.scraped.get("env_steps", 0.0), 1.0)


def save(
    store: Path, env: str, budget: tuple[int, float], plain_budget: tuple[int, float], runs: dict[str, list[Run]]
) -> None:
    runs_json = {name: [asdict(run) for run in named] for name, named in runs.items()}
    store.write_text(json.dumps({"env": env, "budget": budget, "plain_budget": plain_budget, "runs": runs_json}))


def resumed(
    store: Path, env: str, budget: tuple[int, float], plain_budget: tuple[int, float]
) -> dict[tuple[str, int], Run]:
    """Runs a previous sweep with the same env and budgets saved, by (arm, seed); none for other settings."""
    if not store.exists():
        return {}
    saved = json.loads(store.read_text())
    if (saved.get("env"), saved.get("budget"), saved.get("plain_budget")) != (env, list(budget), list(plain_budget)):
        return {}
    return {(name, run["seed"]): Run(**run) for name, named in saved["runs"].items() for run in named}


def bound_sign(cell: list[Run], plain: list[Run]) -> str:
    """How to read a speed-up beside censored runs: "<=" where some cell run never reached 0.8 (it counts at the
    steps it ran, fewer than it needed), ">=" where some plain run never did, "?" where both, "" where none."""
    cell_cut = any(run.steps_to_threshold is None for run in cell)
    plain_cut = any(run.steps_to_threshold is None for run in plain)
    return {(False, False): "", (True, False): "<=", (False, True): ">=", (True, True): "?"}[(cell_cut, plain_cut)]


def draw(
    speedup: dict[str, float],
    bound: dict[str, str],
    precisions: list[float],
    latencies: list[float],
    kinds: list[str],
    path: Path,
) -> None:
    figure, axes = plt.subplots(1, len(kinds), figsize=(4.5 * len(kinds), 3.8), squeeze=False)
    for axis, kind in zip(axes[0], kinds, strict=True):
        grid = np.array([[speedup[cell_name(p, latency, kind)] for latency in latencies] for p in precisions])
        censored = np.array(
            [[bound[cell_name(p, latency, kind)] in ("<=", "?") for latency in latencies] for p in precisions]
        )
        colours = matplotlib.colormaps["RdYlGn"].copy()
        colours.set_bad("lightgrey")  # a cell that never reached 0.8: its figure is only a bound, not a colour
        shown = np.ma.masked_where(censored, np.log2(grid))
        image = axis.imshow(shown, cmap=colours, vmin=-2, vmax=2, origin="lower", aspect="auto")
        axis.set_xticks(range(len(latencies)), [f"{latency:g}" for latency in latencies])
        axis.set_yticks(range(len(precisions)), [f"{p:g}" for p in precisions])
        axis.set_xlabel("latency per answer (s)")
        axis.set_ylabel("precision")
        axis.set_title(f"{kind}: speed-up over plain")
        for (row, column), value in np.ndenumerate(grid):
            sign = bound[cell_name(precisions[row], latencies[column], kind)].replace("<=", "≤").replace(">=", "≥")
            label = f"not reached\n({sign}{value:.2f})" if censored[row, column] else f"{sign}{value:.2f}"
            axis.text(column, row, label, ha="center", va="center", fontsize=9)
    figure.colorbar(image, ax=axes[0].tolist(), label="log2 speed-up")
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


if __name__ == "__main__":
    typer.run(main)
