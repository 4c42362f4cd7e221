"""Router latency and capacity on loopback, against the bare NATS two-hop measured in the same run.

- bare two-hop: publisher → a relay process that republishes the bytes → subscriber (no decoding, no logic);
- ALA: advisor (this process) → `ala router` (its own process) → actor subject (this process decodes the BiasUpdate);
- the router's own work: its `ala_router_processing_seconds` histogram (receipt to bias published);
- sustained: advice paced at a target rate; bias updates received per second and their end-to-end latency.

    python -m benchmarks.router [--messages 2000] [--rates 10000 --rates 20000] [--seconds 5]
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from prometheus_client.parser import text_string_to_metric_families

from ala.broker import EmbeddedBroker
from ala.config import BrokerSettings
from benchmarks.report import command_line, provenance, write_report
from benchmarks.scrape import metrics_text, sample
from protos import Advice, AdviceTarget, BiasUpdate, decode, encode, subjects
from tests.support import actor_heartbeat, free_port

RUN = "bench"
BOTS = 1024
SETTINGS = {
    "ALA_ROUTER_ACTOR_TIMEOUT_S": "3600",  # the benchmark's actor heartbeats once, at the start
    "ALA_LOG_LEVEL": "WARNING",
}
"""The router's settings beyond its defaults (plumbing aside: broker URL, ports, run name)."""


def histogram(text: str, name: str) -> dict[float, float]:
    return {
        float(s.labels["le"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == f"{name}_bucket"
    }


def own_work(before: str, after: str) -> tuple[float, float]:
    """Mean and p99 bucket bound of the router's processing time between two scrapes."""
    name = "ala_router_processing_seconds"
    total = sample(after, f"{name}_sum") - sample(before, f"{name}_sum")
    count = sample(after, f"{name}_count") - sample(before, f"{name}_count")
    start, end = histogram(before, name), histogram(after, name)
    cumulative = sorted((bound, end[bound] - start.get(bound, 0.0)) for bound in end)
    p99 = next(bound for bound, n in cumulative if n >= 0.99 * count)
    return total / count, p99


async def relay(url: str) -> None:
    """The bare middle hop: republish every message unchanged."""
    nc = NatsClient()
    await nc.connect(url)

    async def forward(msg: Msg) -> None:
        await nc.publish("bench.hop2", msg.data)

    await nc.subscribe("bench.hop1", cb=forward)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await nc.drain()


def advice(i: int, created_at: float) -> Advice:
    return Advice(
        advice_id=f"b{i}",
        advisor="bench",
        priority=1.0,
        target=AdviceTarget(actor="a1", bot=i % BOTS),
        ttl_s=5.0,
        created_at=created_at,
        recommended_action=i % 7,
        confidence=0.9,
    )


async def one_in_flight(url: str, count: int, ala: bool) -> list[float]:
    """Latency of `count` messages, each sent after the previous one arrived."""
    nc = NatsClient()
    await nc.connect(url)
    arrived = asyncio.Event()
    received_at = 0.0

    async def on_message(msg: Msg) -> None:
        nonlocal received_at
        if ala:
            decode(msg.data, BiasUpdate)
        received_at = time.perf_counter()
        arrived.set()

    await nc.subscribe(subjects.bias_subject(RUN, "a1") if ala else "bench.hop2", cb=on_message)
    await nc.flush()
    if not ala:  # the relay process may still be starting: wait until a message makes the round trip
        deadline = time.monotonic() + 60
        while not arrived.is_set():
            assert time.monotonic() < deadline, "the relay did not come up"
            await nc.publish("bench.hop1", b"ping")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), 0.2)
    latencies = []
    for i in range(count + 100):
        arrived.clear()
        sent = time.perf_counter()
        if ala:
            await nc.publish(subjects.advice_subject(RUN, "bench"), encode(advice(i, time.time())))
        else:
            await nc.publish("bench.hop1", encode(advice(i, time.time())))
        await asyncio.wait_for(arrived.wait(), 5)
        if i >= 100:
            latencies.append(received_at - sent)
    await nc.drain()
    return latencies


async def sustained(url: str, rate: float, seconds: float) -> dict[str, float]:
    """Advice paced at `rate`/s; bias updates counted and timed at the receiver (same clock)."""
    nc = NatsClient()
    await nc.connect(url, pending_size=256 * 1024 * 1024)
    latencies: list[float] = []
    expected = float("inf")
    all_in = asyncio.Event()

    async def on_bias(msg: Msg) -> None:
        update = decode(msg.data, BiasUpdate)
        latencies.append(time.time() - update.advice_created_at)
        if len(latencies) >= expected:
            all_in.set()

    await nc.subscribe(subjects.bias_subject(RUN, "a1"), cb=on_bias, pending_msgs_limit=10_000_000)
    await nc.flush()
    subject = subjects.advice_subject(RUN, "bench")
    start = time.perf_counter()
    sent = 0
    while (elapsed := time.perf_counter() - start) < seconds:
        due = int(elapsed * rate)
        while sent < due:
            await nc.publish(subject, encode(advice(sent, time.time())))
            sent += 1
        await asyncio.sleep(0.001)
    await nc.flush()
    expected = sent
    if len(latencies) < expected:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_in.wait(), 5)  # whatever has not arrived by then counts as lost
    await nc.drain()
    values = np.array(latencies) * 1e3
    return {
        "sent": sent,
        "received": len(latencies),
        "sent_per_s": sent / seconds,
        "p50_ms": float(np.percentile(values, 50)) if len(values) else float("nan"),
        "p99_ms": float(np.percentile(values, 99)) if len(values) else float("nan"),
    }


