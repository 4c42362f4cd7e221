"""The rollout worker without NATS: the source's bias is what the bots sample with, and every episode is reported."""

from __future__ import annotations

import asyncio

import numpy as np

from ala.rl.policy import Agent
from ala.rl.rollout import Episode
from ala.rl.worker import NoAdvice, StepAdvice, collect_chunk
from tests.support import rollout, spec


class AlwaysAction:
    """A source that pins every bot to one action with a huge bias, and records what the worker reports."""

    def __init__(self, n_actions: int, bots: int, action: int) -> None:
        self.bias = np.zeros((bots, n_actions), np.float32)
        self.bias[:, action] = 50.0
        self.steps = 0
        self.episodes: list[Episode] = []

    def before_step(self) -> StepAdvice:
        return StepAdvice(self.bias, advised=np.ones(self.bias.shape[0], np.bool_))

    async def after_step(self, finished: list[Episode]) -> None:
        self.steps += 1
        self.episodes += finished


def test_the_sources_bias_decides_the_behaviour_and_is_recorded() -> None:
    agent = Agent(spec())
    source = AlwaysAction(agent.spec.n_actions, bots=4, action=2)
    trajectory = asyncio.run(collect_chunk(rollout(agent, bots=4, steps=16), source))
    assert source.steps == 16
    assert (trajectory.actions == 2).all()
    np.testing.assert_array_equal(trajectory.bias[0], source.bias)
    assert trajectory.advised is not None and trajectory.advised.all()
    # The behaviour log-prob is the biased one (about 0); the policy's own is not.
    assert (trajectory.behaviour_logprob > -1e-3).all() and (trajectory.policy_logprob < -0.1).all()


def test_every_finished_episode_reaches_the_source_once() -> None:
    agent = Agent(spec())
    source = AlwaysAction(agent.spec.n_actions, bots=2, action=0)
    source.bias[:] = 0  # the policy alone, over enough steps for episodes to end (DoorKey-5x5: 250 steps at most)
    worker_rollout = rollout(agent, bots=2, steps=300)
    trajectory = asyncio.run(collect_chunk(worker_rollout, source))
    ends = int((trajectory.terminated | trajectory.truncated).sum())
    assert ends >= 2 and len(source.episodes) == ends
    assert worker_rollout.finished == []


def test_no_advice_samples_the_policy_alone() -> None:
    agent = Agent(spec())
    trajectory = asyncio.run(collect_chunk(rollout(agent, bots=2, steps=8), NoAdvice()))
    assert not trajectory.bias.any() and trajectory.advised is None
    np.testing.assert_allclose(trajectory.behaviour_logprob, trajectory.policy_logprob, atol=1e-6)
