"""Distillation: advice recorded (not applied) by the actor is pulled into the policy by the learner."""

from __future__ import annotations

import numpy as np
import torch

from ala.rl.learner import Learner
from ala.rl.trajectory import from_chunk, to_chunk
from tests.support import fresh_agent, ppo_settings, rollout, spec

FAVOURITE = 3


def _distilled_trajectory(advise: bool):  # type: ignore[no-untyped-def]
    """On-policy steps (no bias) with advice favouring one action recorded on every step, and no reward."""
    source = rollout(fresh_agent(), bots=4, steps=16)
    trajectory = source.new_trajectory()
    advice = np.full((4, 7), -0.3, dtype=np.float32)
    advice[:, FAVOURITE] = 1.8
    for t in range(16):
        source.step(trajectory, t, None, advice=advice if advise else None)
    source.finish(trajectory)
    trajectory.rewards[:] = 0  # nothing for PPO to learn: any change is the distillation's
    return trajectory


def _favourite_probability(learner: Learner, trajectory) -> float:  # type: ignore[no-untyped-def]
    obs = torch.as_tensor(np.array(trajectory.observations).reshape(-1, trajectory.observations.shape[-1]))
    with torch.no_grad():
        return float(learner.agent.get_action_and_value(obs).logprobs.exp()[:, FAVOURITE].mean())


def test_distillation_pulls_the_policy_towards_the_advice_and_anneals_away() -> None:
    advised = _distilled_trajectory(advise=True)
    assert advised.advice is not None and (advised.behaviour_logprob == advised.policy_logprob).all()
    advised = from_chunk(to_chunk(advised, "test", "a1", 0), spec())  # the advice survives the wire
    assert advised.advice is not None and advised.advice[0, 0, FAVOURITE] == np.float32(1.8)

    learner = Learner(spec(), ppo_settings(distill_coef=1.0, distill_horizon=1000))
    before = _favourite_probability(learner, advised)
    for _ in range(5):
        stats = learner.train([advised])
    assert stats["losses/distill"] > 0
    assert _favourite_probability(learner, advised) > before + 0.2

    plain = Learner(spec(), ppo_settings(distill_coef=1.0))
    unadvised = _distilled_trajectory(advise=False)
    plain_before = _favourite_probability(plain, unadvised)
    for _ in range(5):
        stats = plain.train([unadvised])
    assert "losses/distill" not in stats
    assert abs(_favourite_probability(plain, unadvised) - plain_before) < 0.1  # entropy and noise only

    annealed = Learner(spec(), ppo_settings(distill_coef=1.0, distill_horizon=10))
    annealed.version = 10
    assert annealed.distill_weight() == 0 and "losses/distill" not in annealed.train([advised])


def test_the_teacher_is_the_advised_action_not_the_softness_of_the_bounded_bias() -> None:
    """Advice recorded as a bias bounded by b_max (1.8 against -0.3: softmax puts ~0.6 on the favourite) teaches the
    favourite itself at the default temperature; at temperature 1 the policy stalls near that soft teacher."""
    advised = _distilled_trajectory(advise=True)
    settings = {"distill_coef": 1.0, "distill_horizon": 10_000, "target_kl": 0, "learning_rate": 3e-3}
    sharp = Learner(spec(), ppo_settings(**settings))
    soft = Learner(spec(), ppo_settings(**settings, distill_temperature=1))
    for _ in range(12):
        sharp.train([advised])
        soft.train([advised])
    assert _favourite_probability(soft, advised) < 0.7
    assert _favourite_probability(sharp, advised) > 0.9
