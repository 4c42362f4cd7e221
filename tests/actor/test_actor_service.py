"""The actor service against a real broker: biases reach the sampling distribution and expire, weights are
verified and swapped, digests flow, and a broker restart loses no chunk."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from contextlib import AsyncExitStack
from typing import Any

import msgspec
import numpy as np
import pytest
import torch
from nats.aio.msg import Msg

from ala.broker import EmbeddedBroker
from ala.bus import Bus
from ala.config import NatsSettings
from ala.envs.minigrid_expert import plan
from ala.envs.minigrid_options import situation
from ala.rl.onnx_policy import OPSET, OnnxPolicy, ProbeOutput, export, probe_output
from ala.rl.policy import Agent, weights_to_bytes
from ala.rl.trajectory import full_state_key, observation_key
from protos import (
    MAX_ADVISORS,
    AdviceOutcome,
    Array,
    BiasUpdate,
    DigestRequest,
    OnnxExport,
    StateDigest,
    TrajectoryChunk,
    WeightsAnnouncement,
    decode,
    encode,
    subjects,
)
from services.actor import metrics
from services.actor.service import serve
from services.actor.settings import ActorSettings
from tests.support import ENV_ID, ChunkReader, fresh_agent, running, spec, store_weights, wait_until

N_ACTIONS = 7
DELIVERY_MARGIN_S = 0.25
ONNX_REASONS = ("onnx_invalid", "onnx_mismatch")
"""Generous bound on publish-to-receipt time on loopback, so expiry is judged by the actor's receipt time."""


def _settings(nats: NatsSettings, **overrides: object) -> ActorSettings:
    values: dict[str, object] = {
        "run": "test",
        "instance": "a1",
        "env_id": ENV_ID,
        "num_bots": 2,
        "num_steps": 8,
        "metrics_host": "127.0.0.1",
        "metrics_port": 0,
        "nats": nats,
        "max_chunks_ahead": 0,  # no learner in these tests: flow control on only where a test plays the learner
    }
    return ActorSettings(**(values | overrides))


async def _digests(bus: Bus) -> asyncio.Queue[StateDigest]:
    """Every digest the actors publish, from now on."""
    digests: asyncio.Queue[StateDigest] = asyncio.Queue()

    async def on_digest(msg: Msg) -> None:
        await digests.put(decode(msg.data, StateDigest))

    await bus.subscribe(subjects.digest_wildcard("test"), on_digest)
    await bus.nc.flush()
    return digests


def _bias_update(bias: np.ndarray, ttl_s: float, state_key: str = "") -> BiasUpdate:
    return BiasUpdate(
        run="test",
        actor="a1",
        bots=[],
        bias=Array.from_numpy(bias.astype(np.float32)),
        ttl_s=ttl_s,
        advice_ids=["advice-1"],
        created_at=time.time(),
        advice_created_at=time.time(),
        state_key=state_key,
    )


async def test_bias_reaches_sampling_then_expires_at_the_actor(bus: Bus, nats_settings: NatsSettings) -> None:
    bias = np.zeros(N_ACTIONS)
    bias[2] = 3.0  # "forward"
    ttl_s = 1.0
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(running(serve, _settings(nats_settings, max_abs_bias=3.0)))
        chunks = await stack.enter_async_context(ChunkReader(bus))
        await chunks.next()  # the actor is stepping
        sent_at = time.time()
        await bus.publish(subjects.bias_subject("test", "a1"), _bias_update(bias, ttl_s), kind="bias")
        biased = await chunks.next()
        while not biased.bias.to_numpy().any():
            biased = await chunks.next()
        actions_taken: list[np.ndarray] = []
        while biased.bias.to_numpy().any():  # every chunk sampled while the bias was in force
            rows = biased.bias.to_numpy().reshape(-1, N_ACTIONS)
            active = rows.any(axis=1)
            np.testing.assert_array_equal(rows[active], np.tile(bias, (int(active.sum()), 1)))
            behaviour = biased.behaviour_logprob.to_numpy().reshape(-1)
            policy = biased.policy_logprob.to_numpy().reshape(-1)
            assert (behaviour[active] != policy[active]).all()
            actions_taken.append(biased.actions.to_numpy().reshape(-1)[active])
            biased = await chunks.next()
        forward = np.concatenate(actions_taken) == 2
        # Under the bias, forward has probability ~0.77 (e^3 against six near-uniform others).
        assert len(forward) >= 40 and forward.mean() > 0.5

        # Expiry by the actor's own clock: a chunk begun after sent_at + ttl (plus delivery time) carries no bias.
        while (await chunks.next()).created_at <= sent_at + ttl_s + DELIVERY_MARGIN_S:
            pass
        after_expiry = await chunks.next()
        assert not after_expiry.bias.to_numpy().any()
        assert (after_expiry.behaviour_logprob.to_numpy() == after_expiry.policy_logprob.to_numpy()).all()
    assert metrics.ADVICE_TO_BIAS_SECONDS._sum.get() > 0


