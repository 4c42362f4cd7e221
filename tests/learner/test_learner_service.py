"""The learner service against a real broker: exact equality with the local update, exactly-once training,
rejection of bad chunks, and resumption from a checkpoint."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sys
from pathlib import Path

import msgspec
import numpy as np
import onnxruntime
import torch
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from ala.broker import EmbeddedBroker
from ala.bus import Bus
from ala.config import NatsSettings
from ala.metrics import bus_metrics
from ala.rl.learner import Learner
from ala.rl.onnx_policy import OPSET, ProbeOutput, probe_output
from ala.rl.policy import Agent, load_weights
from ala.rl.trajectory import Trajectory, to_chunk
from protos import Array, WeightsAnnouncement, decode, encode, subjects
from protos.messages import TrajectoryChunk
from services.learner import metrics
from services.learner.service import serve
from services.learner.settings import LearnerSettings
from tests.support import actor_heartbeat, free_port, rollout, running, scrape, spec, wait_until


def _settings(nats: NatsSettings, tmp_path: Path, **overrides: object) -> LearnerSettings:
    values: dict[str, object] = {
        "nats": nats,
        "metrics_host": "127.0.0.1",
        "metrics_port": 0,
        "checkpoint_dir": tmp_path / "checkpoints",
        "fetch_timeout_s": 0.1,
        "seed": 3,
        "run": "test",
        "instance": "l1",
    }
    return LearnerSettings(**(values | overrides))


async def _announcements(bus: Bus) -> asyncio.Queue[WeightsAnnouncement]:
    queue: asyncio.Queue[WeightsAnnouncement] = asyncio.Queue()

    last: list[WeightsAnnouncement] = []

    async def on_weights(msg: Msg) -> None:
        announcement = decode(msg.data, WeightsAnnouncement)
        same_weights = last and (last[-1].version, last[-1].sha256) == (announcement.version, announcement.sha256)
        if same_weights and announcement.settled_stream_seq > last[-1].settled_stream_seq:
            return  # training progress without new weights (flow control), not a new version
        last.append(announcement)
        await queue.put(announcement)

    await bus.subscribe(subjects.weights_subject("test"), on_weights)
    await bus.nc.flush()
    return queue


async def _next_version(queue: asyncio.Queue[WeightsAnnouncement]) -> WeightsAnnouncement:
    return await asyncio.wait_for(queue.get(), 30)


async def _start_training(bus: Bus, queue: asyncio.Queue[WeightsAnnouncement]) -> WeightsAnnouncement:
    """Play the actor's part: heartbeat with the policy spec until the learner announces its first weights."""
    heartbeat = actor_heartbeat(policy=spec())
    async with asyncio.timeout(30):
        while True:
            await bus.publish(subjects.heartbeat_subject("test", "actor", "a1"), heartbeat, kind="heartbeat")
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(queue.get(), 0.2)


async def _publish(bus: Bus, chunk: TrajectoryChunk | bytes, msg_id: str) -> None:
    payload = chunk if isinstance(chunk, bytes) else encode(chunk)
    await bus.publish_durable(subjects.trajectory_subject("test", "a1"), payload, msg_id, kind="trajectory")


def _chunk(trajectory: Trajectory, seq: int) -> TrajectoryChunk:
    return to_chunk(trajectory, "test", "a1", seq)


def _zero_lag_trajectory(settings: LearnerSettings, seed: int = 0) -> Trajectory:
    """Sampled by the learner's version-0 policy (same seed, same initial weights) without bias."""
    return rollout(Learner(spec(), settings).agent, seed=seed).collect()


async def _weights(bus: Bus, announcement: WeightsAnnouncement) -> torch.Tensor:
    store = await bus.js.object_store(announcement.bucket)
    agent = Agent(spec())
    load_weights(agent, (await store.get(announcement.name)).data or b"")
    return torch.cat([p.detach().flatten() for p in agent.parameters()])


async def _weights_after_one_update(bus: Bus, settings: LearnerSettings, trajectory: Trajectory) -> torch.Tensor:
    """Start the learner service, hand it `trajectory` as one chunk, and read the weights of version 1."""
    announcements = await _announcements(bus)
    async with running(serve, settings):
        assert (await _start_training(bus, announcements)).version == 0
        await _publish(bus, _chunk(trajectory, 1), "test.a1.1")
        after = await _next_version(announcements)
    assert after.version == 1
    return await _weights(bus, after)


async def test_distributed_update_equals_local_update(bus: Bus, nats_settings: NatsSettings, tmp_path: Path) -> None:
    settings = _settings(nats_settings, tmp_path)
    trajectory = _zero_lag_trajectory(settings)
    local = Learner(spec(), settings)
    local.train([trajectory])
    expected = torch.cat([p.detach().flatten() for p in local.agent.parameters()])

    torch.testing.assert_close(await _weights_after_one_update(bus, settings, trajectory), expected, atol=1e-6, rtol=0)


