"""Small real rollouts for learner and actor tests (MiniGrid DoorKey-5x5, a few bots, a few steps)."""

from __future__ import annotations

import numpy as np
import torch

from ala.policy import Agent, PolicySpec
from ala.trajectory import Trajectory
from services.actor.envs import make_vector_env, policy_spec_of
from services.actor.rollout import Rollout
from services.learner.settings import LearnerSettings

ENV_ID = "MiniGrid-DoorKey-5x5-v0"


def spec() -> PolicySpec:
    return policy_spec_of(ENV_ID)


def learner_settings(**overrides: object) -> LearnerSettings:
    values: dict[str, object] = {"env_id": ENV_ID, "seed": 3, "run": "test", "instance": "l1"}
    return LearnerSettings(**(values | overrides))


def rollout(agent: Agent, bots: int = 4, steps: int = 16, seed: int = 0, **env_kwargs: object) -> Rollout:
    return Rollout(make_vector_env(ENV_ID, bots, **env_kwargs), agent, steps, seed)


def biased_trajectory(agent: Agent, seed: int = 0, scale: float = 2.0) -> Trajectory:
    """A trajectory sampled with a random bias on every step."""
    rng = np.random.default_rng(seed)
    source = rollout(agent, seed=seed)
    return source.collect(
        lambda: rng.uniform(-scale, scale, (source.num_bots, agent.spec.n_actions)).astype(np.float32)
    )


def fresh_agent(seed: int = 3) -> Agent:
    torch.manual_seed(seed)
    return Agent(spec())
