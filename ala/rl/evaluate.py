"""Score a policy alone (no bias) on a fixed set of held-out env seeds: one episode per seed, all seeds stepped
together as one vector env, with sampled and with greedy actions. No NATS here; the evaluator service wires it."""

from __future__ import annotations

import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from ala.envs import EnvAdapter
from ala.rl.policy import Agent

HELD_OUT_SEED = 1_000_000
"""Evaluation seeds start here, far from the actors' training seeds."""


@dataclass(frozen=True)
class Score:
    mean_return: float
    success_rate: float
    """Share of episodes with a positive return (MiniGrid: reached the goal)."""


@dataclass(frozen=True)
class EvaluationResult:
    sampled: Score
    greedy: Score | None
    """None when greedy play was not asked for."""
    episodes: int
    seconds: float


def evaluate(agent: Agent, adapter: EnvAdapter, episodes: int, seed: int = 0, greedy: bool = True) -> EvaluationResult:
    start = time.perf_counter()
    envs = adapter.make_vector(episodes)
    try:
        sampled = _play(agent, envs, greedy=False, seed=seed)
        greedy_score = _play(agent, envs, greedy=True, seed=seed) if greedy else None
    finally:
        envs.close()
    return EvaluationResult(sampled, greedy_score, episodes, time.perf_counter() - start)


def _play(agent: Agent, envs: gym.vector.VectorEnv, greedy: bool, seed: int) -> Score:
    """The first episode of every env, seeded `HELD_OUT_SEED + i`."""
    count = envs.num_envs
    obs, _ = envs.reset(seed=[HELD_OUT_SEED + i for i in range(count)])
    returns, done = np.zeros(count), np.zeros(count, dtype=bool)
    generator = torch.Generator().manual_seed(seed)
    while not done.all():
        with torch.inference_mode():
            logits, _ = agent.logits_and_value(torch.as_tensor(np.asarray(obs, dtype=np.float32)))
            actions = logits.argmax(-1) if greedy else torch.multinomial(logits.softmax(-1), 1, generator=generator)
        obs, rewards, terminated, truncated, _ = envs.step(actions.reshape(-1).numpy())
        returns += np.where(done, 0.0, rewards)
        done |= terminated | truncated
    return Score(float(returns.mean()), float((returns > 0).mean()))
