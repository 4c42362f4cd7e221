"""Supervision: a service whose task fails exits at once with status 1 and its traceback; `ala up` restarts it
with backoff up to its limit, then stops the stack (the injected failure is a CartPole that raises mid-step)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ala.config import NatsSettings
from protos import subjects

CRASHING_ENV = "tests.support:Crashing-v0"


def _environment(tmp_path: Path, nats_url: str, **extra: str) -> dict[str, str]:
    return dict(
        os.environ,
        ALA_RUN="supervision",
        ALA_NATS_URL=nats_url,
        ALA_ACTOR_ENV_ID=CRASHING_ENV,
        ALA_ACTOR_NUM_BOTS="2",
        ALA_ACTOR_METRICS_PORT="0",
        ALA_ACTOR_MAX_CHUNKS_AHEAD="0",  # no learner: do not wait for one
        ALA_TEST_CRASH_AFTER_STEPS="200",
        ALA_TEST_CRASH_FILE=str(tmp_path / "crashes"),
        **extra,
    )


def test_a_failing_task_stops_its_service_with_status_1_at_once(tmp_path: Path, nats_settings: NatsSettings) -> None:
    actor = subprocess.Popen(
        [sys.executable, "-m", "ala", "actor"],
        env=_environment(tmp_path, nats_settings.url),
        stderr=subprocess.PIPE,
        text=True,
    )
    _, stderr = actor.communicate(timeout=60)
    exited_at = time.time()
    crashed_at = float((tmp_path / "crashes").read_text().split()[0])
    assert actor.returncode == 1, stderr
    # At once: well under the 60 s the step loop would run on without supervision. Alone it takes ~0.3 s; 5 s leaves
    # room for a loaded 2-core machine (1.24 s was seen under full-suite load) without hiding a hang.
    assert exited_at - crashed_at < 5.0, f"exited {exited_at - crashed_at:.2f}s after the failure"
    assert "RuntimeError: injected environment failure" in stderr and "stopped by an error" in stderr
    assert "never retrieved" not in stderr


def test_up_restarts_a_dead_service_then_stops_the_stack_past_its_limit(
    tmp_path: Path, nats_settings: NatsSettings
) -> None:
    env = _environment(tmp_path, nats_settings.url, ALA_UP_FIRST_BACKOFF_S="0.2", ALA_BROKER_MONITOR_PORT="-1")
    result = subprocess.run(
        [sys.executable, "-m", "ala", "up", "--no-broker", "--service", "actor", "--max-restarts", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert len((tmp_path / "crashes").read_text().split()) == 2  # the first run and the one restart
    assert "actor exited with status 1; restarting it in 0.2s (restart 1 of 1)" in result.stderr
    assert "actor exited with status 1 after 1 restart(s)" in result.stderr
    assert result.stderr.count("started actor") == 2 and "all stopped" in result.stderr


@pytest.mark.parametrize("cluster_size", [1, 3])
def test_up_restarts_a_dead_broker_and_the_services_reconnect(tmp_path: Path, cluster_size: int) -> None:
    """kill -9 of the broker `ala up` started (of its first node, in a cluster): it comes back on the same port, and
    the router is served again. In a 3-node cluster, the router's streams have 3 replicas."""
    import asyncio
    import signal

    from prometheus_client import CollectorRegistry

    from ala.bus import Bus
    from ala.metrics import bus_metrics
    from tests.support import free_port, wait_until

    port = free_port()
    env = dict(
        os.environ,
        ALA_RUN="brokerdeath",
        ALA_BROKER_PORT=str(port),
        ALA_BROKER_MONITOR_PORT="-1",
        ALA_BROKER_STORE_DIR=str(tmp_path / "nats"),
        ALA_BROKER_CLUSTER_SIZE=str(cluster_size),
        ALA_BROKER_CLUSTER_PORT="-1",
        ALA_ROUTER_METRICS_PORT="0",
        ALA_ROUTER_API_PORT="0",
    )
    up = subprocess.Popen(
        [sys.executable, "-m", "ala", "up", "--service", "router"], env=env, stderr=subprocess.PIPE, text=True
    )
    password_file = tmp_path / "nats" / "secrets" / "router.password"

    async def heartbeats_after_broker_death() -> None:
        await wait_until(password_file.exists, 30)
        settings = NatsSettings(
            url=f"nats://127.0.0.1:{port}", reconnect_time_wait_s=0.05, user="router", password_file=str(password_file)
        )
        bus = await asyncio.wait_for(Bus.connect(settings, "observer", bus_metrics("o", CollectorRegistry())), 30)
        beats: asyncio.Queue[object] = asyncio.Queue()

        async def on_heartbeat(msg: object) -> None:
            await beats.put(msg)

        await bus.subscribe("ala.brokerdeath.heartbeat.router.*", on_heartbeat)
        await asyncio.wait_for(beats.get(), 30)
        info = await bus.js.stream_info(subjects.TRAJECTORIES.name)
        assert info.config.num_replicas == min(3, cluster_size)
        node_dir = tmp_path / "nats" / ("node-0" if cluster_size > 1 else "")
        (ports_file,) = node_dir.glob("*.ports")  # nats-server_<pid>.ports
        pid = int(ports_file.stem.rsplit("_", 1)[1])
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: bus.metrics.reconnects._value.get() >= 1, 30)
        while not beats.empty():
            beats.get_nowait()
        await asyncio.wait_for(beats.get(), 30)  # the router is heard again, through the restarted broker
        await bus.drain()

    failure: BaseException | None = None
    try:
        asyncio.run(heartbeats_after_broker_death())
    except (TimeoutError, AssertionError) as exc:
        failure = exc
    finally:
        up.send_signal(signal.SIGINT)
        _, stderr = up.communicate(timeout=60)
    if failure is not None:  # what `ala up` saw is the diagnosis
        raise AssertionError(f"{failure!r}; ala up printed:\n{stderr[-6000:]}") from failure
    assert "the broker exited with status -9; restarting it (restart 1 of 3)" in stderr
    assert up.returncode == 0, stderr


