"""Learning through the stack: env steps and wall-clock seconds to an evaluation return of 0.8, per arm and seed.

Arms (no advice in any):
- `local`: `ala train --local`, the single-process baseline, scored every 8 updates (4,096 env steps; 8x8: every
  40 updates) by the same held-out evaluation; its seconds are training time only (no interpreter start-up, no
  evaluation).
- `up`: `ala up --no-broker` with actor, learner, router and evaluator as processes over a real nats-server.
- `up-2actors`: the same and one more `ala actor`.
- `up-hog`: `up` while another process spins on one core (labs share machines).

A run reaches 0.8 at the first of two consecutive evaluations whose return (sampled actions, 32 held-out seeds) is
>= 0.8, and ends at the second, or at its step or time budget: a run that never gets there is censored at the env
steps it ran (`benchmarks.stats`). Env steps are exact: the evaluator reports the steps behind the version it scored,
stamped by the learner. Stack seconds are from process start (`ala up`). Reports markdown (IQM with 95% bootstrap
intervals, paired per-seed ratios to `local`, provenance) and PNG curves (mean and spread over seeds).

    python -m benchmarks.learning [--seeds 5] [--envs MiniGrid-DoorKey-5x5-v0] [--arms local --arms up] [--quick]

Why one file over 300 lines: running a stack, following it and scoring runs are the benchmark's one procedure,
shared by every learning benchmark; the reports and statistics live in report.py and stats.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import nats
import numpy as np
import typer

from ala.broker import EmbeddedBroker
from benchmarks.report import provenance
from benchmarks.scrape import metrics_text, sample
from benchmarks.stats import (
    THRESHOLD,
    Figure,
    crossing,
    geometric_mean_ratio,
    iqm,
    paired_ratio,
    probability_fewer_steps,
)
from protos import Evaluation, decode, subjects
from tests.support import broker_settings, free_port

ARMS = ("local", "up", "up-2actors", "up-hog")
BUDGET = {  # env steps, seconds
    "MiniGrid-DoorKey-5x5-v0": (300_000, 120.0),
    "MiniGrid-DoorKey-8x8-v0": (1_000_000, 420.0),
}
LOCAL_EVAL_EVERY = {"MiniGrid-DoorKey-5x5-v0": 8, "MiniGrid-DoorKey-8x8-v0": 40}
"""Updates (of 512 env steps) between the local arm's evaluations: 8x8 episodes are long, so its evaluations are
costly and spaced out (20,480 steps), about as far apart as the evaluator service manages on this machine."""


@dataclass
class Run:
    env_id: str
    arm: str
    seed: int
    steps_to_threshold: int | None
    seconds_to_threshold: float | None
    stopped: str = ""
    """What ended the run: "threshold" (reached, confirmed), "steps" (its env-step budget) or "time" (its time limit:
    the run counts at the steps it ran, flagged)."""
    curve: list[tuple[int, float, float]] = field(default_factory=list)
    """(env steps, seconds since process start, evaluation return) of every evaluation."""
    scraped: dict[str, float] = field(default_factory=dict)
    """Counters read from the services' /metrics at the end of a stack run (`StackArm.scrape`)."""
    series: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    """(env steps, `StackArm.follow` values) read at every evaluation of a stack run."""
    updates: list[dict[str, float]] = field(default_factory=list)
    """The learner's statistics of every update (`StackArm.learner_stats`), `UPDATE_STATS` only."""


@dataclass(frozen=True)
class StackArm:
    """How one stack arm runs: `ala up` with these services and variables, and what it reads at the end."""

    env: dict[str, str] = field(default_factory=dict)
    services: tuple[str, ...] = ("actor", "learner", "router", "evaluator")
    actors: int = 1
    hog: bool = False
    """Another process spins on one core (labs share machines)."""
    scrape: dict[str, tuple[str, str, dict[str, str]]] = field(default_factory=dict)
    """name -> (service, metric, labels): summed from that service's /metrics just before the stack stops."""
    follow: dict[str, tuple[str, str, dict[str, str]]] = field(default_factory=dict)
    """The same, read at every evaluation (e.g. the router's trust over time)."""
    learner_stats: bool = False
    """Record the learner's statistics of every update (ALA_LEARNER_STATS_PATH) into `Run.updates`."""


UPDATE_STATS = (
    "samples_trained",
    "losses/entropy",
    "losses/approx_kl",
    "losses/approx_kl_max",
    "losses/minibatch_steps",
    "adv/raw_std",
    "returns/mean",
)


BENCH_ENV = {
    # Score as often as the evaluator can (sampled play only), so that the stack is measured at a grain close to the
    # local arm's every 4,096 steps; it stays niced, so training keeps the CPU.
    "ALA_EVALUATOR_MIN_INTERVAL_S": "0",
    "ALA_EVALUATOR_GREEDY": "false",
}
"""Settings every stack arm runs with (besides plumbing: broker URL, ports, scratch directories, seeds)."""