async def test_onnx_models_are_exported_only_while_an_actor_runs_onnx(
    bus: Bus, nats_settings: NatsSettings, tmp_path: Path
) -> None:
    """`onnx_export=auto`: no export (and its ~20 ms per version) for actors running torch; once an actor says it
    runs ONNX, the next version comes with its model."""
    settings = _settings(nats_settings, tmp_path)
    assert settings.onnx_export == "auto"
    announcements = await _announcements(bus)
    async with running(serve, settings):
        first = await _start_training(bus, announcements)  # the test's heartbeats say nothing of ONNX
        onnx_actor = msgspec.structs.replace(actor_heartbeat(policy=spec(), instance="jetson"), policy_backend="onnx")
        await bus.publish(subjects.heartbeat_subject("test", "actor", "jetson"), onnx_actor, kind="heartbeat")
        await bus.nc.flush()
        await _publish(bus, _chunk(_zero_lag_trajectory(settings), 1), "test.a1.1")
        second = await _next_version(announcements)
    assert first.onnx is None and second.onnx is not None


async def test_every_published_version_comes_with_its_onnx_model(
    bus: Bus, nats_settings: NatsSettings, tmp_path: Path
) -> None:
    """Exported, loadable by onnxruntime, and computing what the announced torch weights compute (to 1e-5) on random
    observations; the announced probe output is the torch policy's."""
    settings = _settings(nats_settings, tmp_path, onnx_export="always")
    announcements = await _announcements(bus)
    async with running(serve, settings):
        versions = [await _start_training(bus, announcements)]
        await _publish(bus, _chunk(_zero_lag_trajectory(settings), 1), "test.a1.1")
        versions.append(await _next_version(announcements))
    obs = np.random.default_rng(0).integers(0, 11, (20, 147)).astype(np.float32)
    store = await bus.js.object_store(subjects.WEIGHTS_BUCKET)
    for announcement in versions:
        exported = announcement.onnx
        assert exported is not None and exported.name == f"test/{announcement.version}.onnx"
        assert exported.opset == OPSET
        model = (await store.get(exported.name)).data or b""
        assert len(model) == exported.size and hashlib.sha256(model).hexdigest() == exported.sha256
        agent = Agent(spec())
        load_weights(agent, (await store.get(announcement.name)).data or b"")
        session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
        logits, values = session.run(["logits", "value"], {"obs": obs})
        with torch.inference_mode():
            torch_logits, torch_values = agent.logits_and_value(torch.from_numpy(obs))
        np.testing.assert_allclose(logits, torch_logits.numpy(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(values, torch_values.numpy(), rtol=0, atol=1e-5)
        announced, expected = ProbeOutput.from_wire(exported, spec()), probe_output(agent)
        np.testing.assert_allclose(announced.logits, expected.logits, rtol=0, atol=1e-6)
        np.testing.assert_allclose(announced.values, expected.values, rtol=0, atol=1e-6)
    assert versions[0].onnx is not None and versions[1].onnx is not None
    assert versions[0].onnx.sha256 != versions[1].onnx.sha256


async def test_a_chunk_delivered_twice_is_trained_once(bus: Bus, nats_settings: NatsSettings, tmp_path: Path) -> None:
    settings = _settings(nats_settings, tmp_path)
    first, second = _zero_lag_trajectory(settings, 0), _zero_lag_trajectory(settings, 1)
    duplicates, samples = metrics.CHUNKS_DUPLICATE._value.get(), metrics.SAMPLES._value.get()
    announcements = await _announcements(bus)
    async with running(serve, settings):
        await _start_training(bus, announcements)
        await _publish(bus, _chunk(first, 1), "test.a1.1")
        # The same chunk under another message id: what a redelivery past the duplicate window looks like.
        await _publish(bus, _chunk(first, 1), "test.a1.1-again")
        await _publish(bus, _chunk(second, 2), "test.a1.2")
        assert (await _next_version(announcements)).version == 1
        assert (await _next_version(announcements)).version == 2
    assert metrics.CHUNKS_DUPLICATE._value.get() - duplicates == 1
    assert metrics.SAMPLES._value.get() - samples == 2 * first.num_steps


async def test_each_version_is_stamped_with_the_env_steps_of_every_chunk_behind_it(
    bus: Bus, nats_settings: NatsSettings, tmp_path: Path
) -> None:
    """The evaluator reports this number as the version's env steps: it must be the trained chunks' steps exactly,
    per actor, each chunk once however often it is delivered."""
    settings = _settings(nats_settings, tmp_path, chunks_per_batch=1)
    trajectories = [_zero_lag_trajectory(settings, seed) for seed in range(3)]
    announcements = await _announcements(bus)
    async with running(serve, settings):
        assert (await _start_training(bus, announcements)).env_steps == 0
        await _publish(bus, _chunk(trajectories[0], 1), "test.a1.1")
        first = await _next_version(announcements)
        await _publish(bus, _chunk(trajectories[0], 1), "test.a1.1-again")  # a redelivery: not counted twice
        await _publish(bus, to_chunk(trajectories[1], "test", "a2", 1), "test.a2.1")
        second = await _next_version(announcements)
        await _publish(bus, to_chunk(trajectories[2], "test", "a2", 2), "test.a2.2")
        third = await _next_version(announcements)
    steps = [t.num_steps for t in trajectories]
    assert (first.version, first.env_steps, first.env_steps_by_actor) == (1, steps[0], {"a1": steps[0]})
    assert (second.version, second.env_steps) == (2, steps[0] + steps[1])
    assert third.env_steps_by_actor == {"a1": steps[0], "a2": steps[1] + steps[2]}
    assert third.env_steps == sum(steps)


async def test_bad_chunks_are_rejected_counted_and_never_trained(
    bus: Bus, nats_settings: NatsSettings, tmp_path: Path
) -> None:
    settings = _settings(nats_settings, tmp_path)
    good = _chunk(_zero_lag_trajectory(settings), 10)
    rewards = np.full((16, 4), np.nan, dtype=np.float32)
    bad = {
        "decode": b"\x93not a chunk",
        "non_finite": msgspec.structs.replace(good, chunk_seq=11, rewards=Array.from_numpy(rewards)),
        "shape": msgspec.structs.replace(good, chunk_seq=12, values=Array.from_numpy(np.zeros(3, np.float32))),
        "unknown_version": msgspec.structs.replace(good, chunk_seq=13, policy_version=50),
    }
    before = {reason: metrics.CHUNKS_REJECTED.labels(reason)._value.get() for reason in bad}
    announcements = await _announcements(bus)
    async with running(serve, settings):
        await _start_training(bus, announcements)
        for reason, chunk in bad.items():
            await _publish(bus, chunk, f"bad-{reason}")
        await _publish(bus, good, "good")
        assert (await _next_version(announcements)).version == 1
    for reason in bad:
        assert metrics.CHUNKS_REJECTED.labels(reason)._value.get() - before[reason] == 1, reason


async def test_undecodable_heartbeats_and_implicit_rewards_are_counted_and_dropped(
    bus: Bus, nats_settings: NatsSettings, tmp_path: Path
) -> None:
    settings = _settings(nats_settings, tmp_path, implicit_rewards=True)
    heartbeats, rewards = metrics.UNDECODABLE.labels("heartbeat"), metrics.UNDECODABLE.labels("implicit_reward")
    before = heartbeats._value.get(), rewards._value.get()
    heartbeat_subject = subjects.heartbeat_subject("test", "actor", "a1")
    announcements = await _announcements(bus)
    async with running(serve, settings):
        # Still waiting for its first actor: repeat until the just-started learner has subscribed and counted one.
        for _ in range(200):
            await bus.publish_bytes(heartbeat_subject, b"\x93 no heartbeat", kind="heartbeat")
            with contextlib.suppress(TimeoutError):
                await wait_until(lambda: heartbeats._value.get() > before[0], timeout_s=0.1)
                break
        assert heartbeats._value.get() > before[0]
        # Version 0 announced: it subscribed to heartbeats and implicit rewards before publishing it, and it had
        # handled every garbage heartbeat above before the good one that started it.
        assert (await _start_training(bus, announcements)).version == 0
        waiting = heartbeats._value.get()
        await bus.publish_bytes(heartbeat_subject, b"\x93 no heartbeat", kind="heartbeat")
        await bus.publish_bytes(subjects.implicit_reward_subject("test"), b"\x93 no reward", kind="implicit_reward")
        await wait_until(lambda: heartbeats._value.get() > waiting and rewards._value.get() > before[1])
        await _publish(bus, _chunk(_zero_lag_trajectory(settings), 1), "test.a1.1")
        assert (await _next_version(announcements)).version == 1  # still training
    assert heartbeats._value.get() == waiting + 1 and rewards._value.get() == before[1] + 1


async def test_restart_resumes_from_checkpoint_and_remembers_trained_chunks(
    bus: Bus, nats_settings: NatsSettings, tmp_path: Path
) -> None:
    settings = _settings(nats_settings, tmp_path, checkpoint_every=1)
    first, second = _zero_lag_trajectory(settings, 0), _zero_lag_trajectory(settings, 1)
    announcements = await _announcements(bus)
    async with running(serve, settings):
        await _start_training(bus, announcements)
        await _publish(bus, _chunk(first, 1), "test.a1.1")
        trained = await _next_version(announcements)
    assert (settings.checkpoint_dir / "test" / "latest.pt").exists()

    duplicates = metrics.CHUNKS_DUPLICATE._value.get()
    async with running(serve, settings):
        resumed = await _start_training(bus, announcements)
        assert resumed.version == 1 and resumed.sha256 == trained.sha256
        await _publish(bus, _chunk(first, 1), "test.a1.1-redelivered")
        await _publish(bus, _chunk(second, 2), "test.a1.2")
        assert (await _next_version(announcements)).version == 2
    assert metrics.CHUNKS_DUPLICATE._value.get() - duplicates == 1


async def test_a_trained_chunk_is_acknowledged_only_after_its_checkpoint(
    bus: Bus, nats_settings: NatsSettings, tmp_path: Path
) -> None:
    settings = _settings(nats_settings, tmp_path, checkpoint_every=2)
    first, second = _zero_lag_trajectory(settings, 0), _zero_lag_trajectory(settings, 1)
    trained = metrics.CHUNKS_TRAINED._value.get()
    announcements = await _announcements(bus)
    async with running(serve, settings):
        await _start_training(bus, announcements)
        await _publish(bus, _chunk(first, 1), "test.a1.1")
        assert (await _next_version(announcements)).version == 1  # published at once, for the actors
        assert metrics.CHUNKS_TRAINED._value.get() == trained + 1
        consumer = await bus.js.consumer_info(subjects.TRAJECTORIES.name, "learner-test")
        assert consumer.num_ack_pending == 1  # trained, not yet checkpointed: not acknowledged
        assert not (settings.checkpoint_dir / "test" / "latest.pt").exists()
        await _publish(bus, _chunk(second, 2), "test.a1.2")
        assert (await _next_version(announcements)).version == 2
        await wait_until(lambda: (settings.checkpoint_dir / "test" / "latest.pt").exists())
        consumer = await bus.js.consumer_info(subjects.TRAJECTORIES.name, "learner-test")
        assert consumer.num_ack_pending == 0 and (settings.checkpoint_dir / "test" / "latest.pt").exists()


async def _learner_process(env: dict[str, str], port: int, log: Path) -> asyncio.subprocess.Process:
    with log.open("w") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ala", "learner", env=env | {"ALA_LEARNER_METRICS_PORT": str(port)}, stderr=out
        )


def test_a_learner_killed_before_its_checkpoint_loses_no_chunk_and_trains_none_twice(
    nats_server: EmbeddedBroker, tmp_path: Path
) -> None:
    """kill -9 after an update and before the checkpoint that would acknowledge it: the chunk comes back to the
    restarted learner, which trains it, and the next one, once each."""
    env = dict(
        os.environ,
        ALA_RUN="test",
        ALA_NATS_URL=nats_server.url,
        ALA_LEARNER_CHECKPOINT_DIR=str(tmp_path / "checkpoints"),
        ALA_LEARNER_CHECKPOINT_EVERY="2",
        ALA_LEARNER_ACK_WAIT_S="2",
        ALA_LEARNER_SEED="3",
        ALA_LEARNER_FETCH_TIMEOUT_S="0.1",
    )
    settings = _settings(NatsSettings(url=nats_server.url), tmp_path)
    chunks = [_chunk(_zero_lag_trajectory(settings, seed), seq) for seq, seed in ((1, 0), (2, 1))]
    samples_per_chunk = int(np.prod(chunks[0].actions.shape))
    ports = free_port(), free_port()

    async def scenario() -> None:
        bus = await Bus.connect(NatsSettings(url=nats_server.url), "test", bus_metrics("t", CollectorRegistry()))
        await bus.provision()
        announcements = await _announcements(bus)
        first = await _learner_process(env, ports[0], tmp_path / "first.log")
        await _start_training(bus, announcements)
        await _publish(bus, chunks[0], "test.a1.1")
        await wait_until(lambda: scrape(ports[0]).get("ala_learner_chunks_trained_total[]") == 1)
        first.kill()  # SIGKILL: between the update and the checkpoint that would acknowledge it
        await first.wait()
        second = await _learner_process(env, ports[1], tmp_path / "second.log")
        try:
            while (await _start_training(bus, announcements)).version != 0:
                pass  # the killed learner's announcements: the new one starts again from version 0
            await _publish(bus, chunks[1], "test.a1.2")
            version = await _next_version(announcements)
            while version.version < 2:
                version = await _next_version(announcements)
            assert version.env_steps == 2 * samples_per_chunk  # both chunks, once each
            counters = scrape(ports[1])
            assert counters["ala_learner_chunks_trained_total[]"] == 2
            assert counters["ala_learner_chunks_duplicate_total[]"] == 0
        finally:
            second.terminate()
            await second.wait()
            await bus.drain()

    asyncio.run(scenario())
