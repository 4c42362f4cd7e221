"""The count-based exploration bonus: Laplace-smoothed counts, decaying with visits, bounded, and added at admission."""

from __future__ import annotations

import numpy as np
import pytest

from ala.rl.exploration import TransitionCounts
from ala.rl.learner import Learner
from ala.rl.trajectory import to_chunk
from protos import encode
from services.learner.admission import Admission, Admitted
from services.learner.checkpoint import TrainedChunks
from services.learner.implicit import ImplicitRewards
from services.learner.steps import EnvStepLedger
from tests.support import ppo_settings, rollout, spec


def test_a_new_transition_gets_beta_over_sqrt_alpha_and_repeats_get_less() -> None:
    learner = Learner(spec(), ppo_settings())
    trajectory = rollout(learner.agent, seed=0).collect()
    counts = TransitionCounts(beta=0.1, alpha=0.5)
    bonus_sums = []
    for _ in range(3):  # the same transitions again: each pass finds them counted more often
        again = trajectory
        again.rewards = np.zeros_like(trajectory.rewards)
        bonus_sums.append(counts.add_bonus(again))
        rewards = again.rewards[:-1]
        assert rewards.max() <= 0.1 / np.sqrt(0.5) + 1e-6  # the bound: a never-seen transition
        assert (again.rewards[-1] == 0).all()  # the last step's next observation is in the next chunk
    assert bonus_sums[0] > bonus_sums[1] > bonus_sums[2] > 0
    steps = trajectory.actions.shape[0] - 1
    assert counts.counts.sum() == 3 * steps * trajectory.actions.shape[1]


def test_repeats_inside_one_chunk_count_as_if_one_at_a_time() -> None:
    learner = Learner(spec(), ppo_settings())
    trajectory = rollout(learner.agent, seed=1).collect()
    trajectory.observations[:] = trajectory.observations[0, 0]  # one state, one action, never done
    trajectory.actions[:] = 0
    trajectory.terminated[:] = False
    trajectory.truncated[:] = False
    trajectory.rewards = np.zeros_like(trajectory.rewards)
    TransitionCounts(beta=1.0, alpha=1.0).add_bonus(trajectory)
    seen = np.sort(trajectory.rewards[:-1].ravel())[::-1]
    expected = 1.0 / np.sqrt(np.arange(seen.size) + 1.0)  # 1/sqrt(0+1), 1/sqrt(1+1), ...
    np.testing.assert_allclose(seen, expected, rtol=1e-5)


def test_zero_beta_adds_nothing_and_bad_parameters_are_refused() -> None:
    learner = Learner(spec(), ppo_settings())
    trajectory = rollout(learner.agent, seed=2).collect()
    before = trajectory.rewards.copy()
    assert TransitionCounts(beta=0.0).add_bonus(trajectory) == 0.0
    np.testing.assert_array_equal(trajectory.rewards, before)
    with pytest.raises(ValueError, match="alpha > 0"):
        TransitionCounts(beta=0.1, alpha=0.0)


def test_admission_adds_the_bonus_to_the_rewards_it_trains_on() -> None:
    learner = Learner(spec(), ppo_settings())
    trajectory = rollout(learner.agent, seed=3).collect()
    admission = Admission(
        "test", 2, learner, TrainedChunks(), EnvStepLedger(), ImplicitRewards(0.05), TransitionCounts(beta=0.01)
    )
    admitted = admission.check(encode(to_chunk(trajectory, "test", "a1", 1)))
    assert isinstance(admitted, Admitted)
    added = admitted.trajectory.rewards - trajectory.rewards
    assert (added[:-1] > 0).all() and (added[-1] == 0).all()
