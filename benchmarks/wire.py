"""The wire baseline every later latency goal is compared with.

1. Encode + decode time per message type: msgspec typed Structs (what ALA uses; decode validates) vs the plain
   `msgpack` package on the equivalent dicts (no validation), in the same process.
2. One NATS hop on loopback through a real nats-server: publish on one connection → callback on another, one message
   in flight at a time, for a BiasUpdate-sized and a TrajectoryChunk-sized payload; and a JetStream publish until
   its ack (what the actor pays per trajectory chunk).

    python -m benchmarks.wire [--hops 5000] [--out benchmarks/results/wire.md]
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import timeit
from pathlib import Path
from typing import Annotated

import msgpack
import msgspec
import numpy as np
import typer
from prometheus_client import CollectorRegistry

from ala.broker import EmbeddedBroker
from ala.bus import Bus
from ala.config import BrokerSettings, NatsSettings
from ala.metrics import bus_metrics
from ala.rl.trajectory import to_chunk
from benchmarks.report import command_line, provenance, write_report
from protos import Array, MessageBase, decode, encode, subjects
from tests.support import fresh_agent, rollout, sample_messages


def per_call_us(function, number: int) -> float:  # type: ignore[no-untyped-def]
    """Median over 5 repeats of the mean time per call, in microseconds."""
    return statistics.median(timeit.repeat(function, number=number, repeat=5)) / number * 1e6


def codec_rows(messages: list[MessageBase]) -> list[str]:
    rows = []
    for message in messages:
        kind = type(message)
        data = encode(message)
        plain = msgspec.to_builtins(message, builtin_types=(bytes,))
        number = max(200, int(2e6 / max(len(data), 1)))
        msgspec_us = per_call_us(lambda m=message, k=kind: decode(encode(m), k), number)
        msgpack_us = per_call_us(lambda p=plain: msgpack.unpackb(msgpack.packb(p)), number)
        rows.append(
            f"| {kind.__name__} | {len(data):,} | {msgspec_us:.2f} | {msgpack_us:.2f} | {msgpack_us / msgspec_us:.2f} |"
        )
    return rows


def percentiles(samples_s: list[float]) -> tuple[float, float, float]:
    values = np.array(samples_s) * 1e6
    return float(np.percentile(values, 50)), float(np.percentile(values, 99)), float(values.mean())


async def hop_latencies(url: str, payload: bytes, count: int) -> list[float]:
    """Publisher and subscriber on separate connections, as two services would be."""
    settings = NatsSettings(url=url)
    publisher = await Bus.connect(settings, "bench-pub", bus_metrics("bench_pub", CollectorRegistry()))
    subscriber = await Bus.connect(settings, "bench-sub", bus_metrics("bench_sub", CollectorRegistry()))
    received = asyncio.Event()
    arrival = 0.0

    async def on_message(msg: object) -> None:
        nonlocal arrival
        arrival = time.perf_counter()
        received.set()

    await subscriber.subscribe("ala.bench.hop", on_message)
    await subscriber.nc.flush()
    latencies = []
    for i in range(count + 100):
        received.clear()
        sent = time.perf_counter()
        await publisher.publish_bytes("ala.bench.hop", payload, kind="bench")
        await asyncio.wait_for(received.wait(), 5)
        if i >= 100:  # warm-up
            latencies.append(arrival - sent)
    await publisher.drain()
    await subscriber.drain()
    return latencies


async def jetstream_latencies(url: str, payload: bytes, count: int) -> list[float]:
    bus = await Bus.connect(NatsSettings(url=url), "bench-js", bus_metrics("bench_js", CollectorRegistry()))
    await bus.provision()
    subject = subjects.trajectory_subject("bench", "actor")
    latencies = []
    for i in range(count + 20):
        start = time.perf_counter()
        await bus.publish_durable(subject, payload, subjects.trajectory_msg_id("bench", "actor", i), kind="bench")
        if i >= 20:
            latencies.append(time.perf_counter() - start)
    await bus.drain()
    return latencies


def chunk_payloads() -> tuple[bytes, bytes, int]:
    """One chunk at the actor's defaults (32 steps x 16 bots, DoorKey-5x5) encoded with float32 observations and
    with the lossless uint8 the actor ships; and its env steps."""
    trajectory = rollout(fresh_agent(), bots=16, steps=32).collect()
    narrow = to_chunk(trajectory, "bench", "a1", 1)
    wide = msgspec.structs.replace(narrow, observations=Array.from_numpy(trajectory.observations))
    return encode(wide), encode(narrow), trajectory.num_steps


def main(
    hops: Annotated[int, typer.Option(help="Messages per loopback hop measurement.")] = 5000,
    out: Annotated[Path, typer.Option(help="Markdown report.")] = Path("benchmarks/results/wire.md"),
) -> None:
    messages = sample_messages(steps=64, bots=8)
    bias = encode(next(m for m in messages if type(m).__name__ == "BiasUpdate"))
    chunk = encode(next(m for m in messages if type(m).__name__ == "TrajectoryChunk"))
    wide, narrow, steps = chunk_payloads()
    lines = [
        "# Wire baseline",
        "",
        provenance(command_line()),
        "",
        f"msgspec {msgspec.__version__}, msgpack {'.'.join(map(str, msgpack.version))}.",
        "",
        "## Encode + decode, per message (TrajectoryChunk: 64 steps x 8 bots of 7x7x3 float32 observations)",
        "",
        "| message | bytes | msgspec typed (µs) | msgpack dicts (µs) | msgpack / msgspec |",
        "|---|---:|---:|---:|---:|",
        *codec_rows(messages),
        "",
        f"## Bytes on the wire per env step (a TrajectoryChunk of {steps} env steps, DoorKey-5x5)",
        "",
        "| observations as | chunk bytes | bytes per env step |",
        "|---|---:|---:|",
        f"| float32 (as the policy sees them) | {len(wide):,} | {len(wide) / steps:,.0f} |",
        f"| uint8 (lossless codes, what the actor ships) | {len(narrow):,} | {len(narrow) / steps:,.0f} |",
        f"| ratio | {len(narrow) / len(wide):.2f} | |",
        "",
        "## NATS loopback, one message in flight, real nats-server",
        "",
        "| path | payload bytes | p50 (µs) | p99 (µs) | mean (µs) |",
        "|---|---:|---:|---:|---:|",
    ]
    with (
        tempfile.TemporaryDirectory() as store,
        EmbeddedBroker(BrokerSettings(port=-1, monitor_port=-1, auth=False, store_dir=Path(store))) as broker,
    ):
        for name, payload, measure, count in (
            ("core publish → subscriber callback", bias, hop_latencies, hops),
            ("core publish → subscriber callback", chunk, hop_latencies, max(hops // 10, 100)),
            ("JetStream publish → ack (file storage)", chunk, jetstream_latencies, max(hops // 10, 100)),
            ("JetStream publish → ack, actor chunk, float32 observations", wide, jetstream_latencies, hops // 10),
            ("JetStream publish → ack, actor chunk, uint8 observations", narrow, jetstream_latencies, hops // 10),
        ):
            p50, p99, mean = percentiles(asyncio.run(measure(broker.url, payload, count)))
            lines.append(f"| {name} | {len(payload):,} | {p50:.0f} | {p99:.0f} | {mean:.0f} |")
    report = "\n".join(lines) + "\n"
    write_report(report, out)


if __name__ == "__main__":
    typer.run(main)
