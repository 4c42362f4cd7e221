from __future__ import annotations

import numpy as np
import pytest
import torch

from ala.rl.policy import resolve_device
from tests.support import fresh_agent, rollout


def test_recorded_logprobs_are_those_of_the_sampled_distribution() -> None:
    agent = fresh_agent()
    source = rollout(agent, bots=4, steps=16)
    rng = np.random.default_rng(0)
    trajectory = source.collect(lambda: rng.uniform(-2, 2, (4, 7)).astype(np.float32))
    obs = torch.from_numpy(trajectory.observations.reshape(64, -1))
    bias = torch.from_numpy(trajectory.bias.reshape(64, -1))
    actions = torch.from_numpy(trajectory.actions.reshape(64))
    with torch.no_grad():
        logits, values = agent.logits_and_value(obs)
    mu = torch.log_softmax(logits + bias, -1).gather(1, actions[:, None]).squeeze(1)
    pi = torch.log_softmax(logits, -1).gather(1, actions[:, None]).squeeze(1)
    np.testing.assert_allclose(trajectory.behaviour_logprob.reshape(64), mu.numpy(), atol=1e-5)
    np.testing.assert_allclose(trajectory.policy_logprob.reshape(64), pi.numpy(), atol=1e-5)
    np.testing.assert_allclose(trajectory.values.reshape(64), values.numpy(), atol=1e-5)
    assert (trajectory.behaviour_logprob != trajectory.policy_logprob).any()


def test_without_bias_behaviour_equals_policy() -> None:
    trajectory = rollout(fresh_agent()).collect()
    np.testing.assert_array_equal(trajectory.behaviour_logprob, trajectory.policy_logprob)
    assert not trajectory.bias.any()


def test_truncated_episodes_bootstrap_from_their_final_observation() -> None:
    agent = fresh_agent()
    source = rollout(agent, bots=3, steps=12, max_steps=5)  # every episode hits the time limit at step 5
    trajectory = source.collect()
    cut = trajectory.truncated & ~trajectory.terminated
    assert cut[4].all() and cut[9].all()
    assert (trajectory.final_values[cut] != 0).all() and not trajectory.final_values[~cut].any()
    assert [e.length for e in source.finished] == [5] * 6
    # After the time limit, the next row is a fresh episode's first observation, not the final one.
    assert not np.array_equal(trajectory.observations[5], trajectory.observations[4])


def test_same_seed_same_rollout() -> None:
    first = rollout(fresh_agent(), seed=5).collect()
    second = rollout(fresh_agent(), seed=5).collect()
    np.testing.assert_array_equal(first.actions, second.actions)
    np.testing.assert_array_equal(first.observations, second.observations)


def test_with_an_onnx_model_installed_the_rollout_samples_from_its_logits() -> None:
    """The torch agent and the ONNX model are different policies here, so the recorded log-probabilities and values
    show whose output the rollout sampled from: the model's, and exactly its logits (+ bias)."""
    from ala.rl.onnx_policy import OnnxPolicy, export

    torch_agent, onnx_agent = fresh_agent(seed=3), fresh_agent(seed=4)
    with torch.no_grad():
        onnx_agent.actor[-1].weight.mul_(100.0)  # logits far from torch_agent's
    model = OnnxPolicy.load(export(onnx_agent), onnx_agent.spec)
    source = rollout(torch_agent, bots=4, steps=16)
    source.set_policy(torch_agent, 1, model)
    rng = np.random.default_rng(0)
    trajectory = source.collect(lambda: rng.uniform(-2, 2, (4, 7)).astype(np.float32))
    obs = trajectory.observations.reshape(64, -1)
    logits, values = (torch.from_numpy(array) for array in model.run(obs))
    bias = torch.from_numpy(trajectory.bias.reshape(64, -1))
    actions = torch.from_numpy(trajectory.actions.reshape(64))[:, None]
    mu = torch.log_softmax(logits + bias, -1).gather(1, actions).squeeze(1)
    pi = torch.log_softmax(logits, -1).gather(1, actions).squeeze(1)
    np.testing.assert_allclose(trajectory.behaviour_logprob.reshape(64), mu.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(trajectory.policy_logprob.reshape(64), pi.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(trajectory.values.reshape(64), values.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(trajectory.bootstrap_value, model.run(source.obs)[1], rtol=0, atol=1e-6)
    with torch.no_grad():
        torch_pi = torch_agent.get_action_and_value(torch.from_numpy(obs), action=actions[:, 0]).policy_logprob
    assert np.abs(torch_pi.numpy() - pi.numpy()).max() > 0.1  # the torch agent would have recorded other numbers


def test_asking_for_cuda_without_it_fails_with_a_sentence_and_auto_falls_back() -> None:
    """A Jetson overlay that forced cuda on a CPU-only torch crashed deep in the first forward; now it is refused at
    start with what to do, and `auto` runs where CUDA is missing."""
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
        return
    with pytest.raises(ValueError, match="has no CUDA device: install a CUDA build of torch"):
        resolve_device("cuda:0")
    assert resolve_device("auto") == torch.device("cpu")
