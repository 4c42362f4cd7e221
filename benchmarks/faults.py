"""The fault matrix: kill -9 each part of a running stack in turn and measure what the reliability issue promises.

The stack: the embedded broker (with its per-service users) and the advisor (expert), router, actor and learner,
each its own process, training DoorKey-5x5. First a control (`none`: nothing killed, the same windows: how far the
p99 moves on this machine without a fault), then for each fault, in order (broker, router, advisor, learner, actor):
steady state, kill -9, restart after the down time, then:

- the actor's p99 step time from the kill to the restart against its no-fault p99 (every window before a kill and
  the control's, pooled: one window alone strays too far to judge by; goal <= 1.5x; the actor's own fault has no
  "during", so its row is shown but not judged); the window from the restart on is shown, not judged: a restarted
  process's imports take most of a core, which on 2 shared cores slows the actor for the machine's reasons,
- seconds from the restart until the learner publishes a newer version (goal <= 10 s),
- seconds from the restart until the actor samples with the newest announced version (goal <= 10 s).

At the end, after a clean stop: every chunk the broker stored was settled by a learner (trained, or dropped as
stale and counted: nothing unacknowledged or undelivered), and no chunk id appears twice in the final checkpoint's
trained ids (none trained twice in the model's lineage).

It exits 1, naming each broken promise and its figure, when any of these goals fails (CI's `make faults`).

    python -m benchmarks.faults                   # writes benchmarks/results/faults.md
    python -m benchmarks.faults --quick           # shorter windows, for CI

Why one file over 300 lines: each fault's scenario and its goal sit side by side, so that a reader checks one
promise in one place.
"""

from __future__ import annotations

import asyncio
import math
import os
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
from ala.security import STREAMS_OWNER
from benchmarks.report import command_line, provenance, write_report
from protos import WeightsAnnouncement, decode, subjects
from tests.support import broker_settings, free_port, scrape

SERVICES = ("advisor", "router", "actor", "learner")
CONTROL = "none"
"""The fault that kills nothing: two more no-fault windows, and how far the p99 moves without a fault."""
FAULTS = (CONTROL, "broker", "router", "advisor", "learner", "actor")
RUN = "faults"
P99_RATIO_GOAL = 1.5
"""The actor's step p99 during a fault, at most this many times its no-fault p99."""
RESUME_GOAL_S = 10.0
"""From a restart to the learner's next version, and to the actor sampling with the newest: at most this."""
NEVER_S = 60.0
"""How long a run waits for training to resume before calling it never."""
P99_UNJUDGED = (CONTROL, "actor")
MIN_STEPS_FOR_P99 = 200
"""Fewer steps than this in a fault's window give no p99 (of 32 steps it is the slowest one): the row says so and is
not judged. A broker or learner outage holds the actor by flow control to a few dozen steps in 5 s."""


HELD_BY_FLOW_CONTROL = ("broker", "learner")
"""Faults during which training stops, so flow control rightly holds the actor (with a router or an advisor down it
must step on: few steps there is a stall, and fails)."""


def judged(r: Result) -> bool:
    held = r.fault in HELD_BY_FLOW_CONTROL and r.during.get(math.inf, 0) < MIN_STEPS_FOR_P99
    return r.fault not in P99_UNJUDGED and not held


"""Rows whose p99 ratio is no promise: the control has no fault, and a killed actor has no step during its fault
(its "during" is a fresh process's)."""


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
        if part == CONTROL:
            return
        if part == "broker":
            self.broker.kill()
        else:
            self.processes[part].kill()
            self.processes[part].wait()

    def restart(self, part: str) -> None:
        if part == CONTROL:
            return
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


Counts = dict[float, float]
"""A cumulative histogram: observations at or below each bucket's upper bound (`le`, +Inf included)."""


def buckets(samples: dict[str, float]) -> Counts:
    """The actor's step histogram out of a scrape."""
    prefix = "ala_actor_step_seconds_bucket"
    return {
        float(key.split("'le', '")[1].split("'")[0]): value for key, value in samples.items() if key.startswith(prefix)
    }


def window(before: Counts, after: Counts) -> Counts:
    """The observations between two scrapes of one process's histogram."""
    return {le: after[le] - before.get(le, 0.0) for le in after}


