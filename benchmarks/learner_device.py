"""One PPO update (`Learner.train`) on the CPU against CUDA, in the same run: does the learner's GPU pay off?

The update the learner service runs for each batch, on real DoorKey-8x8 trajectories (sampled with a random bias,
so that the exact correction does its full work), for the default batch (one chunk of 16 bots x 32 steps, hidden
64) and larger ones (more chunks per update, wider policies). Each repeat times every device in turn (interleaved);
the report gives the median milliseconds per update with its spread (min-max), samples per second, and CUDA's
speed-up over the CPU (ratio of medians). CPU: `torch_threads` threads, the learner's default 1 unless given.
A CUDA update ends with a synchronisation, since the service reads the losses (`.item()`) after every update.

    python -m benchmarks.learner_device [--repeats 5] [--out benchmarks/results/learner-device.md]
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer

from ala.envs import adapter_for
from ala.rl.config import PPOSettings
from ala.rl.learner import Learner
from ala.rl.policy import Agent
from ala.rl.rollout import Rollout
from ala.rl.trajectory import Trajectory
from benchmarks.report import command_line, provenance, write_report

ENV_ID = "MiniGrid-DoorKey-8x8-v0"
SHAPES = ((1, 64), (4, 64), (16, 64), (16, 256), (32, 256))
"""(chunks per update, hidden units): the default batch first."""


def trajectories(chunks: int, hidden: int, bots: int = 16, steps: int = 32) -> tuple[Agent, list[Trajectory]]:
    adapter = adapter_for(ENV_ID)
    torch.manual_seed(0)
    agent = Agent(adapter.probe_spec(hidden))
    rng = np.random.default_rng(0)
    rollout = Rollout(adapter.make_vector(bots), agent, steps, seed=0, device="cpu")
    n_actions = agent.spec.n_actions
    collected = [
        rollout.collect(lambda: rng.uniform(-2, 2, (bots, n_actions)).astype(np.float32)) for _ in range(chunks)
    ]
    return agent, collected


def time_update(learner: Learner, batch: list[Trajectory]) -> float:
    for trajectory in batch:
        trajectory.policy_version = learner.version  # no chunk is stale
    started = time.perf_counter()
    learner.train(batch)  # reads the losses with .item(): the device is synchronised when it returns
    return time.perf_counter() - started


def main(
    repeats: Annotated[int, typer.Option(help="Timed updates per device and shape.")] = 5,
    torch_threads: Annotated[int, typer.Option(help="CPU threads for torch.")] = 1,
    out: Annotated[Path, typer.Option(help="Markdown report.")] = Path("benchmarks/results/learner-device.md"),
) -> None:
    torch.set_num_threads(torch_threads)
    devices = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    rows = []
    for chunks, hidden in SHAPES:
        agent, batch = trajectories(chunks, hidden)
        learners = {device: Learner(agent.spec, PPOSettings(seed=1), device) for device in devices}
        for learner in learners.values():
            time_update(learner, batch)  # warm-up: allocations, CUDA context and kernels
        times: dict[str, list[float]] = {device: [] for device in devices}
        for _ in range(repeats):
            for device, learner in learners.items():
                times[device].append(time_update(learner, batch))
        samples = sum(t.actions.size for t in batch)
        cells = []
        for device in devices:
            median = statistics.median(times[device])
            cells.append(
                f"{1000 * median:.1f} ({1000 * min(times[device]):.1f}-{1000 * max(times[device]):.1f}) | "
                f"{samples / median:,.0f}"
            )
        speedup = (
            f"{statistics.median(times['cpu']) / statistics.median(times['cuda']):.2f}x" if "cuda" in times else "-"
        )
        rows.append(f"| {chunks} x 512 | {hidden} | {samples:,} | " + " | ".join(cells) + f" | {speedup} |")
        print(rows[-1], flush=True)
    header = " | ".join(f"{d} ms per update (min-max) | {d} samples/s" for d in devices)
    text = "\n".join(
        [
            "# One PPO update: CPU against CUDA",
            "",
            provenance(command_line()),
            "",
            f"torch {torch.__version__}, GPU: {gpu}. {ENV_ID}, 4 epochs x 4 minibatches, exact correction; median of "
            f"{repeats} interleaved updates.",
            "",
            f"| batch (chunks x samples) | hidden | samples | {header} | CUDA speed-up |",
            "|---|---:|---:|" + "---:|---:|" * len(devices) + "---:|",
            *rows,
            "",
        ]
    )
    write_report(text, out)


if __name__ == "__main__":
    typer.run(main)
