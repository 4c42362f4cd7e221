"""Wall clock to a learned DoorKey-5x5, side by side: `ala up` against Stable-Baselines3 and the local trainer.

Per seed, one run at a time, in this order:
- `sb3`: `python -m benchmarks.sb3_peer` as a whole process (imports included), until the mean return of its last
  100 training episodes reaches 0.8 (SB3's own measure; `benchmarks/sb3_peer.py` has its settings).
- `up`: `ala up --no-broker` (actor, learner, evaluator) against a nats-server started beforehand, from the
  process start to the first evaluation >= 0.8 (32 held-out episodes, sampled actions, the policy alone).
- `local`: `ala train --local`, env steps to its first evaluation >= 0.8 (the steps goal: up <= 1.1x local).

    python -m benchmarks.clock [--seeds 3] [--out benchmarks/results/clock-5x5.md]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from benchmarks.learning import BENCH_ENV, Run, StackArm, run_local, run_stack
from benchmarks.report import command_line, provenance
from benchmarks.stats import THRESHOLD

ENV_ID = "MiniGrid-DoorKey-5x5-v0"
UP = StackArm(services=("actor", "learner", "evaluator"))
MAX_STEPS, MAX_SECONDS = 300_000, 240.0


def first_at_threshold(run: Run) -> tuple[int, float] | None:
    """(env steps, seconds since start) of the first evaluation >= the threshold."""
    return next(((steps, seconds) for steps, seconds, ret in run.curve if ret >= THRESHOLD), None)


def run_sb3(seed: int) -> tuple[int | None, float]:
    """(env steps at the threshold or None, whole-process seconds)."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.sb3_peer", "--seed", str(seed), "--env-id", ENV_ID],
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - started
    return json.loads(result.stdout.strip().splitlines()[-1])["env_steps"], seconds


def main(
    seeds: Annotated[int, typer.Option(help="Seeds 1..N.")] = 3,
    out: Annotated[Path, typer.Option(help="Markdown report; JSON beside it.")] = Path(
        "benchmarks/results/clock-5x5.md"
    ),
) -> None:
    rows = []
    for seed in range(1, seeds + 1):
        sb3_steps, sb3_seconds = run_sb3(seed)
        up = first_at_threshold(run_stack(ENV_ID, "up", seed, MAX_STEPS, MAX_SECONDS, UP))
        local = first_at_threshold(run_local(ENV_ID, seed, MAX_STEPS))
        rows.append({"seed": seed, "sb3": [sb3_steps, sb3_seconds], "up": up, "local": local})
        print(rows[-1], flush=True)
    lines = [
        "# Wall clock to DoorKey-5x5: `ala up` against Stable-Baselines3, side by side",
        "",
        provenance(command_line(), {"up": BENCH_ENV | UP.env, "sb3": {"settings": "benchmarks/sb3_peer.py"}}),
        "",
        "One run at a time per seed: SB3 (whole process, imports included; threshold: mean return of its last 100"
        " training episodes >= 0.8), then `ala up` (process start to the first evaluation >= 0.8; the nats-server is"
        " started before the clock), then `ala train --local` (env steps to its first evaluation >= 0.8).",
        "",
        "| seed | SB3 seconds | SB3 env steps | `ala up` seconds | `ala up` env steps | up / SB3 seconds |"
        " local env steps | up / local steps |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        sb3_steps, sb3_seconds = row["sb3"]
        up, local = row["up"], row["local"]
        up_cells = f"{up[1]:.1f} | {up[0]:,} | {up[1] / sb3_seconds:.2f}" if up else "- | - | -"
        local_cells = f"{local[0]:,} | {up[0] / local[0]:.2f}" if up and local else "- | -"
        lines.append(
            f"| {row['seed']} | {sb3_seconds:.1f} | {sb3_steps if sb3_steps is None else f'{sb3_steps:,}'} | "
            f"{up_cells} | {local_cells} |"
        )
    reached = [row for row in rows if row["up"]]
    beaten = sum(row["up"][1] < row["sb3"][1] for row in reached)
    lines += [
        "",
        f"`ala up` beat SB3's whole-process time on {beaten} of {len(rows)} seeds"
        + (f"; median up / SB3 seconds {np.median([r['up'][1] / r['sb3'][1] for r in reached]):.2f}" if reached else "")
        + ".",
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps(rows))
    print("\n".join(lines))


if __name__ == "__main__":
    typer.run(main)
