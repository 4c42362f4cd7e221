"""The bus against a real nats-server: round trips, durable publishes, de-duplication, bounds and reconnects."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.aio.msg import Msg

from ala.broker import EmbeddedBroker
from ala.bus import Bus, PublishError
from ala.config import NatsSettings
from ala.metrics import BusMetrics
from protos import MessageBase, WireError, decode, decode_any, encode, subjects
from protos.subjects import TRAJECTORIES
from tests.support import sample_messages, wait_until


async def test_every_message_type_round_trips_through_nats(bus: Bus) -> None:
    messages = sample_messages()
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_message(msg: Msg) -> None:
        await received.put(msg.data)

    await bus.subscribe("ala.test.roundtrip.*", on_message)
    for i, message in enumerate(messages):
        assert await bus.publish(f"ala.test.roundtrip.{i}", message, kind="test")
    got = [decode_any(await asyncio.wait_for(received.get(), 5)) for _ in messages]
    assert got == messages


async def test_bad_bytes_over_nats_give_the_typed_error(bus: Bus) -> None:
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_message(msg: Msg) -> None:
        await received.put(msg.data)

    await bus.subscribe("ala.test.bad", on_message)
    assert await bus.publish_bytes("ala.test.bad", b"\x93\x01\x02", kind="test")
    with pytest.raises(WireError):
        decode_any(await asyncio.wait_for(received.get(), 5))


async def test_queue_group_shares_messages(bus: Bus, nats_settings: NatsSettings, metrics: BusMetrics) -> None:
    other = await Bus.connect(nats_settings, "other", metrics)
    counts = [0, 0]
    done = asyncio.Event()

    def counter(index: int):  # type: ignore[no-untyped-def]
        async def on_message(msg: Msg) -> None:
            counts[index] += 1
            if sum(counts) == 200:
                done.set()

        return on_message

    await bus.subscribe("ala.test.work", counter(0), queue="workers")
    await other.subscribe("ala.test.work", counter(1), queue="workers")
    await bus.nc.flush()
    await other.nc.flush()
    heartbeat = sample_messages()[-1]
    for _ in range(200):
        await bus.publish("ala.test.work", heartbeat, kind="test")
    await asyncio.wait_for(done.wait(), 30)
    assert sum(counts) == 200 and min(counts) > 0
    await other.drain()


async def test_durable_publish_is_stored_and_deduplicated(bus: Bus) -> None:
    chunk = next(m for m in sample_messages() if type(m).__name__ == "TrajectoryChunk")
    subject = subjects.trajectory_subject("test", "actor-0")
    msg_id = subjects.trajectory_msg_id("test", "actor-0", 42)
    first = await bus.publish_durable(subject, encode(chunk), msg_id, kind="trajectory")
    again = await bus.publish_durable(subject, encode(chunk), msg_id, kind="trajectory")
    assert first.stream == TRAJECTORIES.name and not first.duplicate
    assert again.duplicate and again.seq == first.seq
    info = await bus.js.stream_info(TRAJECTORIES.name)
    assert info.state.messages == 1
    stored = await bus.js.get_msg(TRAJECTORIES.name, first.seq)
    assert decode(stored.data or b"", type(chunk)) == chunk


async def test_provision_is_idempotent_and_updates_changed_streams(bus: Bus) -> None:
    await bus.provision()
    await bus.provision(max_payload_bytes=1024 * 1024)
    info = await bus.js.stream_info(TRAJECTORIES.name)
    assert info.config.max_msg_size == 1024 * 1024
    assert info.config.duplicate_window == TRAJECTORIES.duplicate_window_s
    store = await bus.js.object_store(subjects.WEIGHTS_BUCKET)
    await store.put("probe", b"weights")
    assert (await store.get("probe")).data == b"weights"


async def test_durable_publish_without_a_stream_fails_fast(bus: Bus) -> None:
    with pytest.raises(PublishError, match="no stream"):
        await bus.publish_durable("ala.test.nowhere", b"x", "id-1", kind="test")
    assert bus.metrics.publish_failures.labels("test", "no_stream")._value.get() == 1


async def test_oversized_core_publish_is_refused_and_counted(bus: Bus) -> None:
    too_big = b"\x00" * (bus.nc.max_payload + 1)
    assert not await bus.publish_bytes("ala.test.big", too_big, kind="test")
    assert bus.metrics.publish_failures.labels("test", "too_large")._value.get() == 1


async def test_durable_publish_is_bounded_while_the_broker_is_down(bus: Bus, nats_server: EmbeddedBroker) -> None:
    nats_server.kill()
    await wait_until(lambda: not bus.is_connected)
    start = time.monotonic()
    with pytest.raises(PublishError):
        await bus.publish_durable(subjects.trajectory_subject("test", "a"), b"x", "id-2", kind="trajectory")
    assert time.monotonic() - start < bus.settings.publish_timeout_s + 1.0


async def test_reconnects_after_broker_restart_and_keeps_subscriptions(bus: Bus, nats_server: EmbeddedBroker) -> None:
    received: asyncio.Queue[MessageBase] = asyncio.Queue()

    async def on_message(msg: Msg) -> None:
        await received.put(decode_any(msg.data))

    await bus.subscribe("ala.test.after", on_message)
    nats_server.kill()
    await wait_until(lambda: bus.metrics.disconnects._value.get() == 1)
    nats_server.start()
    await wait_until(lambda: bus.metrics.reconnects._value.get() == 1)
    heartbeat = sample_messages()[-1]
    assert await bus.publish("ala.test.after", heartbeat, kind="test")
    assert await asyncio.wait_for(received.get(), 5) == heartbeat
    assert bus.metrics.connected._value.get() == 1


async def test_trajectories_survive_a_broker_kill(bus: Bus, nats_server: EmbeddedBroker) -> None:
    """JetStream file storage: acked chunks are there after a SIGKILL and restart."""
    subject = subjects.trajectory_subject("test", "a")
    acks = [await bus.publish_durable(subject, f"chunk-{i}".encode(), f"a.{i}", "trajectory") for i in range(20)]
    assert len({ack.seq for ack in acks}) == 20
    nats_server.kill()
    await wait_until(lambda: bus.metrics.disconnects._value.get() == 1)
    nats_server.start()
    await wait_until(lambda: bus.metrics.reconnects._value.get() == 1)
    info = await bus.js.stream_info(TRAJECTORIES.name)
    assert info.state.messages == 20
    # A retry after the restart of a chunk whose ack was lost is still recognised as a duplicate.
    again = await bus.publish_durable(subject, b"chunk-19", "a.19", "trajectory")
    assert again.duplicate


async def test_oversized_durable_publish_is_a_publish_error(bus: Bus) -> None:
    too_big = b"\x00" * (bus.nc.max_payload + 1)
    with pytest.raises(PublishError, match="max_payload"):
        await bus.publish_durable(subjects.trajectory_subject("test", "a"), too_big, "big-1", kind="trajectory")