def arm_settings(spec: StackArm) -> dict[str, str]:
    """The settings of a stack arm that differ from the defaults, for the report's provenance."""
    shape = {"actor processes": str(spec.actors)} if spec.actors > 1 else {}
    return BENCH_ENV | spec.env | shape | ({"hog": "one core spinning"} if spec.hog else {})


STACK_ARMS = {"up": StackArm(), "up-2actors": StackArm(actors=2), "up-hog": StackArm(hog=True)}


def run_local(env_id: str, seed: int, max_steps: int) -> Run:
    command = ["train", "--local", "--env-id", env_id, "--seed", str(seed), "--total-steps", str(max_steps)]
    evaluation = ["--eval-every", str(LOCAL_EVAL_EVERY.get(env_id, 8)), "--stop-at-eval", str(THRESHOLD)]
    result = subprocess.run(
        [sys.executable, "-m", "ala", *command, *evaluation],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, COLUMNS="200"),
    )
    curve = [  # seconds: training only (no interpreter start, no evaluation)
        (int(steps.replace(",", "")), float(seconds), float(ret))
        for steps, seconds, ret in re.findall(r"at ([\d,]+) env steps after ([\d.]+)s: return ([\d.]+)", result.stdout)
    ]
    reached = crossing(curve) is not None
    return _result(env_id, "local", seed, curve, stopped="threshold" if reached else "steps")


def run_stack(
    env_id: str,
    arm: str,
    seed: int,
    max_steps: int,
    max_seconds: float,
    spec: StackArm,
    stop_at_threshold: bool = True,
    store_dir: Path | None = None,
) -> Run:
    """One arm's run; `store_dir` keeps the broker's JetStream store (the run's chunks) after it, for a dataset."""
    ports = {service: free_port() for service in spec.services}
    with tempfile.TemporaryDirectory() as scratch, ExitStack() as stack:
        broker = stack.enter_context(EmbeddedBroker(broker_settings(store_dir or Path(scratch) / "nats")))
        env = (
            os.environ
            | dict(
                ALA_NATS_URL=broker.url,
                ALA_RUN="bench",
                ALA_ENV_ID=env_id,
                ALA_ACTOR_SEED=str(seed),
                ALA_LEARNER_SEED=str(seed),
                ALA_LEARNER_CHECKPOINT_DIR=str(Path(scratch) / "checkpoints"),
                ALA_ROUTER_API_PORT="0",
                **{f"ALA_{service.upper()}_METRICS_PORT": str(port) for service, port in ports.items()},
            )
            | BENCH_ENV
            | spec.env
        )  # the arm's own settings win
        stats_path = Path(scratch) / "learner-stats.jsonl"
        if spec.learner_stats:
            env["ALA_LEARNER_STATS_PATH"] = str(stats_path)
        processes: list[subprocess.Popen[bytes]] = []
        if spec.hog:
            processes.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        curve: list[tuple[int, float, float]] = []
        started = time.monotonic()
        services = [option for service in spec.services for option in ("--service", service)]
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "ala", "up", "--no-broker", *services], env=env, stderr=subprocess.DEVNULL
            )
        )
        for extra in range(1, spec.actors):
            more = dict(
                env,
                ALA_ACTOR_INSTANCE=f"actor-{extra + 1}",
                ALA_ACTOR_SEED=str(1000 * extra + seed),
                ALA_ACTOR_METRICS_PORT="0",
            )
            processes.append(
                subprocess.Popen([sys.executable, "-m", "ala", "actor"], env=more, stderr=subprocess.DEVNULL)
            )
        scraped: dict[str, float] = {}
        stopped = "time"
        series: list[tuple[int, dict[str, float]]] = []

        def read(metrics: dict[str, tuple[str, str, dict[str, str]]]) -> dict[str, float]:
            return {
                name: sample(metrics_text(ports[svc]), metric, labels)
                for name, (svc, metric, labels) in metrics.items()
            }

        def follow(env_steps: int) -> None:
            if spec.follow:
                series.append((env_steps, read(spec.follow)))

        try:
            stopped = asyncio.run(
                _follow_evaluations(broker.url, curve, started, max_steps, max_seconds, stop_at_threshold, follow)
            )
            scraped = read(spec.scrape)
        finally:
            for process in reversed(processes):
                process.send_signal(signal.SIGTERM if process.args[-1] == "while True: pass" else signal.SIGINT)
            for process in processes:
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
        updates = [
            {key: record[key] for key in UPDATE_STATS if key in record}
            for record in map(json.loads, stats_path.read_text().splitlines() if stats_path.exists() else [])
        ]
    run = _result(env_id, arm, seed, curve, scraped, stopped)
    run.series, run.updates = series, updates
    return run


