"""Critical-state review of a recorded episode by the embedded model, through its grammar."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
from nats.aio.msg import Msg

from ala.bus import Bus
from ala.config import NatsSettings
from ala.envs import adapter_for
from ala.rl.trajectory import observation_key, to_chunk
from protos import decode, encode, subjects
from protos.messages import ImplicitReward
from services.advisor import metrics
from services.advisor.backends import EmbeddedBackend
from services.advisor.cache import AdviceCache
from services.advisor.review import CriticalStateReviewer, EpisodeAssembler
from services.advisor.service import serve
from services.advisor.settings import AdvisorSettings, advisor_spec
from tests.support import ENV_ID, actor_heartbeat, fresh_agent, rollout, running, spec, wait_until

ACTIONS = ["left", "right", "forward", "pickup", "drop", "toggle", "done"]


def test_episodes_are_assembled_across_chunks() -> None:
    source = rollout(fresh_agent(), bots=2, steps=4, max_steps=6)  # every episode is cut at 6 steps
    assembler = EpisodeAssembler()
    finished = []
    for _ in range(3):
        finished += assembler.add("a1", source.collect())
    assert len(finished) == 4 and all(len(e.steps) == 6 for e in finished)
    assert {e.bot for e in finished} == {0, 1}


async def test_review_of_a_recorded_episode_gives_valid_bounded_advice_and_rewards() -> None:
    source = rollout(fresh_agent(), bots=1, steps=12, max_steps=12)
    [episode] = EpisodeAssembler().add("a1", source.collect())
    reviewer = CriticalStateReviewer(
        EmbeddedBackend(advisor_spec(name="reviewer")),
        ACTIONS,
        adapter_for(ENV_ID).summarise,
        max_implicit_reward=0.05,
        run="test",
    )
    review = await reviewer.review(episode)
    assert 1 <= len(review.suggestions) <= 3 and len(review.rewards) == len(review.suggestions)
    cache = AdviceCache(capacity=10, max_distance=0, target_agreement=0.98, audit_rate=0.0)
    for (state, suggestion), reward in zip(review.suggestions, review.rewards, strict=True):
        assert 0 <= suggestion.action < len(ACTIONS)
        assert any(np.array_equal(state, step.observation) for step in episode.steps)
        assert abs(reward.reward) <= 0.05 and reward.state_key == observation_key(state)
        assert decode(encode(reward), ImplicitReward) == reward
        cache.store(state, suggestion)
        assert cache.lookup(state).suggestion == suggestion  # a future visit is advised without an LLM call


async def test_the_advisor_reviews_streamed_episodes_and_publishes_implicit_rewards(
    bus: Bus, nats_settings: NatsSettings
) -> None:
    rewards: asyncio.Queue[ImplicitReward] = asyncio.Queue()
    got_one = asyncio.Event()

    async def on_reward(msg: Msg) -> None:
        await rewards.put(decode(msg.data, ImplicitReward))
        got_one.set()

    await bus.subscribe(subjects.implicit_reward_subject("test"), on_reward)
    settings = AdvisorSettings(
        run="test",
        instance="adv1",
        metrics_host="127.0.0.1",
        metrics_port=0,
        nats=nats_settings,
        review=True,
        review_every_episodes=1,
    )
    source = rollout(fresh_agent(), bots=1, steps=8, max_steps=8)  # one finished episode per chunk
    async with running(serve, settings):
        seq = 0
        while not got_one.is_set():  # the review follows new chunks only: keep producing until one is reviewed
            await bus.publish(subjects.heartbeat_subject("test", "actor", "a1"), actor_heartbeat(policy=spec()), "hb")
            chunk = to_chunk(source.collect(), "test", "a1", seq)
            await bus.publish_durable(subjects.trajectory_subject("test", "a1"), encode(chunk), f"c{seq}", "traj")
            seq += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(got_one.wait(), 2.0)
        reward = await rewards.get()
    assert abs(reward.reward) <= settings.max_implicit_reward and reward.actor == "a1"
    assert metrics.REVIEWS._value.get() >= 1


async def test_chunks_from_an_env_without_text_are_skipped_and_counted(bus: Bus, nats_settings: NatsSettings) -> None:
    settings = AdvisorSettings(
        run="test", instance="adv1", metrics_host="127.0.0.1", metrics_port=0, nats=nats_settings, review=True
    )
    cartpole = fresh_agent(env_id="CartPole-v1")
    source = rollout(cartpole, bots=1, steps=8)
    skipped = metrics.REVIEW_SKIPPED.labels("no_text")
    before, reviews_before = skipped._value.get(), metrics.REVIEWS._value.get()
    async with running(serve, settings):
        heartbeat = actor_heartbeat(n_actions=2, policy=cartpole.spec)
        for seq in range(20):  # the review follows new chunks only: keep producing until one is skipped
            await bus.publish(subjects.heartbeat_subject("test", "actor", "a1"), heartbeat, "hb")
            chunk = to_chunk(source.collect(), "test", "a1", seq)
            await bus.publish_durable(subjects.trajectory_subject("test", "a1"), encode(chunk), f"cp{seq}", "traj")
            with contextlib.suppress(TimeoutError):
                await wait_until(lambda: skipped._value.get() > before, timeout_s=1.0)
                break
    assert skipped._value.get() > before and metrics.REVIEWS._value.get() == reviews_before
