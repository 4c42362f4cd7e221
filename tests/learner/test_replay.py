"""Prioritised replay for the critic: sampling by error, importance weights, and the policy left alone."""

from __future__ import annotations

import numpy as np
import torch

from ala.rl.learner import Learner
from ala.rl.replay import ValueReplay
from tests.support import ppo_settings, rollout, spec


def test_samples_are_drawn_by_error_and_weighted_back() -> None:
    replay = ValueReplay(capacity=100, obs_dim=2, alpha=1.0, beta=0.5, beta_updates=10, seed=0)
    errors = torch.tensor([0.0] * 99 + [10.0])
    replay.add(torch.zeros(100, 2), torch.zeros(100), errors)
    slots, weights = replay.sample(1000)
    assert (slots == 99).mean() > 0.9  # |10| + eps against 99 x eps
    assert float(weights.max()) <= 1.0 + 1e-6
    assert float(weights[torch.as_tensor(slots == 99)].max()) < float(weights.max())  # frequent ones count less
    for _ in range(10):
        replay.end_update()
    assert replay.beta == 1.0


def test_the_ring_keeps_the_newest_capacity_samples() -> None:
    replay = ValueReplay(capacity=4, obs_dim=1)
    replay.add(torch.arange(6.0)[:, None], torch.arange(6.0), torch.ones(6))
    assert replay.size == 4 and sorted(replay.targets.tolist()) == [2.0, 3.0, 4.0, 5.0]
    replay.add(torch.tensor([[9.0]]), torch.tensor([9.0]), torch.ones(1))
    assert sorted(replay.targets.tolist()) == [3.0, 4.0, 5.0, 9.0]


def test_replay_moves_the_critic_towards_its_targets_and_never_the_policy() -> None:
    learner = Learner(spec(), ppo_settings(value_replay=10_000, value_replay_steps=20))
    trajectory = rollout(learner.agent, seed=5).collect()
    trajectory.rewards[:] = 1.0  # targets far from a fresh critic's values
    batch = learner._prepare([trajectory])
    actor_before = [p.detach().clone() for p in learner.agent.actor.parameters()]
    critic_before = [p.detach().clone() for p in learner.agent.critic.parameters()]
    with torch.no_grad():
        error_before = float((batch.returns - learner.agent.get_value(batch.obs)).abs().mean())
    losses = learner._replay_value(batch)
    with torch.no_grad():
        error_after = float((batch.returns - learner.agent.get_value(batch.obs)).abs().mean())
    assert error_after < error_before and len(losses) == 20
    assert all(torch.equal(a, b) for a, b in zip(actor_before, learner.agent.actor.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(critic_before, learner.agent.critic.parameters(), strict=True))


def test_an_update_with_replay_reports_its_loss() -> None:
    learner = Learner(spec(), ppo_settings(value_replay=1000))
    stats = learner.train([rollout(learner.agent, seed=6).collect()])
    assert np.isfinite(stats["losses/replay_value_loss"]) and learner.replay is not None and learner.replay.size > 0