def pooled(windows: list[Counts]) -> Counts:
    """Several windows as one."""
    total: Counts = {}
    for counts in windows:
        for le, count in counts.items():
            total[le] = total.get(le, 0.0) + count
    return total


def quantile(q: float, counts: Counts) -> float:
    """The q-quantile of a window, as PromQL's histogram_quantile: linear within the bucket that holds it, from the
    bucket below's bound (0 for the first); the highest finite bound when it lies in +Inf; NaN without observations.
    With the actor's 0.5 ms buckets a 3 ms step's p99 is read to within 0.5 ms, where the bucket's upper bound alone
    could say 50% more."""
    cumulative = sorted(counts.items())  # +Inf sorts last
    if not cumulative or cumulative[-1][1] <= 0:
        return float("nan")
    rank = q * cumulative[-1][1]
    lower, below = 0.0, 0.0
    for le, count in cumulative:
        if count >= rank and count > below:
            if math.isinf(le):
                return lower
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


def p99_ms(counts: Counts) -> float:
    """The 99th percentile step time of a window, in milliseconds."""
    return quantile(0.99, counts) * 1e3


async def connect_as(stack: Stack, user: str, name: str) -> Bus:
    """A client of the stack's broker with `user`'s credentials (and so only that service's rights)."""
    assert stack.broker.credentials is not None
    settings = NatsSettings(
        url=stack.broker.url,
        reconnect_time_wait_s=0.1,
        user=user,
        password_file=str(stack.broker.credentials.password_file(user)),
    )
    return await Bus.connect(settings, name, bus_metrics(name.replace("-", "_"), CollectorRegistry()))


class Observer:
    """Watches the newest announced version (as the router's user) and scrapes the actor and learner."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.newest = -1
        self.announced_at: dict[int, float] = {}

    async def connect(self) -> Bus:
        bus = await connect_as(self.stack, "router", "fault-observer")

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
    steady: Counts
    """The actor's steps in the window before the kill: no fault."""
    during: Counts
    """Its steps from the kill to the restart: the fault itself (none for a killed actor)."""
    recovery: Counts
    """Its steps from the restart to the end of the window after it (a killed actor's: the new process's)."""
    version_resumed_s: float | None
    actor_current_s: float | None

    def summary(self) -> str:
        return (
            f"{self.fault}: step p99 {p99_ms(self.steady):.2f} ms before, {p99_ms(self.during):.2f} ms during "
            f"({self.during.get(math.inf, 0):.0f} steps); resumed {seconds(self.version_resumed_s)} s, actor on it "
            f"{seconds(self.actor_current_s)} s"
        )


@dataclass(frozen=True)
class NoFault:
    """The actor's step p99 without a fault, from every no-fault window of the run pooled (each fault's window
    before it, and both of the control's): steadier than any one window. How far single windows stray from it is
    the noise floor of the during/no-fault ratio on this machine."""

    p99_ms: float
    windows: int
    steps: float
    lowest_ms: float
    highest_ms: float

    @classmethod
    def of(cls, results: list[Result]) -> NoFault:
        windows = [r.steady for r in results] + [r.during for r in results if r.fault == CONTROL]
        windows += [r.recovery for r in results if r.fault == CONTROL]
        singles = [p99_ms(counts) for counts in windows if counts.get(math.inf, 0) > 0] or [float("nan")]
        everything = pooled(windows)
        return cls(p99_ms(everything), len(windows), everything.get(math.inf, 0.0), min(singles), max(singles))

    def ratio(self, result: Result) -> float:
        return p99_ms(result.during) / self.p99_ms


async def run_fault(stack: Stack, observer: Observer, fault: str, window_s: float, down_s: float) -> Result:
    await until(lambda: observer.newest >= 0 and observer.actor_version() >= 0, 120)
    start = buckets(scrape(stack.ports["actor"]))
    await asyncio.sleep(window_s)  # the steady window, measured as it passes
    before = buckets(scrape(stack.ports["actor"]))
    stack.kill(fault)
    await asyncio.sleep(down_s)
    # The fault's own window ends at the restart: after it, a restarted Python process takes most of a core for its
    # imports, which on a 2-core machine slows the actor for reasons that are the machine's, not the fault's.
    at_restart = {} if fault == "actor" else buckets(scrape(stack.ports["actor"]))
    stack.restart(fault)
    restarted_at = time.monotonic()
    newest_at_restart = observer.newest
    resumed = await until(lambda: observer.newest > newest_at_restart, NEVER_S)
    current = await until(lambda: observer.actor_version() >= max(observer.newest, 0) > newest_at_restart, NEVER_S)
    elapsed = time.monotonic() - restarted_at
    current = None if current is None else elapsed  # both measured from the restart
    await asyncio.sleep(max(0.0, window_s - elapsed))
    after = buckets(scrape(stack.ports["actor"]))
    # A killed actor has no steps during its fault; its new process counts from zero.
    during = {} if fault == "actor" else window(before, at_restart)
    return Result(fault, window(start, before), during, window(at_restart, after), resumed, current)


