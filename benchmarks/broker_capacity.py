"""What one NATS broker carries before it saturates: the per-message costs behind docs/scale-out.md's capacity estimate.

On loopback, real nats-servers: one node with R1 streams (the laptop), and a 3-node cluster with R3 (the lab). For
trajectory chunks of several sizes, JetStream publishes with `--window` in flight (as many actors would), until each
is acknowledged: chunks/s, MB/s and the mean cost per chunk. For small core messages (digests, biases), the rate of
publishes a subscriber receives. Every node shares this machine's cores with the client: a floor, not a ceiling.

    python -m benchmarks.broker_capacity [--seconds 5] [--window 64]
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from prometheus_client import CollectorRegistry

from ala.broker import BrokerCluster
from ala.bus import Bus
from ala.config import BrokerSettings, NatsSettings
from ala.metrics import bus_metrics
from benchmarks.report import command_line, provenance, write_report
from protos import subjects

CHUNK_BYTES = (16 * 1024, 105_671, 1024 * 1024)
"""A small chunk, the DoorKey chunk of 512 env steps with uint8 observations (benchmarks/wire.py), and 1 MiB."""
CORE_BYTES = 256
"""About a BiasUpdate or an Advice."""


async def jetstream_rate(bus: Bus, size: int, seconds: float, window: int) -> tuple[float, float]:
    """(chunks acknowledged per second, mean seconds from publish to ack) with `window` publishes in flight."""
    payload = os.urandom(size)
    subject = subjects.trajectory_subject("capacity", f"s{size}")
    acked, latencies, sequence = 0, [], 0
    start = time.perf_counter()

    async def one() -> None:
        nonlocal acked, sequence
        sequence += 1
        sent = time.perf_counter()
        await bus.publish_durable(subject, payload, f"capacity.{size}.{sequence}", "trajectory")
        latencies.append(time.perf_counter() - sent)
        acked += 1

    while time.perf_counter() - start < seconds:
        await asyncio.gather(*(one() for _ in range(window)))
    elapsed = time.perf_counter() - start
    await bus.js.purge_stream(subjects.TRAJECTORIES.name)  # keep the store small between sizes
    return acked / elapsed, sum(latencies) / len(latencies)


async def core_rate(bus: Bus, receiver: Bus, seconds: float) -> float:
    """Small core messages per second that reach a subscriber (publishes batched, flushed per batch)."""
    received = 0

    async def on_message(msg: object) -> None:
        nonlocal received
        received += 1

    subscription = await receiver.subscribe("capacity.core", on_message)
    await receiver.nc.flush()
    payload = os.urandom(CORE_BYTES)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(1000):
            await bus.nc.publish("capacity.core", payload)
        await bus.nc.flush()
    await bus.nc.flush()
    elapsed = time.perf_counter() - start
    await receiver.nc.flush()
    await subscription.unsubscribe()
    return received / elapsed


async def measure(url: str, replicas: int, seconds: float, window: int) -> dict[str, float]:
    settings = NatsSettings(url=url, replicas=replicas, publish_timeout_s=10.0)
    bus = await Bus.connect(settings, "capacity", bus_metrics("capacity", CollectorRegistry()))
    receiver = await Bus.connect(settings, "capacity-rx", bus_metrics("rx", CollectorRegistry()))
    try:
        await bus.provision()
        results: dict[str, float] = {}
        for size in CHUNK_BYTES:
            rate, latency = await jetstream_rate(bus, size, seconds, window)
            results[f"js_{size}_rate"], results[f"js_{size}_latency"] = rate, latency
        results["core_rate"] = await core_rate(bus, receiver, seconds)
        return results
    finally:
        await receiver.drain()
        await bus.drain()


def run(cluster_size: int, seconds: float, window: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        settings = BrokerSettings(
            port=-1, monitor_port=-1, cluster_port=-1, cluster_size=cluster_size, auth=False, store_dir=Path(scratch)
        )
        with BrokerCluster(settings) as broker:
            return asyncio.run(measure(broker.url, min(3, cluster_size), seconds, window))


def main(
    seconds: Annotated[float, typer.Option(help="Seconds per measurement.")] = 5.0,
    window: Annotated[int, typer.Option(help="JetStream publishes in flight.")] = 64,
    out: Annotated[Path, typer.Option(help="Markdown report.")] = Path("benchmarks/results/broker-capacity.md"),
) -> None:
    single, cluster = run(1, seconds, window), run(3, seconds, window)
    lines = [
        "# Broker capacity: what one NATS broker and one 3-node cluster carry",
        "",
        provenance(command_line()),
        "",
        "The nodes and the client share these cores.",
        "",
        f"## JetStream publish until acknowledged, {window} in flight (file storage)",
        "",
        "| chunk bytes | 1 node, R1: chunks/s | MB/s | mean ack ms | 3 nodes, R3: chunks/s | MB/s | mean ack ms "
        "| R3 / R1 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {size:,} | {single[f'js_{size}_rate']:,.0f} | {single[f'js_{size}_rate'] * size / 1e6:,.1f} | "
            f"{single[f'js_{size}_latency'] * 1e3:.1f} | {cluster[f'js_{size}_rate']:,.0f} | "
            f"{cluster[f'js_{size}_rate'] * size / 1e6:,.1f} | {cluster[f'js_{size}_latency'] * 1e3:.1f} | "
            f"{cluster[f'js_{size}_rate'] / single[f'js_{size}_rate']:.2f} |"
            for size in CHUNK_BYTES
        ),
        "",
        f"## Core publish of {CORE_BYTES}-byte messages (digests, advice, biases) to one subscriber",
        "",
        "| broker | messages/s |",
        "|---|---:|",
        f"| 1 node | {single['core_rate']:,.0f} |",
        f"| 3 nodes | {cluster['core_rate']:,.0f} |",
        "",
    ]
    write_report("\n".join(lines), out)


if __name__ == "__main__":
    typer.run(main)
