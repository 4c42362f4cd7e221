from __future__ import annotations

import dataclasses

import msgspec
import numpy as np
import pytest
import torch

from ala.rl.learner import Learner
from ala.rl.trajectory import BadChunk, from_chunk, to_chunk
from protos import Array, decode, encode
from protos.messages import TrajectoryChunk
from tests.support import biased_trajectory, fresh_agent, ppo_settings, rollout, spec


def _params(learner: Learner) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in learner.agent.parameters()])


def test_chunk_round_trip_keeps_every_array() -> None:
    trajectory = biased_trajectory(fresh_agent())
    chunk = decode(encode(to_chunk(trajectory, "test", "a1", 7)), TrajectoryChunk)
    restored = from_chunk(chunk, spec())
    for name in ("observations", "actions", "bias", "behaviour_logprob", "final_values", "bootstrap_value"):
        np.testing.assert_array_equal(getattr(restored, name), getattr(trajectory, name))
    assert restored.policy_version == trajectory.policy_version


def test_the_advised_mask_travels_as_one_byte_a_step_and_chunks_without_it_still_decode() -> None:
    trajectory = biased_trajectory(fresh_agent())
    assert trajectory.advised is None
    plain = to_chunk(trajectory, "test", "a1", 7)
    assert plain.advised is None and from_chunk(decode(encode(plain), TrajectoryChunk), spec()).advised is None
    trajectory.advised = np.zeros(trajectory.actions.shape, dtype=np.bool_)
    trajectory.advised[2:5, 1] = True
    chunk = to_chunk(trajectory, "test", "a1", 7)
    assert chunk.advised is not None and chunk.advised.dtype == "|b1"
    assert len(encode(chunk)) - len(encode(plain)) < trajectory.advised.size + 32
    restored = from_chunk(decode(encode(chunk), TrajectoryChunk), spec())
    assert restored.advised is not None and restored.advised.dtype == np.bool_
    np.testing.assert_array_equal(restored.advised, trajectory.advised)


def test_full_states_travel_only_when_recorded() -> None:
    trajectory = biased_trajectory(fresh_agent())
    assert to_chunk(trajectory, "test", "a1", 7).full_states is None
    trajectory.full_states = np.random.default_rng(0).integers(0, 11, (16, 4, 5, 5, 3), dtype=np.uint8)
    restored = from_chunk(decode(encode(to_chunk(trajectory, "test", "a1", 7)), TrajectoryChunk), spec())
    assert restored.full_states is not None
    np.testing.assert_array_equal(restored.full_states, trajectory.full_states)


def test_minigrid_codes_travel_as_uint8_and_come_back_as_the_float32_the_policy_saw() -> None:
    trajectory = biased_trajectory(fresh_agent())
    wide = len(
        encode(
            msgspec.structs.replace(
                to_chunk(trajectory, "test", "a1", 7), observations=Array.from_numpy(trajectory.observations)
            )
        )
    )
    chunk = to_chunk(trajectory, "test", "a1", 7)
    assert chunk.observations.dtype == "|u1" and len(encode(chunk)) < 0.5 * wide
    restored = from_chunk(decode(encode(chunk), TrajectoryChunk), spec())
    assert restored.observations.dtype == np.float32
    np.testing.assert_array_equal(restored.observations, trajectory.observations)


@pytest.mark.parametrize("value", [0.5, 256.0, -1.0])
def test_observations_that_are_not_small_integer_codes_stay_float32(value: float) -> None:
    trajectory = biased_trajectory(fresh_agent())
    trajectory.observations[3, 1, 0] = value
    chunk = to_chunk(trajectory, "test", "a1", 7)
    assert chunk.observations.dtype == "<f4"
    np.testing.assert_array_equal(from_chunk(chunk, spec()).observations, trajectory.observations)


def _chunk_with(field: str, array: np.ndarray) -> TrajectoryChunk:
    chunk = to_chunk(biased_trajectory(fresh_agent()), "test", "a1", 1)
    return msgspec.structs.replace(decode(encode(chunk), TrajectoryChunk), **{field: Array.from_numpy(array)})