async def check_exactly_once(stack: Stack) -> tuple[int, int, int, int]:
    """(chunks stored, chunks not settled by the learner, trained ids in the final checkpoint, duplicated ids).

    Read as the streams' owner: only the learner's user may see its consumer (`ala.security`)."""
    bus = await connect_as(stack, STREAMS_OWNER, "fault-auditor")
    try:
        stream = await bus.js.stream_info(subjects.TRAJECTORIES.name)
        consumer = await bus.js.consumer_info(subjects.TRAJECTORIES.name, f"learner-{RUN}")
    finally:
        await bus.drain()
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
                print(result.summary(), flush=True)
                results.append(result)
            stack.processes["actor"].terminate()  # stop shipping; let the learner settle what is stored
            stack.processes["actor"].wait(30)
            await asyncio.sleep(3 * 5.0)  # the learner's fetch loop drains the stream; ack_wait is 5 s
            stack.processes["learner"].terminate()  # a clean stop checkpoints and acknowledges
            stack.processes["learner"].wait(30)
            totals = await check_exactly_once(stack)
            await bus.drain()
            return results, totals
        finally:
            stack.stop()
            broker.stop()


@dataclass(frozen=True)
class Goals:
    """What the reliability issue promises; a run that misses any of them fails."""

    max_p99_ratio: float = P99_RATIO_GOAL
    max_resume_s: float = RESUME_GOAL_S


def seconds(value: float | None) -> str:
    return f"never ({NEVER_S:.0f} s)" if value is None else f"{value:.1f}"


def failures(results: list[Result], totals: tuple[int, ...], goals: Goals) -> list[str]:
    """Each broken promise, named with its figure and its goal."""
    stored, unsettled, trained, duplicated = totals
    failed = []
    if unsettled:
        failed.append(f"exactly-once: {unsettled} of {stored} stored chunks were never settled by a learner (goal 0)")
    if duplicated:
        failed.append(f"exactly-once: {duplicated} of {trained} trained chunk ids appear twice (goal 0)")
    no_fault = NoFault.of(results)
    for r in results:
        if r.fault == CONTROL:
            continue
        if judged(r):
            failed += p99_failure(r, no_fault, goals)
        for what, value in (("learner's next version", r.version_resumed_s), ("actor on it", r.actor_current_s)):
            if value is None or value > goals.max_resume_s:
                when = f"not within {NEVER_S:.0f} s" if value is None else f"{value:.1f} s"
                failed.append(
                    f"{r.fault}: training resumed ({what}) {when} after the restart (goal <= {goals.max_resume_s:g} s)"
                )
    return failed


def p99_failure(r: Result, no_fault: NoFault, goals: Goals) -> list[str]:
    """The step-p99 promise for one fault: [] when kept, else what failed."""
    ratio = no_fault.ratio(r)
    if math.isnan(ratio):  # no steps scraped: the promise cannot be shown kept
        during, before = p99_ms(r.during), no_fault.p99_ms
        return [f"{r.fault}: actor step p99 not measured (during {during:.2f} ms, no fault {before:.2f} ms)"]
    if ratio <= goals.max_p99_ratio:
        return []
    return [
        f"{r.fault}: actor step p99 during the fault {p99_ms(r.during):.2f} ms is {ratio:.2f}x the no-fault p99 of "
        f"{no_fault.p99_ms:.2f} ms (goal <= {goals.max_p99_ratio:g}x; single no-fault windows of this run ranged "
        f"{no_fault.lowest_ms / no_fault.p99_ms:.2f}-{no_fault.highest_ms / no_fault.p99_ms:.2f}x)"
    ]


