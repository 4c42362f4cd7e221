"""The router service through a real broker: merging, counted rejections, the control API, kill and expiry at a
real actor after the router stops."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from nats.aio.msg import Msg

from ala.bus import Bus
from ala.config import NatsSettings
from protos import Advice, AdviceOutcome, AdviceTarget, Array, BiasUpdate, EpisodeStats, decode, subjects
from services.actor import service as actor_service
from services.actor.settings import ActorSettings
from services.router import metrics
from services.router.service import serve
from services.router.settings import RouterSettings
from tests.support import ENV_ID, ChunkReader, actor_heartbeat, free_port, running, wait_until

N = 7
TOKEN = "s3cret-test-token"


def _settings(nats: NatsSettings, **overrides: object) -> RouterSettings:
    values: dict[str, object] = {
        "run": "test",
        "instance": "r1",
        "metrics_host": "127.0.0.1",
        "metrics_port": 0,
        "api_port": free_port(),
        "token": TOKEN,
        "b_max": 3.0,
        "trust": False,  # plumbing tests; trust has its own
        "strength": 1.0,
        "nats": nats,
    }
    return RouterSettings(**(values | overrides))


async def _announce_actor(bus: Bus, instance: str = "a1") -> None:
    heartbeat = actor_heartbeat(instance=instance, n_actions=N, created_at=time.time())
    await bus.publish(subjects.heartbeat_subject("test", "actor", instance), heartbeat, kind="heartbeat")


def _advice(advisor: str, action: int, priority: float = 1.0, ttl_s: float = 5.0, **fields: object) -> Advice:
    values: dict[str, object] = {
        "advice_id": f"{advisor}-{time.monotonic_ns()}",
        "advisor": advisor,
        "priority": priority,
        "target": AdviceTarget(actor="a1", bot=1),
        "ttl_s": ttl_s,
        "created_at": time.time(),
        "recommended_action": action,
    }
    return Advice(**(values | fields))  # type: ignore[arg-type]


async def _biases(bus: Bus) -> asyncio.Queue[BiasUpdate]:
    queue: asyncio.Queue[BiasUpdate] = asyncio.Queue()

    async def on_bias(msg: Msg) -> None:
        await queue.put(decode(msg.data, BiasUpdate))

    await bus.subscribe(subjects.bias_subject("test", "a1"), on_bias)
    await bus.nc.flush()
    return queue


async def _router_knows_actor(bus: Bus) -> None:
    """Heartbeat as an actor does, until the (just started) router has heard one."""
    for _ in range(200):
        await _announce_actor(bus)
        with contextlib.suppress(TimeoutError):
            await wait_until(lambda: metrics.ACTORS._value.get() >= 1, timeout_s=0.1)
            return
    raise AssertionError("the router never saw the actor's heartbeat")


async def test_advice_from_two_advisors_is_merged(bus: Bus, nats_settings: NatsSettings) -> None:
    biases = await _biases(bus)
    async with running(serve, _settings(nats_settings, advisor_weights={"critic": 0.5})):
        await _router_knows_actor(bus)
        await bus.publish(subjects.advice_subject("test", "planner"), _advice("planner", 2), kind="advice")
        first = await asyncio.wait_for(biases.get(), 10)
        await bus.publish(subjects.advice_subject("test", "critic"), _advice("critic", 5, priority=2.0), kind="advice")
        merged = await asyncio.wait_for(biases.get(), 10)
    planner = np.full(N, -1 / N)
    planner[2] += 1
    critic = np.full(N, -1 / N)
    critic[5] += 1
    np.testing.assert_allclose(first.bias.to_numpy(), planner, atol=1e-6)
    np.testing.assert_allclose(merged.bias.to_numpy(), (planner + critic) / 2, atol=1e-6)  # weights 1 and 2 * 0.5
    assert merged.bots == [1] and len(merged.advice_ids) == 2 and 0 < merged.ttl_s <= 5.0


async def test_when_one_merged_opinion_expires_the_rest_is_sent_again(bus: Bus, nats_settings: NatsSettings) -> None:
    biases = await _biases(bus)
    async with running(serve, _settings(nats_settings)):
        await _router_knows_actor(bus)
        await bus.publish(subjects.advice_subject("test", "brief"), _advice("brief", 2, ttl_s=0.4), kind="advice")
        await asyncio.wait_for(biases.get(), 10)
        await bus.publish(subjects.advice_subject("test", "long"), _advice("long", 5, ttl_s=10.0), kind="advice")
        merged = await asyncio.wait_for(biases.get(), 10)
        remaining = await asyncio.wait_for(biases.get(), 10)  # sent by the router when "brief" expires
    assert len(merged.advice_ids) == 2 and merged.ttl_s <= 0.4
    assert len(remaining.advice_ids) == 1 and remaining.bias.to_numpy().argmax() == 5 and remaining.ttl_s > 5


async def test_bad_advice_is_rejected_and_counted_never_crashing(bus: Bus, nats_settings: NatsSettings) -> None:
    nan_scores = Array.from_numpy(np.array([np.nan] * N, dtype=np.float32))
    bad = {
        "range": _advice("planner", 99),
        "non_finite": _advice("planner", 0, scores=nan_scores, recommended_action=None),
        "shape": _advice("planner", 0, scores=Array.from_numpy(np.zeros(3, np.float32)), recommended_action=None),
        "expired": _advice("planner", 1, created_at=time.time() - 60),
        "unknown_advisor": _advice("stranger", 1),
    }
    before = {reason: metrics.REJECTED.labels(reason)._value.get() for reason in [*bad, "decode"]}
    biases = await _biases(bus)
    settings = _settings(nats_settings, allow_unknown_advisors=False, advisor_weights={"planner": 1.0})
    async with running(serve, settings):
        await _router_knows_actor(bus)
        for advice in bad.values():
            await bus.publish(subjects.advice_subject("test", advice.advisor), advice, kind="advice")
        await bus.publish_bytes(subjects.advice_subject("test", "planner"), b"\xc1 not advice", kind="advice")
        await bus.publish(subjects.advice_subject("test", "planner"), _advice("planner", 3), kind="advice")
        good = await asyncio.wait_for(biases.get(), 10)  # the router is alive and published only this one
    assert good.bias.to_numpy().argmax() == 3
    for reason in [*bad, "decode"]:
        assert metrics.REJECTED.labels(reason)._value.get() - before[reason] == 1, reason
    assert biases.empty()


async def test_undecodable_heartbeats_and_weights_are_counted_and_dropped(
    bus: Bus, nats_settings: NatsSettings
) -> None:
    kinds = ("heartbeat", "weights")
    before = {kind: metrics.UNDECODABLE.labels(kind)._value.get() for kind in kinds}
    biases = await _biases(bus)
    async with running(serve, _settings(nats_settings)):
        await _router_knows_actor(bus)
        # Advice answered: every subscription (heartbeats, weights, advice: subscribed in that order) is in place.
        await bus.publish(subjects.advice_subject("test", "planner"), _advice("planner", 2), kind="advice")
        await asyncio.wait_for(biases.get(), 10)
        await bus.publish_bytes(
            subjects.heartbeat_subject("test", "actor", "a1"), b"\xc1 no heartbeat", kind="heartbeat"
        )
        await bus.publish_bytes(subjects.weights_subject("test"), b"\xc1 no announcement", kind="weights")
        await wait_until(lambda: all(metrics.UNDECODABLE.labels(kind)._value.get() > before[kind] for kind in kinds))
        await bus.publish(subjects.advice_subject("test", "planner"), _advice("planner", 4), kind="advice")
        await asyncio.wait_for(biases.get(), 10)  # still serving
    assert all(metrics.UNDECODABLE.labels(kind)._value.get() - before[kind] == 1 for kind in kinds)


async def test_control_api_refuses_without_the_token(nats_settings: NatsSettings) -> None:
    settings = _settings(nats_settings)
    async with running(serve, settings), httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.api_port}") as api:
        await _until_api_is_up(api)
        assert (await api.get("/status")).json()["enabled"] is True
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            refused = await api.put("/config", json={"strength": 0.5}, headers=headers)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            assert (await api.post("/kill", headers=headers)).status_code == 401
        changed = await api.put("/config", json={"strength": 0.5}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert changed.status_code == 200 and changed.json()["strength"] == 0.5
        invalid = await api.put("/config", json={"b_max": -1}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert invalid.status_code == 422
        assert (await api.get("/config")).json()["b_max"] == 3.0  # a bad update changes nothing
        assert "ala_router_processing_seconds_bucket" in (await api.get("/metrics")).text
        assert "/kill" in (await api.get("/openapi.json")).json()["paths"]


async def test_without_a_configured_token_the_api_is_read_only(nats_settings: NatsSettings) -> None:
    settings = _settings(nats_settings, token="")
    async with running(serve, settings), httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.api_port}") as api:
        await _until_api_is_up(api)
        refused = await api.post("/kill", headers={"Authorization": "Bearer anything"})
        assert refused.status_code == 403 and "ALA_ROUTER_TOKEN" in refused.text


async def test_the_control_api_refuses_floods_and_huge_bodies_before_reading_them(nats_settings: NatsSettings) -> None:
    settings = _settings(nats_settings, api_rate_per_s=1.0, api_burst=5, api_max_body_bytes=1024)
    refused = {reason: metrics.API_REFUSED.labels(reason)._value.get() for reason in ("rate", "size")}
    admin = {"Authorization": f"Bearer {TOKEN}"}
    async with running(serve, settings), httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.api_port}") as api:
        await _until_api_is_up(api)
        huge = await api.put("/config", content=b"{" + b" " * 5000 + b"}", headers=admin)
        assert huge.status_code == 413

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
            for _ in range(10):
                yield b" " * 512

        assert (await api.put("/config", content=chunked(), headers=admin)).status_code == 413
        codes = [(await api.get("/status")).status_code for _ in range(8)]
        assert 429 in codes and codes.count(200) <= 5
        limited = next(r for r in [await api.get("/status")] if r.status_code == 429)
        assert int(limited.headers["retry-after"]) >= 1
    assert metrics.API_REFUSED.labels("size")._value.get() >= refused["size"] + 2
    assert metrics.API_REFUSED.labels("rate")._value.get() >= refused["rate"] + 3


async def test_the_control_api_survives_schema_driven_fuzzing(nats_settings: NatsSettings) -> None:
    """schemathesis generates requests from the OpenAPI schema: no 5xx, every status documented, every response
    as its schema says."""
    settings = _settings(nats_settings, api_rate_per_s=1000.0, api_burst=1000)
    async with running(serve, settings), httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.api_port}") as api:
        await _until_api_is_up(api)
        fuzz = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"http://127.0.0.1:{settings.api_port}/openapi.json",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            "40",
            "--seed",
            "1",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(fuzz.communicate(), 110)
    assert fuzz.returncode == 0, output.decode()[-4000:]


async def _until_api_is_up(api: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            await api.get("/status")
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


def _actor_settings(nats: NatsSettings) -> ActorSettings:
    return ActorSettings(
        run="test",
        instance="a1",
        env_id=ENV_ID,
        num_bots=2,
        num_steps=8,
        metrics_host="127.0.0.1",
        metrics_port=0,
        heartbeat_interval_s=0.1,
        nats=nats,
        max_chunks_ahead=0,  # no learner here
    )


async def test_kill_clears_biases_at_a_real_actor(bus: Bus, nats_settings: NatsSettings) -> None:
    settings = _settings(nats_settings)
    async with (
        running(actor_service.serve, _actor_settings(nats_settings)),
        running(serve, settings),
        ChunkReader(bus) as chunks,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.api_port}") as api,
    ):
        await wait_until(lambda: metrics.ACTORS._value.get() >= 1)
        advice = _advice("planner", 2, ttl_s=60.0, target=AdviceTarget(actor="a1"))
        await bus.publish(subjects.advice_subject("test", "planner"), advice, kind="advice")
        while not (await chunks.next()).bias.to_numpy().any():
            pass
        await _until_api_is_up(api)
        killed = await api.post("/kill", headers={"Authorization": f"Bearer {TOKEN}"})
        assert killed.json() == {"actors_cleared": ["a1"]}
        killed_at = time.time()
        while (await chunks.next()).created_at <= killed_at + 0.25:  # chunks begun before the kill arrived
            pass
        assert not (await chunks.next()).bias.to_numpy().any()
        await bus.publish(subjects.advice_subject("test", "planner"), advice, kind="advice")
        await wait_until(lambda: metrics.REJECTED.labels("disabled")._value.get() >= 1)


async def test_biases_expire_at_the_actor_after_the_router_dies(bus: Bus, nats_settings: NatsSettings) -> None:
    async with running(actor_service.serve, _actor_settings(nats_settings)), ChunkReader(bus) as chunks:
        async with running(serve, _settings(nats_settings)):
            await wait_until(lambda: metrics.ACTORS._value.get() >= 1)
            advice = _advice("planner", 2, ttl_s=0.5, target=AdviceTarget(actor="a1"))
            await bus.publish(subjects.advice_subject("test", "planner"), advice, kind="advice")
            while not (await chunks.next()).bias.to_numpy().any():
                pass
        stopped_at = time.time()  # the router is gone; only the actor's own clock can expire the bias
        while (await chunks.next()).created_at <= max(stopped_at, advice.created_at + advice.ttl_s) + 0.25:
            pass
        assert not (await chunks.next()).bias.to_numpy().any()


@pytest.fixture(autouse=True)
def _fresh_actor_count() -> None:
    metrics.ACTORS.set(0)


async def test_outcomes_from_actors_move_an_advisors_trust_and_its_bias(bus: Bus, nats_settings: NatsSettings) -> None:
    """Episodes the liar's advice reached end worse than the control group's: its trust falls to 0 (probation off)
    and it is not heard any more; the expert's episodes end better: its trust rises to 1 and its bias is at full
    strength. (Probation, the default, is test_trust's.)"""
    biases = await _biases(bus)
    settings = _settings(
        nats_settings, trust=True, trust_initial=0.5, trust_min_episodes=5, trust_interval_s=0.05, trust_probation=0.0
    )
    good = EpisodeStats(episodes=20, return_sum=18.0, return_sq_sum=16.5)
    bad = EpisodeStats(episodes=20, return_sum=0.0, return_sq_sum=0.0)
    control = EpisodeStats(episodes=10, return_sum=4.0, return_sq_sum=2.0)
    outcome = AdviceOutcome(
        run="test", actor="a1", control=control, advised={"expert": good, "liar": bad}, created_at=time.time()
    )
    async with running(serve, settings):
        await _router_knows_actor(bus)
        for _ in range(10):  # forgetting keeps this evidence for a few seconds of updates
            await bus.publish(subjects.outcome_subject("test", "a1"), outcome, kind="outcome")
        await wait_until(
            lambda: metrics.TRUST.labels("expert")._value.get() == 1 and metrics.TRUST.labels("liar")._value.get() == 0
        )
        await bus.publish(subjects.advice_subject("test", "liar"), _advice("liar", 4), kind="advice")
        await bus.publish(subjects.advice_subject("test", "expert"), _advice("expert", 2), kind="advice")
        update = await asyncio.wait_for(biases.get(), 10)
    assert update.advisors == ["expert"] and update.bias.to_numpy().argmax() == 2  # the liar was not heard
    assert update.bias.to_numpy()[2] == pytest.approx(6 / 7, abs=1e-6)  # strength 1, trust 1
    assert (
        metrics.TRUST_ADVANTAGE.labels("liar")._value.get() < 0 < metrics.TRUST_ADVANTAGE.labels("expert")._value.get()
    )
