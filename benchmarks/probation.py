"""Probation through the stack: does a good advisor that trust has put on probation earn trust back once the
policy is degraded on purpose, and what does the actor pay while every advisor is on probation?

Per seed, DoorKey-5x5, the expert advising through `ala up --no-broker` (actor, router, evaluator, advisor) and a
learner run as its own process:
1. Run until the policy has learned the task and the router has put the expert on probation (trust <= 0.05: its
   episodes no longer beat the control group's). Read the actor's env steps/s over the next `window` seconds.
2. Degrade the policy on purpose: stop the learner (it checkpoints), replace the checkpoint's weights by a fresh
   network, start it again. Versions go on; the actors install the degraded weights with the next announcement.
3. Time, from the learner's restart, until the expert's trust is back to at least 0.25 (its initial trust).

The `plain` arm runs the same stack without the advisor for as long and reads the actor's env steps/s over the same
window: the goal is steps/s within 5% of it while every advisor is on probation.

    python -m benchmarks.probation [--seeds 3] [--out benchmarks/results/probation-5x5.md]
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer

from ala.broker import EmbeddedBroker
from ala.envs import adapter_for
from ala.rl.policy import Agent
from benchmarks.report import command_line, provenance
from benchmarks.scrape import metrics_text, sample
from tests.support import broker_settings, free_port

ENV_ID = "MiniGrid-DoorKey-5x5-v0"
PROBATION, REGAINED = 0.05, 0.25
SETTINGS = {"ALA_ADVISOR_ADVISORS": json.dumps([{"name": "expert", "backend": "expert"}])}


def poll(read: Callable[[], float], done: Callable[[float], bool], timeout_s: float) -> tuple[float, float] | None:
    """(seconds waited, value) once `done(read())`, polled every 0.5 s; None at the timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        value = read()
        if done(value):
            return time.monotonic() - started, value
        time.sleep(0.5)
    return None


def steps_per_second(port: int, window_s: float) -> float:
    before, started = sample(metrics_text(port), "ala_actor_env_steps_total"), time.monotonic()
    time.sleep(window_s)
    return (sample(metrics_text(port), "ala_actor_env_steps_total") - before) / (time.monotonic() - started)


def degrade(checkpoint: Path, seed: int) -> None:
    """Replace the learner's weights in its checkpoint by a freshly initialised network (versions go on)."""
    state = torch.load(io.BytesIO(checkpoint.read_bytes()), weights_only=True)
    learner = torch.load(io.BytesIO(state["learner"]), weights_only=True)
    torch.manual_seed(10_000 + seed)
    learner["agent"] = Agent(adapter_for(ENV_ID).probe_spec()).state_dict()
    inner, outer = io.BytesIO(), io.BytesIO()
    torch.save(learner, inner)
    state["learner"] = inner.getvalue()
    torch.save(state, outer)
    checkpoint.write_bytes(outer.getvalue())


def run_seed(seed: int, advised: bool, probation_wait_s: float, window_s: float, regain_wait_s: float) -> dict:
    services = ["actor", "router", "evaluator"] + (["advisor"] if advised else [])
    ports = {service: free_port() for service in services}
    result: dict = {"seed": seed, "arm": "expert" if advised else "plain"}
    with tempfile.TemporaryDirectory() as scratch, ExitStack() as stack:
        broker = stack.enter_context(EmbeddedBroker(broker_settings(Path(scratch) / "nats")))
        env = os.environ | {
            "ALA_NATS_URL": broker.url,
            "ALA_RUN": "probation",
            "ALA_ENV_ID": ENV_ID,
            "ALA_ACTOR_SEED": str(seed),
            "ALA_LEARNER_SEED": str(seed),
            "ALA_LEARNER_CHECKPOINT_DIR": f"{scratch}/checkpoints",
            "ALA_LEARNER_METRICS_PORT": "0",
            "ALA_ROUTER_API_PORT": "0",
            **{f"ALA_{service.upper()}_METRICS_PORT": str(port) for service, port in ports.items()},
            **(SETTINGS if advised else {}),
        }
        options = [option for service in services for option in ("--service", service)]
        up = subprocess.Popen([sys.executable, "-m", "ala", "up", "--no-broker", *options], env=env)
        learner = subprocess.Popen([sys.executable, "-m", "ala", "learner"], env=env)
        started = time.monotonic()
        try:
            trust = lambda: sample(metrics_text(ports["router"]), "ala_router_trust", {"advisor": "expert"})  # noqa: E731
            if advised:
                on_probation = poll(trust, lambda value: 0 < value <= PROBATION, probation_wait_s)
                result["probation_after_s"] = None if on_probation is None else time.monotonic() - started
                if on_probation is None:
                    return result
            else:
                time.sleep(max(0.0, probation_wait_s - (time.monotonic() - started)))
            result["window_starts_s"] = time.monotonic() - started
            result["steps_per_s"] = steps_per_second(ports["actor"], window_s)
            if not advised:
                return result
            learner.send_signal(signal.SIGINT)
            learner.wait(60)
            degrade(Path(scratch) / "checkpoints" / "probation" / "latest.pt", seed)
            learner = subprocess.Popen([sys.executable, "-m", "ala", "learner"], env=env)
            regained = poll(trust, lambda value: value >= REGAINED, regain_wait_s)
            result["regained_after_s"] = None if regained is None else regained[0]
            result["eval_return_after"] = sample(
                metrics_text(ports["evaluator"]), "ala_eval_return", {"mode": "sampled"}
            )
            return result
        finally:
            for process in (learner, up):
                process.send_signal(signal.SIGINT)
            for process in (learner, up):
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()


