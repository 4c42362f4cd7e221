"""Bus permissions on a real nats-server: each service's user may publish only its own kind of message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from ala.broker import EmbeddedBroker
from ala.bus import Bus, PublishError
from ala.config import NatsSettings
from ala.metrics import bus_metrics
from ala.security import USERS
from ala.testing import broker_settings, sample_messages, wait_until
from protos import Advice, BiasUpdate, TrajectoryChunk, encode, subjects


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(broker_settings(tmp_path / "nats", auth=True)).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
async def login(secured: EmbeddedBroker) -> AsyncIterator[dict[str, Bus]]:
    """One connected bus per service, each as its own user."""
    assert secured.credentials is not None
    async with AsyncExitStack() as stack:
        buses = {}
        for user in USERS:
            password_file = str(secured.credentials.password_file(user))
            settings = NatsSettings(url=secured.url, reconnect_time_wait_s=0.05, user=user, password_file=password_file)
            bus = await asyncio.wait_for(Bus.connect(settings, user, bus_metrics(user, CollectorRegistry())), 10)
            stack.push_async_callback(bus.drain)
            buses[user] = bus
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
