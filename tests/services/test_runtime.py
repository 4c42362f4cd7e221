"""Every service, in-process against a real broker: heartbeats, /metrics with its budget histogram, clean stop."""

from __future__ import annotations

import asyncio
import importlib
import urllib.request
from typing import Any

import pytest
from nats.aio.msg import Msg
from prometheus_client import generate_latest

from ala.bus import Bus
from ala.config import NatsSettings
from protos import Heartbeat, decode, subjects
from protos.subjects import TRAJECTORIES, WEIGHTS_ANNOUNCEMENTS, WEIGHTS_BUCKET
from services import SERVICE_NAMES

BUDGET_HISTOGRAMS = {
    "advisor": "ala_advisor_llm_seconds",
    "router": "ala_router_processing_seconds",
    "actor": "ala_actor_step_seconds",
    "learner": "ala_learner_update_seconds",
    "evaluator": "ala_eval_seconds",
}


def _settings(service: str, nats: NatsSettings) -> Any:
    module = importlib.import_module(f"services.{service}.settings")
    settings_class = getattr(module, f"{service.capitalize()}Settings")
    extra = {"api_port": 0} if service == "router" else {}
    return settings_class(
        run="test",
        instance="t1",
        metrics_host="127.0.0.1",
        metrics_port=0,
        heartbeat_interval_s=0.05,
        nats=nats,
        **extra,
    )


@pytest.mark.parametrize("service", SERVICE_NAMES)
async def test_service_heartbeats_serves_metrics_and_stops(service: str, bus: Bus, nats_settings: NatsSettings) -> None:
    heartbeats: asyncio.Queue[Heartbeat] = asyncio.Queue()

    async def on_heartbeat(msg: Msg) -> None:
        await heartbeats.put(decode(msg.data, Heartbeat))

    await bus.subscribe(subjects.heartbeat_subject("test", service, "t1"), on_heartbeat)
    await bus.nc.flush()

    serve = importlib.import_module(f"services.{service}.service").serve
    stop = asyncio.Event()
    task = asyncio.create_task(serve(_settings(service, nats_settings), stop))
    first = await asyncio.wait_for(heartbeats.get(), 30)
    second = await asyncio.wait_for(heartbeats.get(), 30)  # a deadline against a hang, not a timing check

    assert (first.run, first.service, first.instance) == ("test", service, "t1")
    assert second.seq == first.seq + 1 and second.started_at == first.started_at
    if service == "actor":
        assert first.action_space is not None and first.action_space.n == 7
        assert first.action_space.names[3] == "pickup" and first.num_bots == 16
    else:
        assert first.action_space is None
    if service == "router":  # its bounds, which actors hold every bias to
        assert (second.b_max, second.max_ttl_s) == (2.0, 60.0)
    else:
        assert second.b_max == second.max_ttl_s == 0

    registry = importlib.import_module(f"services.{service}.metrics").REGISTRY
    exposition = generate_latest(registry).decode()
    assert f"# TYPE {BUDGET_HISTOGRAMS[service]} histogram" in exposition
    assert f"ala_{service}_heartbeats_total" in exposition
    assert f"ala_{service}_nats_connected 1.0" in exposition
    assert "process_resident_memory_bytes" in exposition

    stop.set()
    await asyncio.wait_for(task, 10)
    assert registry.get_sample_value(f"ala_{service}_nats_connected") == 0


async def test_runtime_provisions_jetstream_and_serves_metrics_over_http(nats_settings: NatsSettings) -> None:
    from ala.service import ServiceRuntime
    from services.router.metrics import REGISTRY, SERVICE

    settings = _settings("router", nats_settings)
    async with ServiceRuntime(settings, SERVICE, REGISTRY) as runtime:
        url = f"http://127.0.0.1:{runtime.metrics_port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
        streams = {info.config.name for info in await runtime.bus.js.streams_info()}
    assert {TRAJECTORIES.name, WEIGHTS_ANNOUNCEMENTS.name, f"OBJ_{WEIGHTS_BUCKET}"} <= streams
    assert "ala_router_processing_seconds_bucket" in body
    assert "ala_actor_" not in body  # each endpoint shows only its own service


async def test_runtime_serves_liveness_and_readiness_beside_metrics(nats_settings: NatsSettings) -> None:
    import json
    import urllib.error

    from ala.probe import probe
    from ala.service import ServiceRuntime
    from services.router.metrics import REGISTRY, SERVICE

    def get(url: str) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    async with ServiceRuntime(_settings("router", nats_settings), SERVICE, REGISTRY) as runtime:
        base = f"http://127.0.0.1:{runtime.metrics_port}"
        assert await asyncio.to_thread(get, f"{base}/healthz") == (200, {"live": True})
        assert await asyncio.to_thread(get, f"{base}/readyz") == (200, {"ready": True, "failing": []})
        runtime.health.add_check("model", lambda: False)
        assert await asyncio.to_thread(get, f"{base}/readyz") == (503, {"ready": False, "failing": ["model"]})
        ready, body = await asyncio.to_thread(probe, runtime.metrics_port)  # the container healthcheck's view
        assert not ready and "model" in body
        assert (await asyncio.to_thread(probe, runtime.metrics_port, "/healthz"))[0]
        runtime.health.last_tick -= runtime.settings.liveness_timeout_s  # as if the event loop had stuck
        assert (await asyncio.to_thread(get, f"{base}/healthz"))[0] == 503
    ready, body = await asyncio.to_thread(probe, runtime.metrics_port)  # stopped: nothing answers
    assert not ready and "refused" in body


def test_a_readiness_check_that_raises_counts_as_failing() -> None:
    from ala.health import Health

    def broken() -> bool:
        raise RuntimeError("boom")

    health = Health()
    health.add_check("ok", lambda: True)
    health.add_check("broken", broken)
    assert health.failing() == ["broken"]
