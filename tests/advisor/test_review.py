"""Critical-state review of a recorded episode by the embedded model, through its grammar, and by the planner."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest
from nats.aio.msg import Msg

from ala.bus import Bus
from ala.config import NatsSettings
from ala.envs import adapter_for
from ala.rl.trajectory import observation_key, to_chunk
from protos import Advice, decode, encode, subjects
from protos.messages import ImplicitReward
from services.advisor import metrics
from services.advisor.backends import BackendError, EmbeddedBackend
from services.advisor.cache import AdviceCache
from services.advisor.review import CriticalStateReviewer, Episode, EpisodeAssembler, PlannerReviewer, Step
from services.advisor.service import serve
from services.advisor.settings import AdvisorSettings, advisor_spec
from tests.advisor.test_advisor_service import _settings
from tests.support import ENV_ID, actor_heartbeat, fresh_agent, rollout, running, spec, wait_until

ACTIONS = ["left", "right", "forward", "pickup", "drop", "toggle", "done"]


def _review_settings(nats: NatsSettings, **overrides: object) -> AdvisorSettings:
    """The advisor service's test settings, reviewing, with an embedded LLM (the LLM review's reviewer)."""
    return _settings(nats, **({"review": True, "advisors": [advisor_spec(name="llm-0")]} | overrides))


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
    settings = _review_settings(nats_settings, review_every_episodes=1)
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
    settings = _review_settings(nats_settings)
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


def _planned_episode(mistakes: set[int]) -> tuple[Episode, dict[int, int]]:
    """An episode of DoorKey that follows the planner to the goal except at steps `mistakes`, where it takes `done`
    (a no-op: the goal comes no closer); with the planner's action at each mistake."""
    adapter = adapter_for(ENV_ID)
    env = adapter.make()
    obs, _ = env.reset(seed=1)
    episode, planned = Episode("a1", 0), {}
    for t in range(100):
        full_state, action = adapter.full_state(env), adapter.expert_action(env)
        assert action is not None
        if t in mistakes:
            planned[t], action = action, ACTIONS.index("done")
        episode.steps.append(Step(np.asarray(obs, np.float32).ravel(), action, 0.0, full_state))
        obs, reward, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            episode.steps[-1].reward, episode.terminated = float(reward), terminated
            break
    assert episode.terminated
    return episode, planned


def test_the_planner_names_the_steps_that_brought_the_goal_no_closer_and_the_action_it_would_take() -> None:
    episode, planned = _planned_episode({2, 5})
    review = PlannerReviewer(adapter_for(ENV_ID), max_critical=3, max_implicit_reward=0.05, run="test").review_now(
        episode
    )
    assert len(review.suggestions) == 2  # every other step followed the plan: no mistake there
    for (observation, suggestion), reward, t in zip(review.suggestions, review.rewards, (5, 2), strict=True):
        assert np.array_equal(observation, episode.steps[t].observation)  # the latest first among equal losses
        assert suggestion.action == planned[t]
        assert reward.action == ACTIONS.index("done") and reward.reward == pytest.approx(-0.025)  # one step lost
        assert reward.state_key == observation_key(observation)
    one = PlannerReviewer(adapter_for(ENV_ID), max_critical=1, max_implicit_reward=0.05, run="test")
    assert len(one.review_now(episode).suggestions) == 1
    # The last step is judged only where the goal followed it: not after the time limit, nor after a rewardless end.
    cut = Episode("a1", 0, episode.steps[:6])  # ends on the mistake at step 5
    for terminated in (False, True):
        cut.terminated = terminated
        review = PlannerReviewer(adapter_for(ENV_ID), 3, 0.05, "test").review_now(cut)
        assert [np.array_equal(o, cut.steps[2].observation) for o, _ in review.suggestions] == [True]
    garbled = Episode("a1", 0, [Step(s.observation, s.action, 0.0, np.zeros((5, 5), np.uint8)) for s in cut.steps])
    with pytest.raises(BackendError) as failed:  # a state the planner cannot read fails this review, nothing else
        one.review_now(garbled)
    assert failed.value.reason == "bad_state"
    for step in episode.steps:
        step.full_state = None
    with pytest.raises(BackendError, match="full states"):
        one.review_now(episode)