def main(
    seeds: Annotated[int, typer.Option(help="Seeds 1..N, each arm.")] = 3,
    probation_wait_s: Annotated[float, typer.Option(help="Longest wait for the expert's probation.")] = 240.0,
    window_s: Annotated[float, typer.Option(help="Seconds over which the actor's steps/s are read.")] = 20.0,
    regain_wait_s: Annotated[float, typer.Option(help="Longest wait for trust to come back.")] = 120.0,
    out: Annotated[Path, typer.Option(help="Markdown report; JSON beside it.")] = Path(
        "benchmarks/results/probation-5x5.md"
    ),
) -> None:
    rows = []
    for seed in range(1, seeds + 1):
        expert = run_seed(seed, True, probation_wait_s, window_s, regain_wait_s)
        print(expert, flush=True)
        # The plain arm reads its steps/s over the same stretch of its run as the expert's window.
        plain = run_seed(seed, False, expert.get("window_starts_s", probation_wait_s), window_s, regain_wait_s)
        print(plain, flush=True)
        rows += [expert, plain]
    lines = [
        "# Probation through the stack: trust regained after the policy is degraded, and what probation costs",
        "",
        provenance(command_line(), {"expert": SETTINGS, "plain": {}}),
        "",
        f"{ENV_ID}. The expert on probation: its trust <= {PROBATION} once its episodes no longer beat the control"
        f" group's. Then the learner's weights are replaced by a fresh network (stop, rewrite the checkpoint, start);"
        f" regained: trust back to >= {REGAINED}, timed from the learner's restart. Steps/s: the actor's env steps"
        f" over {window_s:g} s once the expert is on probation, against the stack without an advisor over the same"
        " stretch of its run.",
        "",
        "| seed | on probation after (s) | trust regained after (s) | eval return then | actor steps/s, expert on"
        " probation | without an advisor | ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = []
    for expert, plain in zip(rows[::2], rows[1::2], strict=True):
        probation = expert.get("probation_after_s")
        regained = expert.get("regained_after_s")
        ratio = expert["steps_per_s"] / plain["steps_per_s"] if "steps_per_s" in expert else None
        if ratio is not None:
            ratios.append(ratio)
        lines.append(
            f"| {expert['seed']} | {'-' if probation is None else f'{probation:.0f}'} | "
            f"{'not within the wait' if regained is None else f'{regained:.0f}'} | "
            f"{expert.get('eval_return_after', float('nan')):.2f} | {expert.get('steps_per_s', float('nan')):,.0f} | "
            f"{plain.get('steps_per_s', float('nan')):,.0f} | {'-' if ratio is None else f'{ratio:.2f}'} |"
        )
    if ratios:
        lines += ["", f"Median steps/s ratio, expert on probation / no advisor: {np.median(ratios):.2f}."]
    out.write_text("\n".join([*lines, ""]))
    out.with_suffix(".json").write_text(json.dumps(rows))
    print("\n".join(lines))


if __name__ == "__main__":
    typer.run(main)