def report(results: list[Result], totals: tuple[int, ...], goals: Goals, failed: list[str], command: str) -> str:
    stored, unsettled, trained, duplicated = totals
    no_fault = NoFault.of(results)
    lines = [
        "# Fault matrix: kill -9 each part of a running stack",
        "",
        provenance(command),
        "",
        "DoorKey-5x5, advisor (expert), router, actor, learner, each its own process, the broker with per-service "
        "users. Step p99: the actor's, interpolated within the histogram's 0.5 ms buckets as PromQL's "
        "histogram_quantile does, over the window before the kill, from the kill to the restart (during: the goal "
        "compares it with the no-fault p99, all no-fault windows of the run pooled) and from the restart to the end "
        "of the window after it (recovery: shown, not judged, since a restarted process's imports take most of a "
        "core, which on 2 shared cores slows the actor for the machine's reasons, not the fault's). `none` kills "
        f"nothing: a control. A window of fewer than {MIN_STEPS_FOR_P99} steps has no p99 to judge (flow control "
        "holds the actor while the broker or the learner is down). Resumed: seconds from the restart to the "
        "learner's next new version; current: to the actor sampling with it.",
        "",
        f"| fault | step p99 before (ms) | during (ms) | steps during | recovery (ms) | during / no-fault (goal <= "
        f"{goals.max_p99_ratio:g}) | learner resumed (s, goal <= {goals.max_resume_s:g}) | actor on newest (s, goal "
        f"<= {goals.max_resume_s:g}) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        shown = "" if judged(r) else " (not judged)"
        lines.append(
            f"| {r.fault} | {p99_ms(r.steady):.2f} | {p99_ms(r.during):.2f} | {r.during.get(math.inf, 0):.0f} | "
            f"{p99_ms(r.recovery):.2f} | {no_fault.ratio(r):.2f}{shown} | {seconds(r.version_resumed_s)} | "
            f"{seconds(r.actor_current_s)} |"
        )
    lines += [
        "",
        f"No-fault step p99: {no_fault.p99_ms:.2f} ms over {no_fault.windows} windows ({no_fault.steps:.0f} steps); "
        f"single no-fault windows ranged {no_fault.lowest_ms:.2f}-{no_fault.highest_ms:.2f} ms "
        f"({no_fault.lowest_ms / no_fault.p99_ms:.2f}-{no_fault.highest_ms / no_fault.p99_ms:.2f}x): a during/no-fault "
        "ratio within that band is no sign of a fault.",
        "",
        f"After a clean stop: {stored} chunks stored, {unsettled} not settled by a learner (goal 0); the final "
        f"checkpoint lists {trained} trained chunk ids, {duplicated} of them twice (goal 0).",
        "",
        "Every goal met." if not failed else "**Failed:**",
    ]
    lines += [f"- {failure}" for failure in failed]
    lines.append("")
    return "\n".join(lines)


def main(
    faults: Annotated[
        list[str] | None, typer.Option(help=f"Parts to kill, in order ({CONTROL}: nothing; default: {FAULTS}).")
    ] = None,
    quick: Annotated[bool, typer.Option(help="Shorter windows (CI).")] = False,
    max_p99_ratio: Annotated[
        float, typer.Option(help="Goal: the actor's step p99 during a fault over its no-fault p99, at most.")
    ] = P99_RATIO_GOAL,
    max_resume_s: Annotated[
        float, typer.Option(help="Goal: seconds from a restart to a new version and to the actor using it, at most.")
    ] = RESUME_GOAL_S,
    out: Annotated[Path, typer.Option(help="Markdown report.")] = Path("benchmarks/results/faults.md"),
) -> None:
    chosen = faults or list(FAULTS)
    unknown = sorted(set(chosen) - set(FAULTS))
    if unknown:
        raise typer.BadParameter(f"unknown faults {unknown}: choose from {FAULTS}")
    # Quick windows of 12 s: a p99 over fewer steps moved up to 1.76x between no-fault windows on 2 loaded cores.
    window_s, down_s = (12.0, 5.0) if quick else (15.0, 5.0)
    goals = Goals(max_p99_ratio, max_resume_s)
    results, totals = asyncio.run(run_matrix(chosen, window_s, down_s))
    failed = failures(results, totals, goals)
    write_report(report(results, totals, goals, failed, command_line()), out)
    for failure in failed:
        typer.echo(f"FAILED {failure}", err=True)
    raise typer.Exit(1 if failed else 0)


if __name__ == "__main__":
    typer.run(main)
