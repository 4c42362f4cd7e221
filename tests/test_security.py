"""Bus permissions on a real nats-server: each service's user may publish only its own kind of message."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from ala.broker import EmbeddedBroker
from ala.bus import Bus, PublishError, stream_config
from ala.config import NatsSettings
from ala.metrics import bus_metrics
from ala.security import STREAMS_OWNER, USERS
from ala.weights import fetch_object
from protos import Advice, BiasUpdate, TrajectoryChunk, WeightsAnnouncement, encode, subjects
from tests.support import broker_settings, sample_messages, wait_until


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(broker_settings(tmp_path / "nats", auth=True)).start()
    try:
        yield broker
    finally:
        broker.stop()


async def _connect(broker: EmbeddedBroker, user: str) -> Bus:
    assert broker.credentials is not None
    password_file = str(broker.credentials.password_file(user))
    settings = NatsSettings(url=broker.url, reconnect_time_wait_s=0.05, user=user, password_file=password_file)
    return await asyncio.wait_for(Bus.connect(settings, user, bus_metrics(user, CollectorRegistry())), 10)


@pytest.fixture
async def login(secured: EmbeddedBroker) -> AsyncIterator[dict[str, Bus]]:
    """One connected bus per service, each as its own user."""
    assert secured.credentials is not None
    async with AsyncExitStack() as stack:
        buses = {}
        for user in USERS:
            buses[user] = await _connect(secured, user)
            stack.push_async_callback(buses[user].drain)
        await buses["learner"].provision()
        yield buses


def _message(kind: type) -> bytes:
    return encode(next(m for m in sample_messages() if isinstance(m, kind)))


async def _received(bus: Bus, subject: str) -> asyncio.Queue[Msg]:
    queue: asyncio.Queue[Msg] = asyncio.Queue()
    await bus.subscribe(subject, queue.put)
    await bus.nc.flush()
    return queue


async def test_an_anonymous_client_cannot_connect(secured: EmbeddedBroker) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(secured.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)


async def test_only_the_router_may_publish_biases(login: dict[str, Bus]) -> None:
    bias_subject = subjects.bias_subject("test", "a1")
    at_actor = await _received(login["actor"], bias_subject)
    for intruder in ("actor", "advisor", "learner", "evaluator"):
        await login[intruder].publish_bytes(bias_subject, _message(BiasUpdate), kind="bias")
    await login["router"].publish_bytes(bias_subject, _message(BiasUpdate), kind="bias")
    first = await asyncio.wait_for(at_actor.get(), 5)  # the router's, and only the router's
    assert first.data == _message(BiasUpdate)
    for intruder in ("actor", "advisor", "learner", "evaluator"):
        denied = login[intruder].metrics.permission_denied
        await wait_until(lambda denied=denied: denied._value.get() >= 1, 5)
    await login["router"].nc.flush()
    assert at_actor.empty()


async def test_the_actor_cannot_advise_and_the_router_cannot_ship_trajectories(login: dict[str, Bus]) -> None:
    advice = subjects.advice_subject("test", "expert")
    at_router = await _received(login["router"], subjects.advice_wildcard("test"))
    await login["actor"].publish_bytes(advice, _message(Advice), kind="advice")
    await wait_until(lambda: login["actor"].metrics.permission_denied._value.get() >= 1, 5)
    await login["advisor"].publish_bytes(advice, _message(Advice), kind="advice")
    assert (await asyncio.wait_for(at_router.get(), 5)).data == _message(Advice)
    assert at_router.empty()  # the actor's never arrived

    trajectory = subjects.trajectory_subject("test", "a1")
    with pytest.raises(PublishError, match="no ack"):  # the broker dropped it: nothing stored, nothing acked
        await login["router"].publish_durable(trajectory, _message(TrajectoryChunk), "forged-1", "trajectory")
    assert login["router"].metrics.permission_denied._value.get() >= 1
    ack = await login["actor"].publish_durable(trajectory, _message(TrajectoryChunk), "real-1", "trajectory")
    assert ack.stream == subjects.TRAJECTORIES.name


async def test_a_service_cannot_listen_to_what_is_not_its_own(login: dict[str, Bus]) -> None:
    """The evaluator has no business with digests: its subscription is refused, and counted."""

    async def ignore(msg: Msg) -> None:
        pass

    await login["evaluator"].subscribe(subjects.digest_wildcard("test"), ignore)
    await wait_until(lambda: login["evaluator"].metrics.permission_denied._value.get() >= 1, 5)
    assert login["evaluator"].metrics.errors._value.get() >= 1  # reported through the client's error callback too


def _destructive_calls(bus: Bus) -> list[Awaitable[object]]:
    """Everything that would wipe or cripple the run's data through the JetStream API, with a short timeout: a call
    the broker denies gets no answer at all."""
    jsm = bus.nc.jsm(timeout=1)
    trajectories, weights = subjects.TRAJECTORIES.name, subjects.object_stream_name(subjects.WEIGHTS_BUCKET)
    return [
        jsm.purge_stream(trajectories),
        jsm.delete_stream(trajectories),
        jsm.update_stream(stream_config(subjects.TRAJECTORIES, max_msg_size=1)),
        jsm.delete_stream(subjects.WEIGHTS_ANNOUNCEMENTS.name),
        jsm.purge_stream(weights),
        jsm.delete_stream(weights),  # deleting the Object Store bucket is deleting its stream
        jsm.delete_consumer(trajectories, "learner-test"),
    ]


async def test_no_service_but_the_owner_can_purge_delete_or_update_a_stream_or_the_bucket(
    login: dict[str, Bus],
) -> None:
    ack = await login["actor"].publish_durable(
        subjects.trajectory_subject("test", "a1"), _message(TrajectoryChunk), "real-1", "trajectory"
    )
    store = await login["learner"].js.object_store(subjects.WEIGHTS_BUCKET)
    await store.put("test/1", b"weights")
    await login["learner"].js.pull_subscribe(
        subjects.trajectory_wildcard("test"), durable="learner-test", stream=subjects.TRAJECTORIES.name
    )
    intruders = [user for user in USERS if user != STREAMS_OWNER]
    calls = [call for user in intruders for call in _destructive_calls(login[user])]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    allowed = [outcome for outcome in outcomes if not isinstance(outcome, Exception)]
    assert allowed == [], f"{len(allowed)} destructive JetStream calls allowed to a non-owner"
    for user in intruders:
        await wait_until(lambda user=user: login[user].metrics.permission_denied._value.get() >= 1, 5)
    info = await login["learner"].js.stream_info(subjects.TRAJECTORIES.name)
    assert info.state.messages == 1 and info.state.last_seq == ack.seq
    assert info.config.max_msg_size != 1
    assert (await login["learner"].js.consumer_info(subjects.TRAJECTORIES.name, "learner-test")).name == "learner-test"
    # The owner itself still may: the right is there, only the others lack it.
    await login["learner"].nc.jsm(timeout=5).purge_stream(subjects.TRAJECTORIES.name)
    assert (await login["learner"].js.stream_info(subjects.TRAJECTORIES.name)).state.messages == 0


async def test_readers_fetch_weights_and_a_service_waits_for_the_owners_streams(secured: EmbeddedBroker) -> None:
    """The actor and the evaluator read the newest announcement and the weights objects with read rights only; a
    service that starts before the learner waits for its streams instead of creating them."""
    assert secured.credentials is not None
    async with AsyncExitStack() as stack:
        buses = {}
        for user in ("actor", "evaluator", STREAMS_OWNER):
            buses[user] = await _connect(secured, user)
            stack.push_async_callback(buses[user].drain)
        waiting = asyncio.create_task(buses["actor"].await_streams())
        done, _ = await asyncio.wait({waiting}, timeout=0.5)  # a window in which nothing may happen
        assert not done
        with pytest.raises(nats.js.errors.NotFoundError):  # the actor did not create them
            await buses[STREAMS_OWNER].js.stream_info(subjects.TRAJECTORIES.name)
        await buses[STREAMS_OWNER].provision()
        await asyncio.wait_for(waiting, 10)

        data = b"weights of version 1" * 1000
        store = await buses[STREAMS_OWNER].js.object_store(subjects.WEIGHTS_BUCKET)
        await store.put("test/1", data)
        announcement = _message(WeightsAnnouncement)
        await buses[STREAMS_OWNER].publish_durable(subjects.weights_subject("test"), announcement, "w-1", "weights")
        for reader in ("actor", "evaluator"):
            fetched = await fetch_object(
                buses[reader], subjects.WEIGHTS_BUCKET, "test/1", len(data), hashlib.sha256(data).hexdigest(), 10
            )
            assert fetched == data
            assert buses[reader].metrics.permission_denied._value.get() == 0
        last = await buses["actor"].js.get_last_msg(
            subjects.WEIGHTS_ANNOUNCEMENTS.name, subjects.weights_subject("test")
        )
        assert last.data == announcement