async def _follow_evaluations(
    url: str,
    curve: list[tuple[int, float, float]],
    started: float,
    max_steps: int,
    max_seconds: float,
    stop_at_threshold: bool,
    follow: Callable[[int], None],
) -> str:
    """Collect evaluations into `curve` until the threshold is reached (confirmed), the step budget is spent or time
    runs out; returns which ("threshold", "steps", "time")."""
    client = await nats.connect(url)
    done = asyncio.Event()
    stopped = ["time"]

    async def on_evaluation(msg: nats.aio.msg.Msg) -> None:
        evaluation = decode(msg.data, Evaluation)
        curve.append((evaluation.env_steps, time.monotonic() - started, evaluation.mean_return))
        await asyncio.to_thread(follow, evaluation.env_steps)
        if stop_at_threshold and crossing(curve) is not None:
            stopped[0] = "threshold"
            done.set()
        elif evaluation.env_steps >= max_steps:
            stopped[0] = "steps"
            done.set()

    await client.subscribe(subjects.evaluation_subject("bench"), cb=on_evaluation)
    with suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), max_seconds)
    await client.drain()
    return stopped[0]


def _result(
    env_id: str,
    arm: str,
    seed: int,
    curve: list[tuple[int, float, float]],
    scraped: dict[str, float] | None = None,
    stopped: str = "steps",
) -> Run:
    reached = crossing(curve)
    steps, seconds = (reached[0], reached[1]) if reached else (None, None)
    return Run(env_id, arm, seed, steps, seconds, stopped, curve, scraped or {})


def steps_figure(run: Run) -> Figure:
    """Env steps to the threshold; a run that never reached it counts at the steps it ran, as a lower bound."""
    if run.steps_to_threshold is not None:
        return Figure(run.steps_to_threshold)
    return Figure(run.curve[-1][0] if run.curve else 0, ">=")


def seconds_figure(run: Run) -> Figure:
    if run.seconds_to_threshold is not None:
        return Figure(run.seconds_to_threshold)
    return Figure(run.curve[-1][1] if run.curve else 0.0, ">=")


def paired_ratios(arm: list[Run], baseline: list[Run], figure: Callable[[Run], Figure] = steps_figure) -> list[Figure]:
    """arm / baseline seed by seed (only seeds both ran)."""
    by_seed = {r.seed: r for r in baseline}
    return [paired_ratio(figure(r), figure(by_seed[r.seed])) for r in arm if r.seed in by_seed]


def comparison_cells(arm: list[Run], baseline: list[Run]) -> list[str]:
    """The table cells every learning report shows for an arm against its baseline: reached, IQM env steps (95% CI),
    the geometric mean of paired ratios (95% CI), P(fewer steps than the baseline), IQM seconds."""
    steps = [steps_figure(r) for r in arm]
    reached = sum(1 for r in arm if r.steps_to_threshold is not None)
    by_time = sum(1 for r in arm if r.steps_to_threshold is None and r.stopped == "time")
    flag = f" ({by_time} by time)" if by_time else ""
    return [
        f"{reached}/{len(arm)}{flag}",
        iqm(steps).show(thousands=True),
        geometric_mean_ratio(paired_ratios(arm, baseline)).show(),
        f"{probability_fewer_steps(steps, [steps_figure(r) for r in baseline]):.2f}",
        iqm([seconds_figure(r) for r in arm]).show(digits=1),
    ]