@pytest.mark.parametrize("mode", ["bias", "distill", "both"])
async def test_the_advice_mode_decides_whether_advice_tilts_sampling_is_recorded_for_distillation_or_both(
    bus: Bus, nats_settings: NatsSettings, mode: str
) -> None:
    bias = np.zeros(N_ACTIONS)
    bias[2] = 2.0
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(running(serve, _settings(nats_settings, advice_mode=mode, control_share=0.0)))
        chunks = await stack.enter_async_context(ChunkReader(bus))
        await chunks.next()  # the actor is stepping
        await bus.publish(subjects.bias_subject("test", "a1"), _bias_update(bias, ttl_s=60.0), kind="bias")
        chunk = await chunks.next()
        while not (chunk.bias.to_numpy().any() or (chunk.advice is not None and chunk.advice.to_numpy().any())):
            chunk = await chunks.next()
    tilted = chunk.bias.to_numpy().reshape(-1, N_ACTIONS)
    sampled_differently = chunk.behaviour_logprob.to_numpy() != chunk.policy_logprob.to_numpy()
    assert tilted.any() == sampled_differently.any() == (mode != "distill")
    assert (chunk.advice is not None) == (mode != "bias")
    if chunk.advice is not None:
        recorded = chunk.advice.to_numpy().reshape(-1, N_ACTIONS)
        np.testing.assert_array_equal(recorded[recorded.any(axis=1)][0], bias)
        if mode == "both":
            np.testing.assert_array_equal(recorded, tilted)  # distilled exactly where it tilted sampling


async def test_a_zero_bias_from_an_advisor_is_recorded_as_advice(bus: Bus, nats_settings: NatsSettings) -> None:
    """The null advisor's bias: nothing changes in sampling, but its steps are marked advised in the chunk, for the
    learner's advised floor; steps without it are not."""
    null = msgspec.structs.replace(_bias_update(np.zeros(N_ACTIONS), ttl_s=60.0), advisors=["null"])
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(running(serve, _settings(nats_settings, control_share=0.0)))
        chunks = await stack.enter_async_context(ChunkReader(bus))
        first = await chunks.next()  # the actor is stepping
        assert first.advised is not None and first.advised.dtype == "|b1"
        await bus.publish(subjects.bias_subject("test", "a1"), null, kind="bias")
        chunk = await chunks.next()
        while chunk.advised is None or not chunk.advised.to_numpy().all():
            chunk = await chunks.next()
    assert not first.advised.to_numpy().any()
    assert not chunk.bias.to_numpy().any()
    np.testing.assert_array_equal(chunk.behaviour_logprob.to_numpy(), chunk.policy_logprob.to_numpy())


@pytest.mark.parametrize("reach", [0.3, 0.6])
async def test_advice_on_probation_tilts_sampling_but_is_not_distilled(
    bus: Bus, nats_settings: NatsSettings, reach: float
) -> None:
    """Mode both: a bias whose reach (its advisor's trust) is under distill_min_reach (0.5) applies, but is recorded
    for distillation only once its reach is at least that."""
    bias = np.zeros(N_ACTIONS)
    bias[2] = 2.0
    update = msgspec.structs.replace(_bias_update(bias, ttl_s=60.0), reach=reach)
    async with AsyncExitStack() as stack:
        settings = _settings(nats_settings, advice_mode="both", control_share=0.0, num_bots=8)
        await stack.enter_async_context(running(serve, settings))
        chunks = await stack.enter_async_context(ChunkReader(bus))
        await chunks.next()  # the actor is stepping
        await bus.publish(subjects.bias_subject("test", "a1"), update, kind="bias")
        chunk = await chunks.next()
        while not chunk.bias.to_numpy().any():
            chunk = await chunks.next()
    assert chunk.advice is not None
    tilted, recorded = chunk.bias.to_numpy(), chunk.advice.to_numpy()
    np.testing.assert_array_equal(recorded, tilted if reach >= 0.5 else np.zeros_like(tilted))


async def test_the_actor_holds_any_bias_to_the_routers_announced_bounds(bus: Bus, nats_settings: NatsSettings) -> None:
    """Whoever publishes on the bias subject: elements beyond the router's b_max are clipped and a TTL beyond its
    max_ttl_s is capped, both counted."""
    from tests.support import actor_heartbeat

    bounded = {what: metrics.BIAS_BOUNDED.labels(what)._value.get() for what in ("element", "ttl")}
    router_heartbeat = msgspec.structs.replace(
        actor_heartbeat(created_at=time.time()), service="router", instance="r1", b_max=1.0, max_ttl_s=2.0
    )
    async with running(serve, _settings(nats_settings)), ChunkReader(bus) as chunks:
        await chunks.next()
        await bus.publish(subjects.heartbeat_subject("test", "router", "r1"), router_heartbeat, kind="heartbeat")
        bias = np.zeros(N_ACTIONS)
        bias[2] = 3.0
        await wait_until(lambda: metrics.BIAS_BOUND.labels("b_max")._value.get() == 1.0)
        sent_at = time.time()
        await bus.publish(subjects.bias_subject("test", "a1"), _bias_update(bias, 1e9), kind="bias")
        biased = await chunks.next()
        while not biased.bias.to_numpy().any():
            biased = await chunks.next()
        assert biased.bias.to_numpy().max() == 1.0
        assert metrics.BIAS_BOUNDED.labels("element")._value.get() == bounded["element"] + 1
        assert metrics.BIAS_BOUNDED.labels("ttl")._value.get() == bounded["ttl"] + 1
        while (await chunks.next()).created_at <= sent_at + 2.0 + DELIVERY_MARGIN_S:
            pass
        assert not (await chunks.next()).bias.to_numpy().any()  # a 1e9 s TTL lived 2 s