@pytest.mark.parametrize(
    ("field", "make", "reason"),
    [
        ("rewards", lambda: np.full((16, 4), np.nan, np.float32), "non_finite"),
        ("observations", lambda: np.zeros((16, 4, 10), np.float32), "shape"),
        ("actions", lambda: np.full((16, 4), 99, np.int64), "action_range"),
        ("actions", lambda: np.zeros((16, 4), np.int32), "shape"),
        ("behaviour_logprob", lambda: np.full((16, 4), 0.5, np.float32), "logprob"),
        ("bootstrap_value", lambda: np.zeros(3, np.float32), "shape"),
        ("advised", lambda: np.zeros((16, 3), np.bool_), "shape"),
        ("advised", lambda: np.zeros((16, 4), np.uint8), "shape"),
        ("full_states", lambda: np.zeros((16, 3, 5, 5, 3), np.uint8), "shape"),
        ("full_states", lambda: np.zeros((16, 4), np.uint8), "shape"),
        ("full_states", lambda: np.zeros((16, 4, 5, 5, 3), np.float32), "shape"),
    ],
)
def test_bad_chunks_are_refused_with_a_reason(field: str, make, reason: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BadChunk) as refused:
        from_chunk(_chunk_with(field, make()), spec())
    assert refused.value.reason == reason