def test_up_runs_learner_ranks_and_restarts_them_together_when_one_dies(
    tmp_path: Path, nats_settings: NatsSettings
) -> None:
    """`ala up --learner-ranks 2`: two learner processes (RANK 0 and 1); kill -9 of rank 1 takes rank 0 down too (it
    would block in its next collective), and both start again."""
    import asyncio
    import re
    import signal
    import threading
    from collections.abc import Callable

    from tests.support import wait_until

    env = _environment(
        tmp_path,
        nats_settings.url,
        ALA_UP_FIRST_BACKOFF_S="0.2",
        ALA_LEARNER_METRICS_PORT="0",
        ALA_LEARNER_CHECKPOINT_DIR=str(tmp_path / "checkpoints"),
    )
    up = subprocess.Popen(
        [sys.executable, "-m", "ala", "up", "--no-broker", "--service", "learner", "--learner-ranks", "2"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    assert up.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(up.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()

    def started() -> dict[str, list[int]]:
        pids: dict[str, list[int]] = {}
        for name, pid in re.findall(r"started (learner-\d) \(pid (\d+)\)", "".join(lines)):
            pids.setdefault(name, []).append(int(pid))
        return pids

    def until(condition: Callable[[], bool]) -> None:
        try:
            asyncio.run(wait_until(condition, 60))
        except TimeoutError as exc:
            raise AssertionError("".join(lines)) from exc

    try:
        until(lambda: len(started()) == 2)
        os.kill(started()["learner-1"][0], signal.SIGKILL)
        until(lambda: all(len(pids) == 2 for pids in started().values()))
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(60)
        reader.join(10)
    log = "".join(lines)
    assert "learner-1 died: stopping learner-0 too" in log
    assert up.returncode == 0, log
