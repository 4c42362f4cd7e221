"""The evaluator: the policy alone on held-out seeds, reproducible, published for everyone to read."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from pathlib import Path

import imageio_ffmpeg
import msgspec
import pytest
from nats.aio.msg import Msg

from ala.bus import Bus
from ala.config import NatsSettings
from ala.envs import adapter_for
from ala.rl.evaluate import evaluate, record_episode
from ala.rl.policy import weights_to_bytes
from protos import Evaluation, decode, subjects
from services.evaluator import metrics
from services.evaluator.service import serve
from services.evaluator.settings import EvaluatorSettings
from tests.support import ENV_ID, actor_heartbeat, fresh_agent, running, store_weights, wait_until


def test_evaluation_is_reproducible_and_bounded() -> None:
    agent, adapter = fresh_agent(seed=4), adapter_for(ENV_ID)
    first, second = evaluate(agent, adapter, episodes=6, seed=1), evaluate(agent, adapter, episodes=6, seed=1)
    assert (first.sampled, first.greedy) == (second.sampled, second.greedy)
    for score in (first.sampled, first.greedy):
        assert 0.0 <= score.mean_return <= 1.0 and 0.0 <= score.success_rate <= 1.0
    assert first.episodes == 6


async def test_the_evaluator_scores_announced_weights_and_publishes_them(
    bus: Bus, nats_settings: NatsSettings, tmp_path: Path
) -> None:
    agent = fresh_agent(seed=6)
    data = weights_to_bytes(agent)
    evaluations: asyncio.Queue[Evaluation] = asyncio.Queue()

    async def on_evaluation(msg: Msg) -> None:
        await evaluations.put(decode(msg.data, Evaluation))

    await bus.subscribe(subjects.evaluation_subject("test"), on_evaluation)
    settings = EvaluatorSettings(
        run="test",
        instance="e1",
        nats=nats_settings,
        metrics_host="127.0.0.1",
        metrics_port=0,
        episodes=4,
        video_dir=tmp_path,
    )
    videos = metrics.VIDEOS.labels("written")._value.get()
    async with running(serve, settings):
        announcement = await store_weights(bus, 3, data, policy=agent.spec, env_steps=1234)
        # Actors' heartbeats say more steps: the evaluation reports the steps behind the version it scored.
        heartbeat = msgspec.structs.replace(actor_heartbeat(policy=agent.spec), env_steps=5000)
        evaluation = None
        async with asyncio.timeout(60):
            while evaluation is None:  # until the evaluator has subscribed and answered
                await bus.publish(subjects.heartbeat_subject("test", "actor", "a1"), heartbeat, kind="heartbeat")
                await bus.publish(subjects.weights_subject("test"), announcement, kind="weights")
                with contextlib.suppress(TimeoutError):
                    evaluation = await asyncio.wait_for(evaluations.get(), 1.0)
        # The first evaluation is also recorded, after it is published.
        await wait_until(lambda: metrics.VIDEOS.labels("written")._value.get() > videos, timeout_s=60)
    assert (tmp_path / "test" / "v000003.mp4").stat().st_size > 0
    expected = evaluate(agent, adapter_for(ENV_ID), episodes=4, seed=0)
    assert evaluation.policy_version == 3 and evaluation.episodes == 4
    assert evaluation.env_steps == 1234  # the steps behind version 3, not the actors' latest heartbeat

    assert evaluation.mean_return == expected.sampled.mean_return
    assert evaluation.greedy_return == expected.greedy.mean_return
    assert metrics.RETURN.labels("sampled")._value.get() == expected.sampled.mean_return
    assert metrics.POLICY_VERSION._value.get() == 3


def test_a_recorded_episode_is_a_video_with_a_frame_per_step(tmp_path: Path) -> None:
    agent = fresh_agent(seed=4)
    episode = record_episode(agent, adapter_for(ENV_ID), tmp_path / "v1.mp4")
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(episode.path))
    assert frames == episode.steps + 1  # the reset's frame, then one per step
    assert list(tmp_path.iterdir()) == [episode.path]  # RecordVideo's own folder is gone


def test_a_video_dir_without_moviepy_stops_the_evaluator_with_the_install_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "moviepy" else find_spec(name))
    with pytest.raises(ValueError, match=r"pip install 'ala\[video\]'"):
        EvaluatorSettings(video_dir=tmp_path)