def test_corrections_agree_without_bias_and_lag() -> None:
    """With zero bias and zero lag, exact, shortcut and none are the same PPO update."""
    trajectory = rollout(fresh_agent()).collect()
    assert not trajectory.bias.any()
    results = []
    for correction in ("exact", "shortcut", "none"):
        learner = Learner(spec(), ppo_settings(correction=correction))
        stats = learner.train([trajectory])
        results.append(_params(learner))
        if correction == "exact":
            assert stats["is/weight_mean"] == pytest.approx(1.0, abs=1e-5)
            assert stats["is/fraction_truncated"] == 0.0
    torch.testing.assert_close(results[0], results[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(results[0], results[2], atol=1e-6, rtol=0)


def test_exact_and_shortcut_differ_with_bias() -> None:
    learner = Learner(spec(), ppo_settings())
    trajectory = biased_trajectory(learner.agent, scale=3.0)
    exact = Learner(spec(), ppo_settings(correction="exact"))
    shortcut = Learner(spec(), ppo_settings(correction="shortcut"))
    stats = exact.train([trajectory])
    shortcut.train([trajectory])
    assert stats["is/weight_max"] > 1.5  # the bias moved mu well away from pi
    assert (_params(exact) - _params(shortcut)).abs().max() > 1e-4


def test_stale_data_is_detected_by_version() -> None:
    learner = Learner(spec(), ppo_settings(max_policy_lag=2))
    trajectory = rollout(learner.agent).collect()
    learner.version = 2
    assert not learner.is_stale(trajectory)
    learner.version = 3
    assert learner.is_stale(trajectory)


def test_checkpoint_restores_the_exact_training_state() -> None:
    trajectory = rollout(fresh_agent()).collect()
    original = Learner(spec(), ppo_settings())
    original.train([trajectory])
    saved = original.checkpoint()
    resumed = Learner(spec(), ppo_settings(seed=99))
    resumed.restore(saved)
    assert resumed.version == 1
    original.train([trajectory])
    resumed.train([trajectory])
    torch.testing.assert_close(_params(original), _params(resumed), atol=0, rtol=0)


def test_vtrace_advantages_train_with_finite_statistics() -> None:
    learner = Learner(spec(), ppo_settings(advantage="vtrace"))
    stats = learner.train([biased_trajectory(learner.agent)])
    assert all(np.isfinite(value) for key, value in stats.items() if key != "losses/explained_variance")
    assert learner.version == 1 and learner.samples_trained == 64


def test_implicit_rewards_are_added_to_matching_steps_and_bounded() -> None:
    from ala.rl.trajectory import observation_key
    from protos import ImplicitReward
    from services.learner.implicit import ImplicitRewards

    trajectory = rollout(fresh_agent()).collect()
    before = trajectory.rewards.copy()
    obs, action = trajectory.observations[3, 1], int(trajectory.actions[3, 1])
    implicit = ImplicitRewards(max_reward=0.05)
    implicit.add(
        ImplicitReward(
            run="test",
            actor="a1",
            bot=1,
            state_key=observation_key(obs),
            observation=Array.from_numpy(obs),
            action=action,
            reward=10.0,  # far beyond the bound: clipped to 0.05
            source="test",
            created_at=0.0,
        )
    )
    matched = implicit.apply(trajectory)
    same = [
        (t, b)
        for t in range(16)
        for b in range(4)
        if np.array_equal(trajectory.observations[t, b], obs) and trajectory.actions[t, b] == action
    ]
    assert matched == len(same) >= 1
    for t, b in same:
        assert trajectory.rewards[t, b] == pytest.approx(before[t, b] + 0.05)
    assert np.count_nonzero(trajectory.rewards != before) == matched


def test_a_floor_on_the_advantage_normaliser_lets_the_entropy_bonus_outweigh_critic_noise() -> None:
    """No reward anywhere: advantages are only the critic's noise. Normalised to unit size, the noise outweighs the
    entropy bonus (and Adam makes steps of the same size whatever the scale); under a floor above its spread the
    bonus leads, so the policy's entropy is higher after the same updates."""
    trajectory = rollout(fresh_agent(), bots=4, steps=16).collect()
    trajectory.rewards[:] = 0
    obs = torch.as_tensor(np.array(trajectory.observations).reshape(-1, trajectory.observations.shape[-1]))
    entropy = {}
    for floor in (0.0, 10.0):
        learner = Learner(spec(), ppo_settings(adv_norm_floor=floor))
        for _ in range(5):
            learner.train([trajectory])
        with torch.no_grad():
            entropy[floor] = float(learner.agent.get_action_and_value(obs).entropy.mean())
    assert entropy[10.0] > entropy[0.0]


def test_the_advised_floor_applies_only_to_batches_advice_touched() -> None:
    """Without advice the update is plain PPO's, floor or no floor; with a bias on the taken actions the advised
    floor (above the critic noise's spread) changes it."""
    unadvised = rollout(fresh_agent(), bots=4, steps=16).collect()
    advised = biased_trajectory(fresh_agent())
    for trajectory in (unadvised, advised):
        trajectory.rewards[:] = 0  # only critic noise: its spread is far below the floor
    assert not unadvised.bias.any() and advised.bias.any()
    params = {}
    for name, trajectory in (("unadvised", unadvised), ("advised", advised)):
        for floor in (0.0, 10.0):
            learner = Learner(spec(), ppo_settings(adv_norm_floor_advised=floor))
            learner.train([trajectory])
            params[name, floor] = _params(learner)
    torch.testing.assert_close(params["unadvised", 0.0], params["unadvised", 10.0], atol=0, rtol=0)
    assert not torch.equal(params["advised", 0.0], params["advised", 10.0])


def test_a_batch_whose_only_advice_is_a_zero_bias_gets_the_advised_floor() -> None:
    """The null-advice arm: a zero bias leaves `bias` all zero, and only the actor's `advised` mask shows that
    advice was in force. With the mask the advised floor applies, exactly as on a batch with a real bias."""
    trajectory = rollout(fresh_agent(), bots=4, steps=16).collect()
    trajectory.rewards[:] = 0  # only critic noise: its spread is far below the floor
    assert not trajectory.bias.any() and trajectory.advised is None
    null_advised = dataclasses.replace(trajectory, advised=np.zeros(trajectory.actions.shape, dtype=np.bool_))
    null_advised.advised[3, 2] = True  # one step with advice in force is enough
    learner = Learner(spec(), ppo_settings(adv_norm_floor=0.0, adv_norm_floor_advised=0.1))
    assert learner.advantage_floor(learner._prepare([trajectory])) == 0.0
    assert learner.advantage_floor(learner._prepare([null_advised])) == 0.1
    unmarked = dataclasses.replace(null_advised, advised=np.zeros_like(null_advised.advised))
    assert learner.advantage_floor(learner._prepare([trajectory, unmarked])) == 0.0
    assert learner.advantage_floor(learner._prepare([trajectory, null_advised])) == 0.1
    params = {}
    for floor in (0.0, 10.0):
        learner = Learner(spec(), ppo_settings(adv_norm_floor_advised=floor))
        learner.train([null_advised])
        params[floor] = _params(learner)
    assert not torch.equal(params[0.0], params[10.0])  # the floor reached the update


def test_target_kl_stops_an_update_once_the_policy_has_moved_that_far() -> None:
    trajectory = rollout(fresh_agent()).collect()
    eager = Learner(spec(), ppo_settings(learning_rate=0.05, target_kl=0))
    careful = Learner(spec(), ppo_settings(learning_rate=0.05, target_kl=0.01))
    eager_stats, careful_stats = eager.train([trajectory]), careful.train([trajectory])
    assert eager_stats["losses/minibatch_steps"] == 16 and eager_stats["losses/stopped"] == 0
    assert careful_stats["losses/stopped"] == 1 and 1 <= careful_stats["losses/minibatch_steps"] < 16
    assert careful_stats["losses/approx_kl_max"] < eager_stats["losses/approx_kl_max"]


def test_the_learning_rate_anneals_linearly_to_zero_over_the_samples_trained() -> None:
    trajectory = rollout(fresh_agent()).collect()  # 64 samples
    learner = Learner(spec(), ppo_settings(anneal_lr_samples=128, learning_rate=1e-3))
    rates = [learner.train([trajectory])["policy/learning_rate"] for _ in range(2)]
    assert rates == pytest.approx([1e-3, 5e-4])
    before = _params(learner)
    assert learner.train([trajectory])["policy/learning_rate"] == 0.0
    torch.testing.assert_close(_params(learner), before, atol=0, rtol=0)  # nothing left to learn with


def test_observation_statistics_travel_in_the_weights_so_actors_normalise_as_the_learner_trained() -> None:
    from ala.rl.policy import Agent, load_weights, weights_to_bytes

    cartpole = spec("CartPole-v1")
    trajectory = rollout(fresh_agent(env_id="CartPole-v1"), steps=64).collect()
    learner = Learner(cartpole, ppo_settings(normalize_obs=True))
    learner.train([trajectory])
    observations = np.asarray(trajectory.observations).reshape(-1, cartpole.obs_dim)
    np.testing.assert_allclose(learner.agent.obs_mean.numpy(), observations.mean(0), atol=1e-5)
    np.testing.assert_allclose(learner.agent.obs_std.numpy(), observations.std(0), rtol=1e-3)
    actor = Agent(cartpole)
    load_weights(actor, weights_to_bytes(learner.agent))
    obs = torch.as_tensor(observations[:8])
    torch.testing.assert_close(actor.logits_and_value(obs), learner.agent.logits_and_value(obs))
    resumed = Learner(cartpole, ppo_settings(normalize_obs=True))
    resumed.restore(learner.checkpoint())
    assert resumed.agent.obs_moments[0] == len(observations)
    minigrid = Learner(spec(), ppo_settings(normalize_obs=True))  # one-hot codes: nothing to normalise
    minigrid.train([rollout(fresh_agent()).collect()])
    assert not minigrid.agent.obs_mean.any() and torch.isinf(minigrid.agent.obs_clip)


def test_rewards_are_scaled_by_the_running_std_of_the_discounted_return() -> None:
    learner = Learner(spec(), ppo_settings(normalize_reward=True, gamma=0.5))
    rewards = np.array([[1.0], [1.0], [0.0], [2.0]], dtype=np.float32)
    ends = np.array([[False], [True], [False], [False]])
    scaled = learner.scaled_rewards(rewards, ends, np.array([7]))
    # discounted returns 1, 1.5 (episode ends), then 0, 2: their std scales every reward
    assert np.allclose(scaled, rewards / np.std([1.0, 1.5, 0.0, 2.0]))
    assert learner._discounted[7] == 2.0  # carried into the bot's next chunk
    stats = learner.train([rollout(fresh_agent()).collect()])
    assert np.isfinite(stats["losses/value_loss"])
    resumed = Learner(spec(), ppo_settings(normalize_reward=True))
    resumed.restore(learner.checkpoint())
    assert resumed.return_scale.state() == learner.return_scale.state()
