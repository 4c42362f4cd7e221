"""The `ala` command: settings display, schema export, and `ala up` as real processes."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from nats.aio.msg import Msg
from typer.testing import CliRunner

from ala.bus import Bus
from ala.cli import app
from ala.config import NatsSettings
from ala.metrics import BusMetrics
from protos import Heartbeat, decode, subjects
from protos.schema import json_schemas
from services import SERVICE_NAMES
from tests.support import free_port, wait_until

runner = CliRunner()


def test_config_show_lists_every_setting_with_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALA_NATS_PASSWORD", "hunter2")
    monkeypatch.setenv("ALA_ACTOR_NUM_BOTS", "13")
    result = runner.invoke(app, ["config", "show"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for variable in ("ALA_RUN", "ALA_NATS_URL", "ALA_BROKER_MAX_PAYLOAD_BYTES", "ALA_ACTOR_ENV_ID"):
        assert variable in result.output
    assert re.search(r"ALA_ACTOR_NUM_BOTS\s*│\s*13", result.output)
    assert "hunter2" not in result.output and "********" in result.output


def test_config_show_refuses_an_unknown_service() -> None:
    result = runner.invoke(app, ["config", "show", "nope"])
    assert result.exit_code != 0


def test_protos_export_writes_a_schema_per_message(tmp_path: Path) -> None:
    result = runner.invoke(app, ["protos", "export", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(json_schemas())


def _up_environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, ALA_RUN="uptest", ALA_BROKER_STORE_DIR=str(tmp_path / "nats"), **extra)
    env["ALA_BROKER_MONITOR_PORT"] = "-1"
    env["ALA_ROUTER_API_PORT"] = "0"
    for service in SERVICE_NAMES:
        env[f"ALA_{service.upper()}_METRICS_PORT"] = "0"
        env[f"ALA_{service.upper()}_HEARTBEAT_INTERVAL_S"] = "0.2"
    return env


async def _wait_for_heartbeats_of_every_service(url: str, metrics: BusMetrics, password_file: Path) -> None:
    # The broker `ala up` starts lets only the services in, each as its own user: watch as one of them.
    await wait_until(password_file.exists, 30)
    settings = NatsSettings(url=url, reconnect_time_wait_s=0.05, user="router", password_file=str(password_file))
    bus = await asyncio.wait_for(Bus.connect(settings, "observer", metrics), 30)
    seen: set[str] = set()
    all_seen = asyncio.Event()

    async def on_heartbeat(msg: Msg) -> None:
        seen.add(decode(msg.data, Heartbeat).service)
        if seen == set(SERVICE_NAMES):
            all_seen.set()

    await bus.subscribe(subjects.heartbeat_wildcard("uptest"), on_heartbeat)
    try:
        await asyncio.wait_for(all_seen.wait(), 60)
    finally:
        await bus.drain()


def test_up_runs_broker_and_all_services_and_one_sigint_stops_them(tmp_path: Path, metrics: BusMetrics) -> None:
    port = free_port()
    up = subprocess.Popen(
        [sys.executable, "-m", "ala", "up"],
        env=_up_environment(tmp_path, ALA_BROKER_PORT=str(port)),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        password_file = tmp_path / "nats" / "secrets" / "router.password"
        asyncio.run(_wait_for_heartbeats_of_every_service(f"nats://127.0.0.1:{port}", metrics, password_file))
    finally:
        up.send_signal(signal.SIGINT)
        _, stderr = up.communicate(timeout=60)
    assert up.returncode == 0, stderr
    pids = [int(pid) for pid in re.findall(r"started \w+ \(pid (\d+)\)", stderr)]
    assert len(pids) == len(SERVICE_NAMES)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    for service in SERVICE_NAMES:
        assert re.search(rf"{service} \S+ stopped", stderr), service


def test_up_with_no_restarts_stops_everything_when_a_service_dies(tmp_path: Path, nats_settings: NatsSettings) -> None:
    env = _up_environment(tmp_path, ALA_NATS_URL=nats_settings.url, ALA_ACTOR_ENV_ID="NoSuchEnv-v0")
    result = subprocess.run(
        [sys.executable, "-m", "ala", "up", "--no-broker", "--max-restarts", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 1
    assert "actor exited with status 1 after 0 restart(s)" in result.stderr
    assert "NoSuchEnv" in result.stderr  # the actor's own error is on the console, not just its exit status
    assert "all stopped" in result.stderr


def test_train_local_runs_the_single_process_trainer() -> None:
    result = runner.invoke(
        app,
        ["train", "--local", "--env-id", "MiniGrid-DoorKey-5x5-v0", "--total-steps", "1024", "--seed", "2"],
        env={"COLUMNS": "200", "ALA_ACTOR_NUM_BOTS": "4", "ALA_ACTOR_NUM_STEPS": "16"},
    )
    assert result.exit_code == 0, result.output
    assert re.search(r"1,024 steps in [\d.]+s \(\d+ steps/s\)", result.output)


def test_train_without_local_points_to_ala_up() -> None:
    result = runner.invoke(app, ["train"])
    assert result.exit_code != 0
