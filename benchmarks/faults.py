"""The fault matrix: kill -9 each part of a running stack in turn and measure what the reliability issue promises.

The stack: the embedded broker (with its per-service users) and the advisor (expert), router, actor and learner,
each its own process, training DoorKey-5x5. For each fault, in order (broker, router, advisor, learner, actor):
steady state, kill -9, restart after `--down-s`, then:

- the actor's p99 step time in the window after the kill against the window before (goal <= 1.5x; the actor's own
  fault has no "during"),
- seconds from the restart until the learner publishes a newer version (goal <= 10 s),
- seconds from the restart until the actor samples with the newest announced version (goal <= 10 s).

At the end, after a clean stop: every chunk the broker stored was settled by a learner (trained, or dropped as
stale and counted: nothing unacknowledged or undelivered), and no chunk id appears twice in the final checkpoint's
trained ids (none trained twice in the model's lineage).

    python -m benchmarks.faults                   # writes benchmarks/results/faults.md
    python -m benchmarks.faults --quick           # shorter windows, for CI
"""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch
import typer
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from ala.broker import EmbeddedBroker
from ala.bus import Bus
from ala.config import NatsSettings
from ala.metrics import bus_metrics
from ala.testing import broker_settings, free_port, scrape
from benchmarks.report import write_report
from protos import WeightsAnnouncement, decode, subjects

SERVICES = ("advisor", "router", "actor", "learner")
FAULTS = ("broker", "router", "advisor", "learner", "actor")
RUN = "faults"


@dataclass
class Stack:
    """The broker and one process per service, each restartable."""

    scratch: Path
    broker: EmbeddedBroker
    ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def env(self, service: str) -> dict[str, str]:
        assert self.broker.credentials is not None
        return dict(
            os.environ,
            ALA_RUN=RUN,
            ALA_NATS_URL=self.broker.url,
            ALA_NATS_RECONNECT_TIME_WAIT_S="0.1",
            ALA_ENV_ID="MiniGrid-DoorKey-5x5-v0",
            ALA_ADVISOR_ADVISORS='[{"name": "expert", "backend": "expert"}]',
            ALA_LEARNER_CHECKPOINT_DIR=str(self.scratch / "checkpoints"),
            ALA_LEARNER_ACK_WAIT_S="5",
            ALA_ROUTER_API_PORT="0",
            **{f"ALA_{service.upper()}_METRICS_PORT": str(self.ports[service])},
            **self.broker.credentials.env(service),
        )

    def start(self, service: str) -> None:
        log = (self.scratch / f"{service}.log").open("ab")
        self.processes[service] = subprocess.Popen(
            [sys.executable, "-m", "ala", service], env=self.env(service), stdout=log, stderr=log
        )

    def kill(self, part: str) -> None:
        if part == "broker":
            self.broker.kill()
        else:
            self.processes[part].kill()
            self.processes[part].wait()

    def restart(self, part: str) -> None:
        if part == "broker":
            self.broker.start()
        else:
            self.start(part)

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def buckets(samples: dict[str, float]) -> dict[float, float]:
    prefix = "ala_actor_step_seconds_bucket"
    return {
        float(key.split("'le', '")[1].split("'")[0]): value for key, value in samples.items() if key.startswith(prefix)
    }


def p99(before: dict[float, float], after: dict[float, float]) -> float:
    """The 99th percentile step time between two scrapes of the cumulative histogram (bucket upper bound)."""
    counts = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    total = counts[-1][1] if counts else 0.0
    for le, count in counts:
        if total and count >= 0.99 * total:
            return le
    return float("nan")


class Observer:
    """Watches the newest announced version (as the router's user) and scrapes the actor and learner."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.newest = -1
        self.announced_at: dict[int, float] = {}

    async def connect(self) -> Bus:
        assert self.stack.broker.credentials is not None
        settings = NatsSettings(
            url=self.stack.broker.url,
            reconnect_time_wait_s=0.1,
            user="router",
            password_file=str(self.stack.broker.credentials.password_file("router")),
        )
        bus = await Bus.connect(settings, "fault-observer", bus_metrics("observer", CollectorRegistry()))

        async def on_weights(msg: Msg) -> None:
            announcement = decode(msg.data, WeightsAnnouncement)
            if announcement.version not in self.announced_at:
                self.announced_at[announcement.version] = time.monotonic()
            self.newest = max(self.newest, announcement.version)

        await bus.subscribe(subjects.weights_subject(RUN), on_weights)
        return bus

    def actor_version(self) -> float:
        return scrape(self.stack.ports["actor"]).get("ala_actor_policy_version[]", -1.0)


async def until(condition: Callable[[], bool], timeout_s: float, every_s: float = 0.1) -> float | None:
    """Seconds until `condition()` holds, or None after `timeout_s`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if condition():
            return time.monotonic() - start
        await asyncio.sleep(every_s)
    return None


@dataclass
class Result:
    fault: str
    p99_before_ms: float
    p99_after_ms: float
    version_resumed_s: float | None
    actor_current_s: float | None

    @property
    def ratio(self) -> float:
        return self.p99_after_ms / self.p99_before_ms if self.p99_before_ms else float("nan")


