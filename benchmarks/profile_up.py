"""Where `ala up`'s CPU goes while it learns DoorKey-5x5: py-spy samples every service process from the start.

Starts `ala up` (actor, learner, evaluator; a fresh broker store and checkpoint directory), attaches
`py-spy record --subprocesses` to it for `--seconds`, stops the stack, and sorts every sampled stack into a phase
(imports, env steps, policy forward, minibatch steps, GAE, checkpoints, weights, evaluation, NATS and asyncio).
py-spy counts a sample for every thread that is not idle, runnable or running: on 2 cores the shares say what
competes for them, not seconds of CPU.

    python -m benchmarks.profile_up [--seconds 30] [--out benchmarks/results/profile-up-5x5.md]
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from benchmarks.report import command_line, provenance

PHASES: list[tuple[str, str]] = [  # (phase, a frame that marks it), first match wins
    ("imports", "_find_and_load"),
    ("evaluator: episodes", "evaluate (ala/rl/evaluate.py"),
    ("actor: env step", "SyncVectorEnv.step"),
    ("actor: policy forward", "Rollout.step"),
    ("learner: minibatch steps", "Learner._minibatch_step"),
    ("learner: GAE and pi_prox", "Learner._prepare"),
    ("learner: checkpoint", "checkpoint"),
    ("weights: publish, fetch, install", "weights"),
    ("NATS and asyncio", "nats/"),
    ("NATS and asyncio", "asyncio/"),
]


def phase_of(stack: str) -> str:
    return next((phase for phase, marker in PHASES if marker in stack), "other")


def main(
    seconds: Annotated[int, typer.Option(help="Seconds sampled from the start.")] = 30,
    out: Annotated[Path, typer.Option(help="Markdown report.")] = Path("benchmarks/results/profile-up-5x5.md"),
) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        env = os.environ | {
            "ALA_ENV_ID": "MiniGrid-DoorKey-5x5-v0",
            "ALA_RUN": "profile",
            "ALA_BROKER_STORE_DIR": f"{scratch}/nats",
            "ALA_LEARNER_CHECKPOINT_DIR": f"{scratch}/checkpoints",
        }
        services = ["--service", "actor", "--service", "learner", "--service", "evaluator"]
        stack = subprocess.Popen(
            [sys.executable, "-m", "ala", "up", *services],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        raw = Path(scratch) / "stacks.txt"
        started = time.perf_counter()
        try:
            record = ["record", "--pid", str(stack.pid), "--subprocesses", "--rate", "50", "--duration", str(seconds)]
            subprocess.run(
                [Path(sys.executable).with_name("py-spy"), *record, "--format", "raw", "--output", str(raw)],
                check=True,
                capture_output=True,
            )
        finally:
            stack.send_signal(signal.SIGINT)
            log, _ = stack.communicate(timeout=60)
        elapsed = time.perf_counter() - started
        samples: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for line in raw.read_text().splitlines():
            frames, _, count = line.rpartition(" ")
            process = re.search(r"-m ala (\w+)", frames)
            samples[process.group(1) if process else "ala up (supervisor)"][phase_of(frames)] += int(count)
    total = sum(sum(c.values()) for c in samples.values())
    lines = [
        "# Where `ala up`'s CPU goes on DoorKey-5x5 (py-spy)",
        "",
        provenance(command_line(), {"up": {"services": "actor, learner, evaluator"}}),
        "",
        f"{seconds} s sampled from the stack's start at 50 Hz ({elapsed:.0f} s with shutdown). Share: of all non-idle"
        " samples of every process.",
        "",
        "| process | phase | share |",
        "|---|---|---:|",
    ]
    for process, phases in sorted(samples.items(), key=lambda item: -sum(item[1].values())):
        for phase, count in phases.most_common():
            lines.append(f"| {process} | {phase} | {count / total:.1%} |")
    evaluations = [line for line in log.splitlines() if "eval return" in line]
    lines += ["", "The evaluator's lines in that time:", "", *[f"    {line}" for line in evaluations], ""]
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    typer.run(main)