def plot_curves(axis: Any, runs: list[Run], env_id: str, arms: Iterable[str]) -> None:
    """Mean evaluation return of each arm over env steps, with the min-max band over seeds."""
    for arm in arms:
        curves = [r.curve for r in runs if r.env_id == env_id and r.arm == arm and r.curve]
        if not curves:
            continue
        grid = np.linspace(0, max(c[-1][0] for c in curves), 60)
        # Each seed's curve holds its last evaluation after it stopped (runs may stop at the threshold).
        values = np.array([np.interp(grid, [p[0] for p in c], [p[2] for p in c]) for c in curves])
        axis.plot(grid, values.mean(0), label=f"{arm} ({len(curves)} seeds)")
        axis.fill_between(grid, values.min(0), values.max(0), alpha=0.12)
    axis.axhline(THRESHOLD, color="grey", linestyle=":")
    axis.legend(fontsize=8)


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted({r.env_id for r in runs})
    fig, axes = plt.subplots(1, len(envs), figsize=(6.5 * len(envs), 4.5), squeeze=False)
    for axis, env_id in zip(axes[0], envs, strict=True):
        plot_curves(axis, runs, env_id, ARMS)
        axis.set(title=f"{env_id}, no advice", xlabel="env steps", ylabel="evaluation return (held-out seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def steps_per_seed(runs: list[Run], baseline: list[Run] | None = None) -> str:
    """`s1: 24,064 (0.52), s2: >=60,416 (>=1.31), ...`: each seed's env steps to the threshold (censored: at least the
    steps it ran) and, with a baseline, the paired ratio."""
    by_seed = {r.seed: r for r in baseline or []}
    cells = []
    for run in runs:
        cell = f"s{run.seed}: {steps_figure(run).show(thousands=True)}"
        if run.seed in by_seed:
            cell += f" ({paired_ratio(steps_figure(run), steps_figure(by_seed[run.seed])).show()})"
        cells.append(cell)
    return ", ".join(cells)


def report(runs: list[Run], seeds: int, command: str) -> str:
    settings = {arm: arm_settings(STACK_ARMS[arm]) if arm in STACK_ARMS else {} for arm in ARMS}
    lines = [
        "# Learning through the stack: steps and seconds to evaluation return 0.8",
        "",
        provenance(command, {arm: values for arm, values in settings.items() if any(r.arm == arm for r in runs)}),
        "",
        f"{seeds} seeds per arm, one run at a time, arms interleaved per seed. Evaluation: the policy alone (no "
        "bias), sampled actions, 32 held-out seeds; reached = two consecutive evaluations >= 0.8, counted at the "
        "first. Env steps are exact (stamped by the learner on each version). IQM over seeds with a 95% stratified "
        "bootstrap interval; ratio: geometric mean of per-seed ratios to `local` on the same seed; P(fewer): the "
        "probability that a run of the arm needs fewer env steps than a `local` run. `>=`: a run that never reached "
        "0.8 counts at the steps it ran, so its figure is a lower bound; `(n by time)`: runs cut by the time limit.",
        "",
    ]
    for env_id in sorted({r.env_id for r in runs}):
        base = [r for r in runs if r.env_id == env_id and r.arm == "local"]
        lines += [
            f"## {env_id}",
            "",
            "| arm | reached 0.8 | IQM env steps (95% CI) | steps vs local (95% CI) | P(fewer steps than local) | "
            "IQM seconds (95% CI) | per seed (ratio to local) |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for arm in ARMS:
            arm_runs = [r for r in runs if r.env_id == env_id and r.arm == arm]
            if arm_runs:
                cells = comparison_cells(arm_runs, base)
                lines.append(f"| {arm} | {' | '.join(cells)} | {steps_per_seed(arm_runs, base)} |")
        lines.append("")
    return "\n".join(lines)


def main(
    envs: Annotated[list[str] | None, typer.Option(help="Environments (default: DoorKey 5x5 and 8x8).")] = None,
    arms: Annotated[list[str] | None, typer.Option(help=f"Arms (default: all of {ARMS}).")] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per arm (first_seed .. first_seed + N - 1).")] = 5,
    first_seed: Annotated[int, typer.Option(help="The first seed.")] = 1,
    quick: Annotated[bool, typer.Option(help="Smoke check: DoorKey-5x5, local and up, 2 seeds.")] = False,
    out: Annotated[Path, typer.Option(help="Markdown report; the PNG and JSON go beside it.")] = Path(
        "benchmarks/results/learning.md"
    ),
) -> None:
    if quick:
        envs, arms, seeds = ["MiniGrid-DoorKey-5x5-v0"], ["local", "up"], 2
    env_ids = envs or list(BUDGET)
    chosen = arms or list(ARMS)
    runs = []
    for env_id in env_ids:
        max_steps, max_seconds = BUDGET.get(env_id, (1_000_000, 600.0))
        for seed in range(first_seed, first_seed + seeds):
            for arm in chosen:  # interleaved, so machine noise spreads over every arm alike
                run = (
                    run_local(env_id, seed, max_steps)
                    if arm == "local"
                    else run_stack(env_id, arm, seed, max_steps, max_seconds, STACK_ARMS[arm])
                )
                runs.append(run)
                print(
                    f"{env_id} {arm} seed {seed}: {run.steps_to_threshold} steps, {run.seconds_to_threshold} s",
                    flush=True,
                )
    command = "python -m benchmarks.learning " + " ".join(sys.argv[1:])
    save(runs, report(runs, seeds, command.strip()), out, plot)


def save(runs: list[Run], text: str, out: Path, plot: Callable[[list[Run], Path], None]) -> None:
    """The markdown report at `out`, its curves (PNG) and every run (JSON) beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    plot(runs, out.with_suffix(".png"))
    out.with_suffix(".json").write_text(json.dumps([asdict(r) for r in runs]))
    print(text)


if __name__ == "__main__":
    typer.run(main)