async def run_fault(stack: Stack, observer: Observer, fault: str, window_s: float, down_s: float) -> Result:
    await until(lambda: observer.newest >= 0 and observer.actor_version() >= 0, 120)
    start = buckets(scrape(stack.ports["actor"]))
    await asyncio.sleep(window_s)  # the steady window, measured as it passes
    before = buckets(scrape(stack.ports["actor"]))
    stack.kill(fault)
    await asyncio.sleep(down_s)
    stack.restart(fault)
    restarted_at = time.monotonic()
    newest_at_restart = observer.newest
    resumed = await until(lambda: observer.newest > newest_at_restart, 60)
    current = await until(lambda: observer.actor_version() >= max(observer.newest, 0) > newest_at_restart, 60)
    elapsed = time.monotonic() - restarted_at
    current = None if current is None else elapsed  # both measured from the restart
    await asyncio.sleep(max(0.0, window_s - elapsed))
    after = buckets(scrape(stack.ports["actor"]))
    if fault == "actor":  # a new process: its histogram starts at zero, and "during" has no steps of the old one
        return Result(fault, p99(start, before) * 1e3, p99({}, after) * 1e3, resumed, current)
    return Result(fault, p99(start, before) * 1e3, p99(before, after) * 1e3, resumed, current)


async def check_exactly_once(stack: Stack, bus: Bus) -> tuple[int, int, int, int]:
    """(chunks stored, chunks not settled by the learner, trained ids in the final checkpoint, duplicated ids)."""
    stream = await bus.js.stream_info(subjects.TRAJECTORIES.name)
    consumer = await bus.js.consumer_info(subjects.TRAJECTORIES.name, f"learner-{RUN}")
    unsettled = consumer.num_pending + consumer.num_ack_pending
    state = torch.load(stack.scratch / "checkpoints" / RUN / "latest.pt", weights_only=True)
    ids = list(state["trained_ids"])
    return stream.state.messages, unsettled, len(ids), len(ids) - len(set(ids))


async def run_matrix(faults: list[str], window_s: float, down_s: float) -> tuple[list[Result], tuple[int, ...]]:
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        broker = EmbeddedBroker(broker_settings(scratch / "nats", auth=True)).start()
        stack = Stack(scratch, broker, ports={service: free_port() for service in SERVICES})
        try:
            for service in SERVICES:
                stack.start(service)
            observer = Observer(stack)
            bus = await observer.connect()
            results = []
            for fault in faults:
                result = await run_fault(stack, observer, fault, window_s, down_s)
                print(result, flush=True)
                results.append(result)
            stack.processes["actor"].terminate()  # stop shipping; let the learner settle what is stored
            stack.processes["actor"].wait(30)
            await asyncio.sleep(3 * 5.0)  # the learner's fetch loop drains the stream; ack_wait is 5 s
            stack.processes["learner"].terminate()  # a clean stop checkpoints and acknowledges
            stack.processes["learner"].wait(30)
            totals = await check_exactly_once(stack, bus)
            await bus.drain()
            return results, totals
        finally:
            stack.stop()
            broker.stop()


def report(results: list[Result], totals: tuple[int, ...], command: str) -> str:
    stored, unsettled, trained, duplicated = totals
    lines = [
        "# Fault matrix: kill -9 each part of a running stack",
        "",
        f"`{command}` on {os.cpu_count()} cores ({platform.machine()}), {time.strftime('%Y-%m-%d')}. DoorKey-5x5, "
        "advisor (expert), router, actor, learner, each its own process, the broker with per-service users. p99: the "
        "actor's step time over the window before the kill and the window after it (bucket upper bounds). Resumed: "
        "seconds from the restart to the learner's next new version; current: to the actor sampling with it.",
        "",
        "| fault | step p99 before (ms) | after (ms) | ratio (goal <= 1.5) | learner resumed (s, goal <= 10) |"
        " actor on newest (s, goal <= 10) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:

        def seconds(value: float | None) -> str:
            return "never (60 s)" if value is None else f"{value:.1f}"

        lines.append(
            f"| {r.fault} | {r.p99_before_ms:.1f} | {r.p99_after_ms:.1f} | {r.ratio:.2f} | "
            f"{seconds(r.version_resumed_s)} | {seconds(r.actor_current_s)} |"
        )
    lines += [
        "",
        f"After a clean stop: {stored} chunks stored, {unsettled} not settled by a learner (goal 0); the final "
        f"checkpoint lists {trained} trained chunk ids, {duplicated} of them twice (goal 0).",
        "",
    ]
    return "\n".join(lines)


def main(
    faults: Annotated[list[str] | None, typer.Option(help=f"Parts to kill, in order (default: {FAULTS}).")] = None,
    quick: Annotated[bool, typer.Option(help="Shorter windows (CI).")] = False,
    out: Annotated[Path, typer.Option(help="Markdown report.")] = Path("benchmarks/results/faults.md"),
) -> None:
    chosen = faults or list(FAULTS)
    window_s, down_s = (8.0, 2.0) if quick else (15.0, 5.0)
    results, totals = asyncio.run(run_matrix(chosen, window_s, down_s))
    text = report(results, totals, "python -m benchmarks.faults " + " ".join(sys.argv[1:]))
    write_report(text, out)
    failed = totals[1] != 0 or totals[3] != 0
    raise typer.Exit(1 if failed else 0)


if __name__ == "__main__":
    typer.run(main)