def test_a_missed_chunk_drops_the_actors_open_episodes_instead_of_joining_across_the_gap() -> None:
    source = rollout(fresh_agent(), bots=2, steps=4, max_steps=6)  # every episode is cut at 6 steps
    assembler = EpisodeAssembler()
    assert assembler.add("a1", source.collect(), chunk_seq=0) == []
    source.collect()  # chunk 1, never seen
    # Steps 8-11: both bots' episodes began at step 6, in the missed chunk; they end at step 11, unreviewed.
    assert assembler.add("a1", source.collect(), chunk_seq=2) == []
    assert assembler.dropped == 2
    assembler.add("a1", source.collect(), chunk_seq=3)
    finished = assembler.add("a1", source.collect(), chunk_seq=4)  # the episodes of steps 12-17, whole
    assert len(finished) == 2 and all(len(episode.steps) == 6 for episode in finished)


async def test_the_planner_reviews_streamed_episodes_and_publishes_its_advice_and_implicit_rewards(
    bus: Bus, nats_settings: NatsSettings
) -> None:
    """With `review_by = "planner"` and no advisor at all: chunks with full states are reviewed, the suggested
    actions go out as advice about the critical observations, and the implicit rewards to the learner."""
    advice: asyncio.Queue[Advice] = asyncio.Queue()
    rewards: asyncio.Queue[ImplicitReward] = asyncio.Queue()

    async def on_advice(msg: Msg) -> None:
        await advice.put(decode(msg.data, Advice))

    async def on_reward(msg: Msg) -> None:
        await rewards.put(decode(msg.data, ImplicitReward))

    await bus.subscribe(subjects.advice_subject("test", "review-planner"), on_advice)
    await bus.subscribe(subjects.implicit_reward_subject("test"), on_reward)
    settings = _review_settings(
        nats_settings, advisors=[], review_by="planner", review_every_episodes=1, review_advice=True
    )
    adapter = adapter_for(ENV_ID)
    source = rollout(fresh_agent(), bots=1, steps=8, max_steps=8)  # one finished episode per chunk
    # Every (observation key, action taken) met, with the planner's action in that exact state.
    steps: dict[tuple[str, int], set[int]] = {}
    async with running(serve, settings):
        for seq in range(100):  # the review follows new chunks only: produce until one is reviewed
            await bus.publish(subjects.heartbeat_subject("test", "actor", "a1"), actor_heartbeat(policy=spec()), "hb")
            trajectory = source.new_trajectory()
            for t in range(8):  # as the actor records them with chunk_full_states
                planned = adapter.expert_action(source.env(0))
                key = observation_key(source.obs[0])
                source.step(trajectory, t, None, full_states=np.stack([adapter.full_state(source.env(0))]))
                steps.setdefault((key, int(trajectory.actions[t, 0])), set()).add(-1 if planned is None else planned)
            chunk = to_chunk(source.finish(trajectory), "test", "a1", seq)
            await bus.publish_durable(subjects.trajectory_subject("test", "a1"), encode(chunk), f"p{seq}", "traj")
            with contextlib.suppress(TimeoutError):
                await wait_until(lambda: not advice.empty() and not rewards.empty(), timeout_s=2.0)
                break
        first_advice, reward = await advice.get(), await rewards.get()
    assert first_advice.advisor == "review-planner" and first_advice.target.actor == "a1"
    assert first_advice.ttl_s == settings.review_advice_ttl_s
    # The advice names a state met, with the planner's action there, where the bot did something else; the implicit
    # reward names a step as taken, not the planner's.
    assert any(
        key == first_advice.target.state_key and first_advice.recommended_action in planned and taken not in planned
        for (key, taken), planned in steps.items()
    )
    assert -settings.max_implicit_reward <= reward.reward < 0
    assert reward.action not in steps[(reward.state_key, reward.action)]
