"""Fixtures: a real nats-server per test (free ports, JetStream in tmp_path) and clients connected to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from ala.broker import EmbeddedBroker
from ala.bus import Bus
from ala.config import NatsSettings
from ala.metrics import BusMetrics, bus_metrics
from tests.support import broker_settings


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(broker_settings(tmp_path / "nats")).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def nats_settings(nats_server: EmbeddedBroker) -> NatsSettings:
    return NatsSettings(url=nats_server.url, publish_timeout_s=1.0, reconnect_time_wait_s=0.05)


@pytest.fixture
def metrics() -> BusMetrics:
    return bus_metrics("test", CollectorRegistry())


@pytest.fixture
async def bus(nats_settings: NatsSettings, metrics: BusMetrics) -> AsyncIterator[Bus]:
    connected = await Bus.connect(nats_settings, "test", metrics)
    await connected.provision()
    try:
        yield connected
    finally:
        await connected.drain()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A skipped test proves nothing: any skip fails the run."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and reporter.stats.get("skipped") and exitstatus == 0:
        reporter.write_line("FAILED: tests were skipped; every test must run here", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
