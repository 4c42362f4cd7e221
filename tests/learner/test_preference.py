"""The reward model from preferences: Bradley-Terry learns the ranking, the shaping is potential-based and bounded,
bad rankings are refused, the learner listens and counts; and the KL penalty holds an update closer to the policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ala.bus import Bus
from ala.config import NatsSettings
from ala.rl.learner import Learner
from ala.rl.preference import PreferenceReward
from protos import Array, Preference, encode, subjects
from services.learner import metrics
from services.learner.service import serve
from tests.learner.test_learner_service import _announcements, _settings, _start_training
from tests.support import ppo_settings, rollout, running, spec, wait_until


def _observations(count: int = 64) -> np.ndarray:
    trajectory = rollout(Learner(spec(), ppo_settings()).agent, bots=4, steps=count // 4).collect()
    return trajectory.observations.reshape(-1, spec().obs_dim)


def _progress(observations: np.ndarray) -> np.ndarray:
    """A ground truth for the test: the sum of the observation's codes."""
    return observations.sum(-1)


def test_bradley_terry_learns_which_states_the_ranker_prefers() -> None:
    observations = _observations()
    model = PreferenceReward(spec(), scale=0.1, gamma=0.99, steps=200)
    rng = np.random.default_rng(0)
    for _ in range(256):
        i, j = rng.choice(len(observations), 2, replace=False)
        if _progress(observations[i]) != _progress(observations[j]):
            model.add(observations[i], observations[j], int(_progress(observations[j]) > _progress(observations[i])))
    before = model.potential(observations)
    model.fit()
    after = model.potential(observations)
    truth = _progress(observations)
    agreement = np.mean([(after[i] > after[j]) == (truth[i] > truth[j]) for i, j in rng.integers(0, 64, (500, 2))
                         if truth[i] != truth[j]])  # fmt: skip
    assert agreement > 0.85
    assert np.abs(after).max() <= 0.1 and not np.allclose(before, after)


def test_shaping_is_gamma_phi_next_minus_phi_where_the_chunk_knows_the_next_state() -> None:
    trajectory = rollout(Learner(spec(), ppo_settings()).agent, bots=4, steps=16, max_steps=5).collect()
    trajectory.terminated = trajectory.terminated.copy()
    trajectory.truncated = trajectory.truncated.copy()
    trajectory.terminated[6, 0], trajectory.truncated[6, 0] = True, False
    model = PreferenceReward(spec(), scale=0.2, gamma=0.9)
    untouched = trajectory.rewards.copy()
    trajectory.rewards = untouched.copy()
    assert model.shape(trajectory) == 0.0 and (trajectory.rewards == untouched).all()  # no ranking yet: nothing
    observations = trajectory.observations
    model.add(observations[0, 0], observations[1, 1], 1)
    model.fit()
    shaped = model.shape(trajectory)
    phi = model.potential(observations)
    added = trajectory.rewards - untouched
    for t in range(16):
        for n in range(4):
            if trajectory.terminated[t, n]:
                expected = -phi[t, n]
            elif trajectory.truncated[t, n] or t == 15:
                expected = 0.0
            else:
                expected = 0.9 * phi[t + 1, n] - phi[t, n]
            assert added[t, n] == pytest.approx(expected, abs=1e-6)
    assert shaped == pytest.approx(np.abs(added).sum(), rel=1e-5) and shaped > 0
    assert np.abs(added).max() <= 2 * 0.2


def test_rankings_that_do_not_fit_the_policy_are_refused() -> None:
    model = PreferenceReward(spec(), scale=0.1, gamma=0.99)
    good = np.zeros(spec().obs_dim, dtype=np.float32)
    with pytest.raises(ValueError, match="finite"):
        model.add(good[:-1], good, 0)
    with pytest.raises(ValueError, match="finite"):
        model.add(good, np.full_like(good, np.nan), 0)
    with pytest.raises(ValueError, match="preferred"):
        model.add(good, good, 2)
    assert model.size == 0 and model.fit() is None


def test_a_kl_penalty_keeps_the_update_closer_to_the_policy_it_started_from() -> None:
    moved = []
    for kl_coef in (0.0, 5.0):
        learner = Learner(spec(), ppo_settings(kl_coef=kl_coef, target_kl=0.0, learning_rate=3e-3, num_epochs=8))
        trajectory = rollout(learner.agent, seed=1).collect()
        trajectory.rewards = np.random.default_rng(0).normal(size=trajectory.rewards.shape).astype(np.float32)
        obs = torch.as_tensor(trajectory.observations.reshape(-1, spec().obs_dim))
        with torch.no_grad():
            before = learner.agent.logits_and_value(obs)[0].log_softmax(-1)
        learner.train([trajectory])
        with torch.no_grad():
            after = learner.agent.logits_and_value(obs)[0].log_softmax(-1)
        moved.append(float((before.exp() * (before - after)).sum(-1).mean()))
    assert moved[1] < 0.7 * moved[0]


async def test_the_learner_keeps_rankings_that_fit_and_counts_those_that_do_not(
    bus: Bus, nats_settings: NatsSettings, tmp_path: Path
) -> None:
    settings = _settings(nats_settings, tmp_path, preference_reward=0.1)
    kept, refused = metrics.PREFERENCES.labels("kept"), metrics.PREFERENCES.labels("refused")
    before = kept._value.get(), refused._value.get()
    announcements = await _announcements(bus)
    observation = Array.from_numpy(np.zeros(spec().obs_dim, dtype=np.float32))

    def ranking(first: Array) -> bytes:
        return encode(
            Preference(run="test", actor="a1", query=1, first=first, second=observation, preferred=1, source="expert",
                       created_at=0.0)
        )  # fmt: skip

    async with running(serve, settings):
        await _start_training(bus, announcements)  # subscribed before it announced version 0
        await bus.publish_bytes(subjects.preference_subject("test"), ranking(observation), kind="preference")
        wrong = Array.from_numpy(np.zeros(3, dtype=np.float32))
        await bus.publish_bytes(subjects.preference_subject("test"), ranking(wrong), kind="preference")
        await wait_until(lambda: kept._value.get() > before[0] and refused._value.get() > before[1])
    assert (kept._value.get(), refused._value.get()) == (before[0] + 1, before[1] + 1)