async def test_malformed_bias_is_rejected_and_counted(bus: Bus, nats_settings: NatsSettings) -> None:
    before = metrics.BIAS_REJECTED.labels("non_finite")._value.get()
    decode_before = metrics.BIAS_REJECTED.labels("decode")._value.get()
    async with running(serve, _settings(nats_settings)), ChunkReader(bus) as chunks:
        await chunks.next()
        nan = np.full(N_ACTIONS, np.nan)
        await bus.publish(subjects.bias_subject("test", subjects.BROADCAST), _bias_update(nan, 1.0), kind="bias")
        await bus.publish_bytes(subjects.bias_subject("test", "a1"), b"garbage", kind="bias")
        await wait_until(lambda: metrics.BIAS_REJECTED.labels("decode")._value.get() > decode_before)
        await wait_until(lambda: metrics.BIAS_REJECTED.labels("non_finite")._value.get() > before)
        assert not (await chunks.next()).bias.to_numpy().any()


async def test_undecodable_router_heartbeats_weights_and_digest_requests_are_counted(
    bus: Bus, nats_settings: NatsSettings
) -> None:
    counters = (
        metrics.UNDECODABLE.labels("heartbeat"),
        metrics.WEIGHTS_REJECTED.labels("decode"),
        metrics.DIGEST_REQUESTS_REJECTED,
    )

    def counts() -> list[float]:
        return [counter._value.get() - start for counter, start in zip(counters, before, strict=True)]

    before = [counter._value.get() for counter in counters]
    # Stored before the actor starts: what it reads at start as the newest announcement.
    await bus.publish_durable(subjects.weights_subject("test"), b"\xc1 stored", "garbage", kind="weights")
    async with running(serve, _settings(nats_settings)), ChunkReader(bus) as chunks:
        await chunks.next()  # subscribed and stepping
        assert counts() == [0, 1, 0]
        await bus.publish_bytes(subjects.heartbeat_subject("test", "router", "r1"), b"\xc1", kind="heartbeat")
        await bus.publish_bytes(subjects.weights_subject("test"), b"\xc1 live", kind="weights")
        await bus.publish_bytes(subjects.digest_request_subject("test", "a1"), b"\xc1", kind="digest_request")
        await wait_until(lambda: all(count >= want for count, want in zip(counts(), [1, 2, 1], strict=True)))
        await chunks.next()  # still stepping
    assert counts() == [1, 2, 1]


async def _announce(bus: Bus, version: int, data: bytes, **fields: object) -> None:
    announcement = await store_weights(bus, version, data, **fields)
    msg_id = f"w{version}.{announcement.settled_stream_seq}"
    await bus.publish_durable(subjects.weights_subject("test"), encode(announcement), msg_id, "weights")


async def test_announced_weights_are_verified_and_swapped(bus: Bus, nats_settings: NatsSettings) -> None:
    new_policy = fresh_agent(seed=11)
    rejected = metrics.WEIGHTS_REJECTED.labels("sha256")._value.get()
    # No flow control here: this test plays a learner that announces weights but trains nothing.
    async with running(serve, _settings(nats_settings, max_chunks_ahead=0)), ChunkReader(bus) as chunks:
        assert (await chunks.next()).policy_version == 0
        await _announce(bus, 7, weights_to_bytes(new_policy))
        chunk = await chunks.next()
        while chunk.policy_version != 7:
            chunk = await chunks.next()
        obs = torch.from_numpy(chunk.observations.to_numpy().reshape(16, -1).astype(np.float32))
        actions = torch.from_numpy(chunk.actions.to_numpy().reshape(16).copy())
        with torch.no_grad():
            expected = new_policy.get_action_and_value(obs, action=actions).policy_logprob
        np.testing.assert_allclose(chunk.policy_logprob.to_numpy().reshape(16), expected.numpy(), atol=1e-5)

        await _announce(bus, 8, weights_to_bytes(fresh_agent(seed=12)), sha256="0" * 64)
        await wait_until(lambda: metrics.WEIGHTS_REJECTED.labels("sha256")._value.get() > rejected)
        assert (await chunks.next()).policy_version == 7


