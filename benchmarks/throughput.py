"""Env steps/s of the distributed stack (no advice) against `ala train --local`, in the same run, interleaved.

- local: `python -m ala train --local` (rollout and update in one process, one after the other).
- distributed: a real nats-server, `ala up --no-broker` with actor, learner, router and evaluator as processes (no
  advisor: advice off, as in the learning benchmark), and for `--actors 2` one more `ala actor`. Env steps/s is
  read from the actors' `ala_actor_env_steps_total` over a window after a warm-up; the learner's
  `ala_learner_samples_total` says whether training keeps up.

    python -m benchmarks.throughput [--env-id MiniGrid-DoorKey-8x8-v0] [--window 20] [--repeats 2]
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer

from ala.broker import EmbeddedBroker
from ala.config import BrokerSettings
from benchmarks.report import command_line, provenance, write_report
from benchmarks.scrape import scrape
from tests.support import free_port


def local_steps_per_s(env_id: str, total_steps: int) -> float:
    result = subprocess.run(
        [sys.executable, "-m", "ala", "train", "--local", "--env-id", env_id, "--total-steps", str(total_steps)],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, COLUMNS="200"),
    )
    match = re.search(r"\(([\d.]+) steps/s\)", result.stdout)
    assert match, result.stdout[-2000:]
    return float(match.group(1))


def distributed_steps_per_s(
    env_id: str, actors: int, warmup_s: float, window_s: float, learner_ranks: int = 1, scheme: str = "sync"
) -> dict[str, float]:
    """Env steps/s and trained samples/s of `actors` actor processes and `learner_ranks` learner ranks."""
    with tempfile.TemporaryDirectory() as scratch, ExitStack() as stack:
        broker = stack.enter_context(
            EmbeddedBroker(BrokerSettings(port=-1, monitor_port=-1, auth=False, store_dir=Path(scratch) / "nats"))
        )
        actor_ports = [free_port() for _ in range(actors)]
        learner_port = free_port()
        env = dict(
            os.environ,
            ALA_NATS_URL=broker.url,
            ALA_RUN="bench",
            ALA_ENV_ID=env_id,
            ALA_EVALUATOR_METRICS_PORT="0",
            ALA_ROUTER_METRICS_PORT="0",
            ALA_ROUTER_API_PORT="0",
            ALA_ACTOR_METRICS_PORT=str(actor_ports[0]),
            ALA_ACTOR_INSTANCE="actor-1",
            ALA_LEARNER_METRICS_PORT=str(learner_port),
            ALA_LEARNER_CHECKPOINT_DIR=str(Path(scratch) / "checkpoints"),
            ALA_UP_LEARNER_RANKS=str(learner_ranks),
            ALA_LEARNER_DISTRIBUTED=scheme,
        )
        learner_ports = [learner_port + rank for rank in range(learner_ranks)]  # `ala up` gives rank r port + r
        services = ["--service", "actor", "--service", "learner", "--service", "router", "--service", "evaluator"]
        commands = [([sys.executable, "-m", "ala", "up", "--no-broker", *services], env)]
        for i, port in enumerate(actor_ports[1:], start=2):
            extra = dict(env, ALA_ACTOR_METRICS_PORT=str(port), ALA_ACTOR_INSTANCE=f"actor-{i}", ALA_ACTOR_SEED=str(i))
            commands.append(([sys.executable, "-m", "ala", "actor"], extra))
        processes = [subprocess.Popen(cmd, env=e, stderr=subprocess.DEVNULL) for cmd, e in commands]
        try:

            def steps() -> float:
                return sum(scrape(port, "ala_actor_env_steps_total") for port in actor_ports)

            def waited() -> float:
                return sum(scrape(port, "ala_actor_flow_wait_seconds_total") for port in actor_ports)

            deadline = time.monotonic() + 60
            while steps() == 0 and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(warmup_s)

            def trained() -> float:
                return sum(scrape(port, "ala_learner_samples_total") for port in learner_ports)

            steps_0, trained_0, t_0 = steps(), trained(), time.monotonic()
            waited_0 = waited()
            time.sleep(window_s)
            steps_1, trained_1, t_1 = steps(), trained(), time.monotonic()
            waited_1 = waited()
            stale = sum(scrape(port, "ala_learner_chunks_stale_total") for port in learner_ports)
            step_seconds = sum(scrape(port, "ala_actor_step_seconds_sum") for port in actor_ports)
            step_count = sum(scrape(port, "ala_actor_step_seconds_count") for port in actor_ports)
        finally:
            for process in reversed(processes):
                process.send_signal(signal.SIGINT)
            for process in processes:
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
        return {
            "env_steps_per_s": (steps_1 - steps_0) / (t_1 - t_0),
            "trained_per_s": (trained_1 - trained_0) / (t_1 - t_0),
            "stale_chunks": stale,
            "mean_step_ms": 1000 * step_seconds / max(step_count, 1),
            "flow_wait_share": (waited_1 - waited_0) / (t_1 - t_0) / actors,
        }


def up_label(actors: int) -> str:
    return f"`ala up`, {actors} actor{'s' if actors > 1 else ''}"


def main(
    env_id: Annotated[str, typer.Option(help="Environment.")] = "MiniGrid-DoorKey-8x8-v0",
    window: Annotated[float, typer.Option(help="Seconds measured per distributed run.")] = 20.0,
    warmup: Annotated[float, typer.Option(help="Seconds before measuring.")] = 8.0,
    local_steps: Annotated[int, typer.Option(help="Env steps of each local run.")] = 40_000,
    repeats: Annotated[int, typer.Option(help="Interleaved repetitions of every configuration.")] = 2,
    out: Annotated[Path, typer.Option(help="Markdown report.")] = Path("benchmarks/results/throughput.md"),
) -> None:
    local, one, two = [], [], []
    for repeat in range(repeats):
        local.append(local_steps_per_s(env_id, local_steps))
        one.append(distributed_steps_per_s(env_id, 1, warmup, window))
        two.append(distributed_steps_per_s(env_id, 2, warmup, window))
        print(f"repeat {repeat}: local {local[-1]:.0f}, 1 actor {one[-1]}, 2 actors {two[-1]}", flush=True)

    def median(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(run[key] for run in runs)

    base = statistics.median(local)
    rows = [
        f"| `ala train --local` | {base:,.0f} | {base:,.0f} | 1.00 | - | - | - |",
        *(
            f"| {up_label(n)} | {median(runs, 'env_steps_per_s'):,.0f} | "
            f"{median(runs, 'trained_per_s'):,.0f} | {median(runs, 'env_steps_per_s') / base:.2f} | "
            f"{median(runs, 'stale_chunks'):.0f} | {median(runs, 'mean_step_ms'):.1f} | "
            f"{median(runs, 'flow_wait_share'):.0%} |"
            for n, runs in ((1, one), (2, two))
        ),
    ]
    report = "\n".join(
        [
            "# Throughput: distributed stack vs single process",
            "",
            # Every configuration runs the defaults: `distributed_steps_per_s` sets only plumbing (URLs, ports,
            # directories) and one learner rank, which is the default.
            provenance(command_line(), {name: {} for name in ("`ala train --local`", *map(up_label, (1, 2)))}),
            "",
            f"{env_id}, window {window:g} s after {warmup:g} s of warm-up. Medians of {repeats} interleaved repeats; "
            "the ratio is against the local trainer measured in the same run.",
            "",
            "| configuration | env steps/s | trained/s | ratio to local | stale chunks dropped | actor step ms | "
            "actor waiting for training |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            f"Raw: local {[round(x) for x in local]}; 1 actor {one}; 2 actors {two}.",
            "",
            "Actor step ms: mean time of one step of all 16 bots (bias lookup, policy forward, sampling, env step).",
            "Actor waiting: share of the window an actor spent in flow control, waiting for the learner to train its",
            "previous chunk and for the resulting weights (`ala_actor_flow_wait_seconds_total`).",
            "",
        ]
    )
    write_report(report, out)


if __name__ == "__main__":
    typer.run(main)
