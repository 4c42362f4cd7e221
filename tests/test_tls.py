"""TLS between services and broker: the lab's own CA, a real nats-server serving with it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cryptography import x509
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from ala.broker import EmbeddedBroker
from ala.bus import Bus
from ala.config import NatsSettings
from ala.metrics import bus_metrics
from ala.tls import generate
from tests.support import broker_settings


async def test_services_that_trust_the_lab_ca_talk_over_tls_and_others_cannot(tmp_path: Path) -> None:
    files = generate(tmp_path / "tls")
    stranger = generate(tmp_path / "other-ca")
    assert oct(files.key.stat().st_mode & 0o777) == "0o600"
    settings = broker_settings(tmp_path / "nats").model_copy(update={"tls_dir": files.directory})
    with EmbeddedBroker(settings) as broker:

        async def connect(**tls: str) -> Bus:
            nats = NatsSettings(url=broker.url, reconnect_time_wait_s=0.05, connect_timeout_s=1.0, **tls)
            return await asyncio.wait_for(Bus.connect(nats, "t", bus_metrics("t", CollectorRegistry())), 30)

        bus = await connect(tls_ca_file=str(files.ca))
        received: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_message(msg: Msg) -> None:
            await received.put(msg.data)

        await bus.subscribe("ala.test.eval", on_message)
        await bus.nc.flush()
        assert await bus.publish_bytes("ala.test.eval", b"over tls", kind="evaluation")
        assert await asyncio.wait_for(received.get(), 5) == b"over tls"
        await bus.drain()
        for wrong in ({}, {"tls_ca_file": str(stranger.ca)}):  # plain, and a CA the broker's cert is not from
            with pytest.raises(TimeoutError):
                await connect(**wrong)


async def test_a_broker_with_no_certificate_yet_makes_one_once_for_its_hosts(tmp_path: Path) -> None:
    """Compose and Helm start the broker with a TLS folder and no certificate: it makes the lab CA on its first start,
    for the names it is reached by, and keeps it after, so the CA the services trust stays valid across restarts."""
    tls_dir = tmp_path / "secrets" / "tls"
    tls_dir.mkdir(parents=True)  # a fresh, empty volume
    settings = broker_settings(tmp_path / "nats").model_copy(update={"tls_dir": tls_dir, "tls_hosts": ["rtx.lab"]})
    with EmbeddedBroker(settings) as broker:
        ca = (tls_dir / "ca.pem").read_bytes()
        certificate = x509.load_pem_x509_certificate((tls_dir / "server.pem").read_bytes())
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert {"rtx.lab", "nats", "localhost"} <= set(names.get_values_for_type(x509.DNSName))
        nats = NatsSettings(url=broker.url, reconnect_time_wait_s=0.05, tls_ca_file=str(tls_dir / "ca.pem"))
        bus = await asyncio.wait_for(Bus.connect(nats, "t", bus_metrics("t", CollectorRegistry())), 30)
        assert bus.is_connected
        await bus.drain()
    with EmbeddedBroker(settings):
        assert (tls_dir / "ca.pem").read_bytes() == ca