async def _announce_onnx(
    bus: Bus,
    version: int,
    agent: Agent,
    model: bytes | None = None,
    expected: ProbeOutput | None = None,
    **fields: object,
) -> None:
    """Weights and their ONNX model, as a learner publishes them; `model` and `expected` stand in for the export and
    the torch output on the probe batch."""
    model = export(agent) if model is None else model
    expected = probe_output(agent) if expected is None else expected
    store = await bus.js.object_store(subjects.WEIGHTS_BUCKET)
    name = subjects.onnx_object_name("test", version)
    await store.put(name, model)
    announced = OnnxExport(
        name=name,
        sha256=hashlib.sha256(model).hexdigest(),
        size=len(model),
        opset=OPSET,
        probe_logits=Array.from_numpy(expected.logits),
        probe_values=Array.from_numpy(expected.values),
    )
    await _announce(bus, version, weights_to_bytes(agent), onnx=announced, **fields)


async def _chunk_of_version(chunks: ChunkReader, version: int) -> TrajectoryChunk:
    chunk = await chunks.next()
    while chunk.policy_version != version:
        chunk = await chunks.next()
    return chunk


def _assert_sampled_by(chunk: TrajectoryChunk, agent: Agent, bots: int = 2, steps: int = 8) -> None:
    """The chunk's log-probabilities and values are `agent`'s (to 1e-5, whichever runtime computed them)."""
    rows = bots * steps
    obs = torch.from_numpy(chunk.observations.to_numpy().reshape(rows, -1).astype(np.float32))
    actions = torch.from_numpy(chunk.actions.to_numpy().reshape(rows).copy())
    with torch.no_grad():
        expected = agent.get_action_and_value(obs, action=actions)
    np.testing.assert_allclose(chunk.policy_logprob.to_numpy().reshape(rows), expected.policy_logprob, atol=1e-5)
    np.testing.assert_allclose(chunk.values.to_numpy().reshape(rows), expected.value, atol=1e-5)