async def announce_actor(url: str, metrics_port: int) -> None:
    nc = NatsClient()
    await nc.connect(url)
    heartbeat = actor_heartbeat(run=RUN, n_actions=7, num_bots=BOTS, created_at=time.time())
    deadline = time.monotonic() + 60
    while sample(metrics_text(metrics_port), "ala_router_actors") < 1:
        assert time.monotonic() < deadline, "router did not come up"
        await nc.publish(subjects.heartbeat_subject(RUN, "actor", "a1"), encode(heartbeat))
        await asyncio.sleep(0.1)
    await nc.drain()


def percentiles_us(latencies: list[float]) -> tuple[float, float]:
    values = np.array(latencies) * 1e6
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def main(
    messages: Annotated[int, typer.Option(help="Messages for the one-in-flight latency runs.")] = 2000,
    rates: Annotated[list[float] | None, typer.Option(help="Sustained advice rates to try (repeat).")] = None,
    seconds: Annotated[float, typer.Option(help="Duration of each sustained run.")] = 5.0,
    relay_url: Annotated[str | None, typer.Option(hidden=True)] = None,
    out: Annotated[Path, typer.Option(help="Markdown report.")] = Path("benchmarks/results/router.md"),
) -> None:
    if relay_url:
        asyncio.run(relay(relay_url))
        return
    rates = rates or [10_000.0, 20_000.0]
    with (
        tempfile.TemporaryDirectory() as scratch,
        EmbeddedBroker(BrokerSettings(port=-1, monitor_port=-1, auth=False, store_dir=Path(scratch))) as broker,
    ):
        metrics_port = free_port()
        env = dict(
            os.environ,
            ALA_NATS_URL=broker.url,
            ALA_RUN=RUN,
            ALA_ROUTER_METRICS_PORT=str(metrics_port),
            ALA_ROUTER_API_PORT="0",
            **SETTINGS,
        )
        router = subprocess.Popen([sys.executable, "-m", "ala", "router"], env=env)
        relay_process = subprocess.Popen([sys.executable, "-m", "benchmarks.router", "--relay-url", broker.url])
        try:
            asyncio.run(announce_actor(broker.url, metrics_port))
            bare = percentiles_us(asyncio.run(one_in_flight(broker.url, messages, ala=False)))
            start = metrics_text(metrics_port)
            through_router = percentiles_us(asyncio.run(one_in_flight(broker.url, messages, ala=True)))
            own = [own_work(start, metrics_text(metrics_port))]
            loads = []
            for rate in rates:
                start = metrics_text(metrics_port)
                load = asyncio.run(sustained(broker.url, rate, seconds))
                end = metrics_text(metrics_port)
                # Memory under load: the router's resident set before and after (flat = nothing unbounded).
                load["rss_before_mb"] = sample(start, "process_resident_memory_bytes") / 2**20
                load["rss_after_mb"] = sample(end, "process_resident_memory_bytes") / 2**20
                loads.append(load)
                own.append(own_work(start, end))
            rejected = sample(metrics_text(metrics_port), "ala_router_rejected_total")
        finally:
            for process in (router, relay_process):
                process.send_signal(signal.SIGTERM)
                process.wait(30)

    lines = [
        "# Router latency and capacity (loopback)",
        "",
        provenance(command_line(), {"router": SETTINGS}),
        "",
        "The router and the bare relay each run as their own process.",
        "",
        "| path, one message in flight | p50 (µs) | p99 (µs) |",
        "|---|---:|---:|",
        f"| bare NATS two-hop (relay republishes bytes) | {bare[0]:.0f} | {bare[1]:.0f} |",
        f"| advisor → router → actor (decode, check, bound, merge, encode) | {through_router[0]:.0f} | "
        f"{through_router[1]:.0f} |",
        f"| ratio ALA / bare | {through_router[0] / bare[0]:.2f} | {through_router[1] / bare[1]:.2f} |",
        "",
        "Router's own work per advice (receipt → bias published, from its `ala_router_processing_seconds`):",
        "",
        "| phase | mean (µs) | p99 at most (µs, bucket bound) |",
        "|---|---:|---:|",
        f"| one advice in flight (idle between messages) | {own[0][0] * 1e6:.0f} | {own[0][1] * 1e6:.0f} |",
        *(
            f"| sustained {rate:,.0f}/s | {mean * 1e6:.0f} | {p99 * 1e6:.0f} |"
            for rate, (mean, p99) in zip(rates, own[1:], strict=True)
        ),
        "",
        f"Sustained runs of {seconds:.0f} s each; router RSS from its own `process_resident_memory_bytes`.",
        "",
        "| sustained advice rate asked | sent/s | bias updates received | end-to-end p50 (ms) | p99 (ms) |"
        " router RSS before → after (MB) |",
        "|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {rate:,.0f} | {load['sent_per_s']:,.0f} | {load['received']:,.0f} of {load['sent']:,.0f} | "
            f"{load['p50_ms']:.2f} | {load['p99_ms']:.2f} | {load['rss_before_mb']:.0f} → {load['rss_after_mb']:.0f} |"
            for rate, load in zip(rates, loads, strict=True)
        ),
        "",
        f"Advice rejected during the whole run: {rejected:.0f}.",
        "",
    ]
    report = "\n".join(lines)
    write_report(report, out)


if __name__ == "__main__":
    typer.run(main)