async def test_with_onnx_each_model_is_verified_before_it_is_swapped_in(bus: Bus, nats_settings: NatsSettings) -> None:
    """ALA_ACTOR_BACKEND=onnx: a version announced with its model runs on it; one without (a learner that does not
    export) is exported by the actor; a corrupted model or another policy's is refused and counted, and the actor
    keeps sampling with the version it has."""
    rejected = {reason: metrics.WEIGHTS_REJECTED.labels(reason)._value.get() for reason in ONNX_REASONS}
    settings = _settings(nats_settings, backend="onnx")
    assert settings.onnx_providers[0] == "TensorrtExecutionProvider"  # the default list, filtered to what is here
    async with running(serve, settings), ChunkReader(bus) as chunks:
        assert (await chunks.next()).policy_version == 0
        assert metrics.POLICY_FORWARD.labels("onnx", "CPUExecutionProvider")._value.get() == 1

        unexported = fresh_agent(seed=21)
        await _announce(bus, 6, weights_to_bytes(unexported))
        _assert_sampled_by(await _chunk_of_version(chunks, 6), unexported)

        exported = fresh_agent(seed=22)
        await _announce_onnx(bus, 7, exported)
        _assert_sampled_by(await _chunk_of_version(chunks, 7), exported)

        corrupted = bytearray(export(fresh_agent(seed=23)))
        corrupted[len(corrupted) // 2 :] = bytes(len(corrupted) - len(corrupted) // 2)  # its second half zeroed
        await _announce_onnx(bus, 8, fresh_agent(seed=23), model=bytes(corrupted))
        await wait_until(
            lambda: metrics.WEIGHTS_REJECTED.labels("onnx_invalid")._value.get() > rejected["onnx_invalid"]
        )

        honest = fresh_agent(seed=24)  # the torch weights and the probe output are its; the model is another's
        await _announce_onnx(bus, 9, honest, model=export(fresh_agent(seed=25)))
        await wait_until(
            lambda: metrics.WEIGHTS_REJECTED.labels("onnx_mismatch")._value.get() > rejected["onnx_mismatch"]
        )
        _assert_sampled_by(await chunks.next(), exported)  # still version 7, on its verified model
    assert all(metrics.WEIGHTS_REJECTED.labels(r)._value.get() == rejected[r] + 1 for r in ONNX_REASONS)


async def test_the_actor_keeps_stepping_while_a_new_model_builds_with_flow_control_on(
    bus: Bus, nats_settings: NatsSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading a model (a TensorRT engine build takes seconds) and verifying it run in a worker thread, and flow
    control counts a build in progress as installed: here the load is held until the actor has stepped through two
    more chunks' worth of steps, then released, and the new version is swapped in. An actor that waited for the
    build (on the event loop, or in flow control) would hold up the steps, and this test, instead."""
    loading, release = threading.Event(), threading.Event()
    real_load = OnnxPolicy.load

    def held_load(cls: type[OnnxPolicy], *args: Any, **kwargs: Any) -> OnnxPolicy:
        loading.set()
        assert release.wait(30), "never released"
        return real_load(*args, **kwargs)

    new_policy = fresh_agent(seed=26)
    # Flow control on, as deployed; its timeout far beyond the test, so that only a build that never blocks passes.
    settings = _settings(nats_settings, backend="onnx", max_chunks_ahead=8, flow_timeout_s=120)
    steps_per_chunk = settings.num_bots * settings.num_steps
    timeouts = metrics.FLOW_TIMEOUTS._value.get()
    async with ChunkReader(bus) as chunks:
        await _announce_onnx(bus, 6, fresh_agent(seed=27))  # the learner is there from the actor's start
        loaded = metrics.WEIGHTS_LOADED._value.get()
        async with running(serve, settings):
            await wait_until(lambda: metrics.WEIGHTS_LOADED._value.get() > loaded)  # version 6 in use
            monkeypatch.setattr(OnnxPolicy, "load", classmethod(held_load))
            trained = (await bus.js.stream_info(subjects.TRAJECTORIES.name)).state.last_seq
            announced_at = metrics.ENV_STEPS._value.get()
            await _announce_onnx(bus, 7, new_policy, settled_stream_seq=trained)  # all shipped so far is trained
            assert await asyncio.to_thread(loading.wait, 20)
            # Flow control waits for the weights' download (milliseconds), then counts the build (the model's fetch
            # and load) as installed: every step from the announcement until the release is a step during the build.
            await wait_until(lambda: metrics.ENV_STEPS._value.get() >= announced_at + 2 * steps_per_chunk)
            assert not release.is_set() and loading.is_set()
            release.set()
            await wait_until(lambda: metrics.WEIGHTS_LOADED._value.get() > loaded + 1)  # installed while held back
            trained = (await bus.js.stream_info(subjects.TRAJECTORIES.name)).state.last_seq
            await _announce_onnx(bus, 7, new_policy, settled_stream_seq=trained)  # the learner caught up
            _assert_sampled_by(await _chunk_of_version(chunks, 7), new_policy)
    assert metrics.FLOW_TIMEOUTS._value.get() == timeouts


async def test_an_onnx_actor_stops_at_start_when_no_provider_it_asks_for_is_here(nats_settings: NatsSettings) -> None:
    settings = _settings(nats_settings, backend="onnx", onnx_providers=["TensorrtExecutionProvider"])
    with pytest.raises(ValueError, match=r"ALA_ACTOR_BACKEND=onnx: none of .*TensorrtExecutionProvider.*PROVIDERS"):
        await serve(settings, asyncio.Event())


async def test_a_failed_weights_fetch_is_retried_until_the_weights_can_be_read(
    bus: Bus, nats_settings: NatsSettings
) -> None:
    """An announcement whose object cannot be read (as after a broker restart cut the read) must not leave the actor
    on old weights for good: it retries without waiting for another announcement."""
    data = weights_to_bytes(fresh_agent(seed=13))
    missing = metrics.WEIGHTS_REJECTED.labels("missing")._value.get()
    async with running(serve, _settings(nats_settings, max_chunks_ahead=0)), ChunkReader(bus) as chunks:
        await chunks.next()
        announcement = await store_weights(bus, 9, data)
        store = await bus.js.object_store(subjects.WEIGHTS_BUCKET)
        await store.delete(announcement.name)  # announced, but not there (yet)
        await bus.publish_durable(subjects.weights_subject("test"), encode(announcement), "w9", "weights")
        await wait_until(lambda: metrics.WEIGHTS_REJECTED.labels("missing")._value.get() > missing)
        await store_weights(bus, 9, data)  # the broker is back: the same object, no new announcement
        chunk = await chunks.next()
        while chunk.policy_version != 9:
            chunk = await chunks.next()


async def test_a_weights_read_that_never_returns_is_bounded() -> None:
    """A fault no real broker produces on demand (a read cut mid-way by its death): an Object Store whose read
    never returns. The fetch gives up within its bound, so a newer announcement or a retry can start."""
    from ala.rejection import Rejected
    from ala.weights import fetch_policy

    class HungStore:
        async def get(self, name: str) -> None:
            await asyncio.Event().wait()

    class HungJetStream:
        async def object_store(self, bucket: str) -> HungStore:
            return HungStore()

    class HungBus:
        js = HungJetStream()

    announcement = WeightsAnnouncement(
        run="test", version=1, bucket="b", name="n", sha256="0" * 64, size=1, created_at=0.0
    )
    with pytest.raises(Rejected) as refused:
        await fetch_policy(HungBus(), announcement, spec(), torch.device("cpu"), timeout_s=0.2)  # type: ignore[arg-type]
    assert refused.value.reason == "timeout"


async def test_digests_describe_the_bots_state(bus: Bus, nats_settings: NatsSettings) -> None:
    digests = await _digests(bus)
    async with running(serve, _settings(nats_settings, num_bots=3)):
        first = [await asyncio.wait_for(digests.get(), 20) for _ in range(3)]  # every bot's first episode
        request = DigestRequest(run="test", actor="a1", bots=[1], requested_by="test")
        await bus.publish(subjects.digest_request_subject("test", "a1"), request, kind="digest-request")
        on_demand = await asyncio.wait_for(digests.get(), 20)
        while on_demand.bot != 1 or on_demand.env_step <= 3:  # skip digests of episodes that happened to start
            on_demand = await asyncio.wait_for(digests.get(), 20)
    assert sorted(d.bot for d in first) == [0, 1, 2] and all(d.env_step == 3 for d in first)  # after step one
    digest = first[0]
    assert digest.actor == "a1" and digest.episode == 0
    assert "Mission: use the key to open the door" in digest.text
    assert digest.observation.shape == (147,) and digest.action_names[2] == "forward"
    assert on_demand.env_step > 3
    assert all(d.state_key == observation_key(d.observation.to_numpy()) for d in [*first, on_demand])
    assert all(d.full_state is not None for d in [*first, on_demand])
    assert all(d.full_state_key == full_state_key(d.full_state.to_numpy()) for d in [*first, on_demand])
    assert all(d.situation_key == situation(d.observation.to_numpy()).key for d in [*first, on_demand])
    assert all(d.situation.startswith("You carry") for d in [*first, on_demand])
    assert metrics.DIGESTS.labels("new_state")._value.get() >= 3
    assert metrics.DIGESTS.labels("requested")._value.get() >= 1


async def test_state_scoped_bias_reaches_exactly_the_steps_in_that_state(bus: Bus, nats_settings: NatsSettings) -> None:
    digests = await _digests(bus)
    bias = np.zeros(N_ACTIONS)
    bias[6] = 2.0  # "done" changes nothing in MiniGrid: a bot that meets the state tends to stay in it
    before = metrics.BIASED_STEPS.labels("state")._value.get()
    settings = _settings(nats_settings, num_bots=4, control_share=0.0)  # no control group: every bot is advised
    async with running(serve, settings), ChunkReader(bus) as chunks:
        digest = await asyncio.wait_for(digests.get(), 20)
        update = _bias_update(bias, ttl_s=60.0, state_key=digest.state_key)
        await bus.publish(subjects.bias_subject("test", "a1"), update, kind="bias")
        await wait_until(lambda: metrics.BIASED_STEPS.labels("state")._value.get() > before)
        installed_at = time.time()
        biased_rows = 0
        while biased_rows < 10:
            chunk = await chunks.next()
            rows = chunk.bias.to_numpy().reshape(-1, N_ACTIONS)
            seen = chunk.observations.to_numpy().reshape(len(rows), -1).astype(np.float32)  # uint8 on the wire
            keys = [observation_key(o) for o in seen]
            in_state = np.array([key == digest.state_key for key in keys])
            biased = rows.any(axis=1)
            assert not (biased & ~in_state).any()  # never on another state
            np.testing.assert_array_equal(rows[biased], np.tile(bias, (int(biased.sum()), 1)))
            if chunk.created_at - 8 * 0.05 > installed_at:  # sampled after the bias was installed (8 steps < 0.4 s)
                assert (biased == in_state).all()  # always on that state, whichever bot is in it
            biased_rows += int(biased.sum())


async def test_broker_restart_loses_no_chunk(
    bus: Bus, nats_settings: NatsSettings, nats_server: EmbeddedBroker
) -> None:
    retries = metrics.CHUNK_RETRIES._value.get()
    async with running(serve, _settings(nats_settings)):
        async with ChunkReader(bus) as chunks:
            await chunks.next()
        nats_server.kill()
        await wait_until(lambda: metrics.CHUNK_RETRIES._value.get() > retries)  # chunks made while it was down
        nats_server.start()
        await wait_until(
            lambda: metrics.RETRY_BUFFER._value.get() == 0 and metrics.CHUNK_RETRIES._value.get() > retries
        )
        shipped = metrics.CHUNKS_SHIPPED._value.get()
        await wait_until(lambda: metrics.CHUNKS_SHIPPED._value.get() > shipped + 2)  # and on it goes
    info = await bus.js.stream_info(subjects.TRAJECTORIES.name)
    async with ChunkReader(bus) as stored:
        seqs = [(await stored.next()).chunk_seq for _ in range(info.state.messages)]
    assert len(seqs) == len(set(seqs))
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


@pytest.mark.parametrize("learner_ranks", [1, 2])
async def test_flow_control_keeps_the_actor_one_chunk_ahead_of_each_learner_rank(
    bus: Bus, nats_settings: NatsSettings, learner_ranks: int
) -> None:
    """The test plays the learner: it announces weights (and how many ranks train them), and later that it has
    trained the first chunk. Each rank needs a chunk of its own per update: one ahead per rank."""
    weights = weights_to_bytes(fresh_agent(seed=5))
    settings = _settings(nats_settings, max_chunks_ahead=1, flow_timeout_s=60)
    steps_per_chunk = settings.num_bots * settings.num_steps
    async with ChunkReader(bus) as chunks:
        await _announce(bus, 1, weights, learner_ranks=learner_ranks)  # flow control is on from the actor's start
        async with running(serve, settings):
            ahead = [await chunks.next() for _ in range(learner_ranks + 1)]
            assert {chunk.policy_version for chunk in ahead} == {1}
            with pytest.raises(TimeoutError):  # one more would be two ahead of training per rank
                await chunks.next(timeout_s=1.0)
            assert metrics.FLOW_TIMEOUTS._value.get() == 0
            stream_seq = (await bus.js.get_msg(subjects.TRAJECTORIES.name, seq=1)).seq
            # The first chunk is trained: version 2
            await _announce(bus, 2, weights, settled_stream_seq=stream_seq, learner_ranks=learner_ranks)
            last = await chunks.next()
    assert last.policy_version == 2  # sampled with the weights trained on the first chunk
    seqs = [chunk.chunk_seq for chunk in [*ahead, last]]
    assert seqs == sorted(seqs) and steps_per_chunk == 16


async def test_the_judge_scores_advice_against_the_planner_for_the_state_each_bot_is_in(
    bus: Bus, nats_settings: NatsSettings
) -> None:
    """Expert advice about a state is judged right wherever a bot meets it; its opposite is judged wrong."""
    digests = await _digests(bus)
    right = metrics.ADVICE_JUDGED.labels("state", "right")
    wrong = metrics.ADVICE_JUDGED.labels("state", "wrong")
    before = right._value.get(), wrong._value.get()
    async with running(serve, _settings(nats_settings, num_bots=4, judge_rate=1.0)):
        for favourite in ("expert", "other"):
            digest = await asyncio.wait_for(digests.get(), 20)
            while digest.full_state is None or plan(digest.full_state.to_numpy()) is None:
                digest = await asyncio.wait_for(digests.get(), 20)
            expert = plan(digest.full_state.to_numpy())
            bias = np.zeros(N_ACTIONS)
            bias[expert if favourite == "expert" else (expert + 1) % N_ACTIONS] = 2.0
            update = _bias_update(bias, ttl_s=60.0, state_key=digest.state_key)
            await bus.publish(subjects.bias_subject("test", "a1"), update, kind="bias")
            counter = right if favourite == "expert" else wrong
            await wait_until(lambda c=counter, i=int(favourite != "expert"): c._value.get() > before[i])


async def test_expert_advice_about_an_exact_state_is_never_judged_wrong(bus: Bus, nats_settings: NatsSettings) -> None:
    """Advice keyed by an observation also lands on states that look alike (on DoorKey, some need another action);
    keyed by the exact state, the planner's advice is right wherever it lands."""
    digests = await _digests(bus)
    right = metrics.ADVICE_JUDGED.labels("state", "right")
    wrong = metrics.ADVICE_JUDGED.labels("state", "wrong")
    before = right._value.get(), wrong._value.get()
    settings = _settings(nats_settings, num_bots=4, judge_rate=1.0, control_share=0.0)
    async with running(serve, settings):
        for _ in range(20):
            digest = await asyncio.wait_for(digests.get(), 20)
            assert digest.full_state is not None
            expert = plan(digest.full_state.to_numpy())
            if expert is None:
                continue
            bias = np.zeros(N_ACTIONS)
            bias[expert] = 2.0
            update = _bias_update(bias, ttl_s=60.0, state_key=digest.full_state_key)
            await bus.publish(subjects.bias_subject("test", "a1"), update, kind="bias")
        await wait_until(lambda: right._value.get() >= before[0] + 20)
    assert wrong._value.get() == before[1]


async def test_episode_outcomes_reach_the_router_with_a_control_group(bus: Bus, nats_settings: NatsSettings) -> None:
    outcomes: asyncio.Queue[AdviceOutcome] = asyncio.Queue()

    async def on_outcome(msg: Msg) -> None:
        await outcomes.put(decode(msg.data, AdviceOutcome))

    await bus.subscribe(subjects.outcome_wildcard("test"), on_outcome)
    await bus.nc.flush()
    control = advised = 0
    settings = _settings(nats_settings, num_bots=8, control_share=0.5, outcome_interval_s=0.2)
    async with running(serve, settings):
        bias = np.zeros(N_ACTIONS)
        bias[2] = 1.0
        update = msgspec.structs.replace(_bias_update(bias, ttl_s=60.0), advisors=["expert"])
        while control == 0 or advised == 0:
            await bus.publish(subjects.bias_subject("test", "a1"), update, kind="bias")  # per-bot: every episode anew
            outcome = await asyncio.wait_for(outcomes.get(), 20)
            control += outcome.control.episodes
            advised += outcome.advised["expert"].episodes if "expert" in outcome.advised else 0


async def test_digests_slow_to_the_probation_trickle_and_stop_when_the_router_trusts_no_advisor(
    bus: Bus, nats_settings: NatsSettings
) -> None:
    """The router's heartbeat names each advisor's reach: the actor asks only as often as the most trusted can use."""
    from tests.support import actor_heartbeat

    def router_heartbeat(reach: dict[str, float]) -> Any:
        beat = actor_heartbeat(created_at=time.time())
        return msgspec.structs.replace(beat, service="router", instance="r1", reach=reach)

    digests = await _digests(bus)
    subject = subjects.heartbeat_subject("test", "router", "r1")
    async with running(serve, _settings(nats_settings, digest_rate_per_s=200.0)), ChunkReader(bus) as chunks:
        await asyncio.wait_for(digests.get(), 20)  # asking at the full rate
        await bus.publish(subject, router_heartbeat({"expert": 0.25, "llm": 0.05}), kind="heartbeat")
        await wait_until(lambda: metrics.DIGEST_RATE._value.get() == 200.0)  # an advisor at its initial trust
        await bus.publish(subject, router_heartbeat({"expert": 0.05, "llm": 0.0}), kind="heartbeat")
        await wait_until(lambda: metrics.DIGEST_RATE._value.get() == 10.0)  # all on probation: a trickle
        await bus.publish(subject, router_heartbeat({"expert": 0.0, "llm": 0.0}), kind="heartbeat")
        await wait_until(lambda: metrics.DIGEST_RATE._value.get() == 0.0)
        await chunks.next()  # a chunk sampled after the change: digests chosen before it have arrived by its own
        while not digests.empty():
            digests.get_nowait()
        for _ in range(3):
            await chunks.next()
        assert digests.qsize() <= 1  # at most the one token left in the bucket


async def test_no_digests_go_out_while_no_live_advisor_reads_what_they_carry(
    bus: Bus, nats_settings: NatsSettings
) -> None:
    from tests.support import actor_heartbeat

    def advisor_heartbeat(instance: str, reads: list[str]) -> Any:
        beat = actor_heartbeat(created_at=time.time())
        return msgspec.structs.replace(beat, service="advisor", instance=instance, reads=reads)

    digests = await _digests(bus)
    settings = _settings(nats_settings, digest_full_state=False, digest_every_steps=1)
    async with running(serve, settings), ChunkReader(bus) as chunks:
        await asyncio.wait_for(digests.get(), 20)  # no advisor heard yet: it asks
        expert = advisor_heartbeat("expert-host", ["full_state"])  # these digests carry no full state
        await bus.publish(subjects.heartbeat_subject("test", "advisor", "expert-host"), expert, kind="heartbeat")
        await wait_until(lambda: metrics.ADVISORS_READING._value.get() == 0)
        await chunks.next()
        while not digests.empty():
            digests.get_nowait()
        for _ in range(2):
            await chunks.next()
        assert digests.empty()  # periodic digests every step, yet none sent
        llm = advisor_heartbeat("llm-host", ["text"])
        await bus.publish(subjects.heartbeat_subject("test", "advisor", "llm-host"), llm, kind="heartbeat")
        await asyncio.wait_for(digests.get(), 20)
        assert metrics.ADVISORS_READING._value.get() == 1
        # Heartbeats come from outside: however many advisors announce themselves, the actor remembers a bounded set.
        for index in range(MAX_ADVISORS + 36):
            ghost = advisor_heartbeat(f"ghost-{index}", ["observation"])
            await bus.publish(subjects.heartbeat_subject("test", "advisor", f"ghost-{index}"), ghost, kind="heartbeat")
        await wait_until(lambda: metrics.ADVISORS_READING._value.get() == MAX_ADVISORS)
        await chunks.next()
        assert metrics.ADVISORS_READING._value.get() == MAX_ADVISORS


async def test_chunks_carry_each_bots_full_state_only_where_asked(bus: Bus, nats_settings: NatsSettings) -> None:
    """`chunk_full_states`: every step's full state is in the chunk, the one each action was taken in; off, chunks
    carry none."""
    from ala.envs.minigrid_expert import AGENT

    async with AsyncExitStack() as stack:
        await stack.enter_async_context(running(serve, _settings(nats_settings, chunk_full_states=True)))
        chunks = await stack.enter_async_context(ChunkReader(bus))
        chunk = await chunks.next()
    assert chunk.full_states is not None
    full = chunk.full_states.to_numpy()
    assert full.dtype == np.uint8 and full.shape == (8, 2, 5, 5, 3)
    agent = full[:, :, :, :, 0] == AGENT
    assert (agent.sum(axis=(2, 3)) == 1).all()  # one agent in every recorded state
    direction = (full[:, :, :, :, 2].astype(int) * agent).sum(axis=(2, 3))
    actions, ended = chunk.actions.to_numpy(), chunk.terminated.to_numpy() | chunk.truncated.to_numpy()
    turns = 0
    for t in range(7):
        for bot in range(2):  # a turn shows in the next row: each row is the state its action was taken in
            if actions[t, bot] in (0, 1) and not ended[t, bot]:
                turns += 1
                assert direction[t + 1, bot] == (direction[t, bot] + (1 if actions[t, bot] == 1 else -1)) % 4
    assert turns > 0
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(running(serve, _settings(nats_settings, run="plain")))
        chunks = await stack.enter_async_context(ChunkReader(bus, run="plain"))
        assert (await chunks.next()).full_states is None
