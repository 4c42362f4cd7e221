"""PPO maths against plain reference loops, and the importance-weight identities the learner relies on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ala.rl import ppo
from ala.rl.policy import Agent
from protos import PolicySpec


def _episode_data(seed: int, steps: int = 123, bots: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    terminated = torch.rand(steps, bots, generator=g) < 0.05
    truncated = (torch.rand(steps, bots, generator=g) < 0.05) & ~terminated
    return {
        "rewards": torch.randn(steps, bots, generator=g),
        "values": torch.randn(steps, bots, generator=g),
        "bootstrap": torch.randn(bots, generator=g),
        "final_values": torch.where(truncated, torch.randn(steps, bots, generator=g), torch.zeros(steps, bots)),
        "terminated": terminated,
        "truncated": truncated,
    }


def _reference_gae(d: dict[str, torch.Tensor], gamma: float, lam: float) -> np.ndarray:
    """The textbook scalar loop, one bot at a time."""
    rewards, values = d["rewards"].numpy(), d["values"].numpy()
    steps, bots = rewards.shape
    advantages = np.zeros((steps, bots))
    for bot in range(bots):
        running = 0.0
        for t in reversed(range(steps)):
            if d["terminated"][t, bot]:
                next_value, running = 0.0, 0.0
            elif d["truncated"][t, bot]:
                next_value, running = float(d["final_values"][t, bot]), 0.0
            else:
                next_value = float(values[t + 1, bot]) if t + 1 < steps else float(d["bootstrap"][bot])
            delta = rewards[t, bot] + gamma * next_value - values[t, bot]
            running = delta + gamma * lam * running
            advantages[t, bot] = running
    return advantages


def _next(d: dict[str, torch.Tensor]) -> torch.Tensor:
    return ppo.next_values(d["values"], d["bootstrap"], d["terminated"], d["truncated"], d["final_values"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_matches_reference_loop_with_terminations_and_truncations(seed: int) -> None:
    d = _episode_data(seed)
    ends = d["terminated"] | d["truncated"]
    advantages = ppo.gae(d["rewards"], d["values"], _next(d), ends, gamma=0.99, lam=0.95)
    np.testing.assert_allclose(advantages.numpy(), _reference_gae(d, 0.99, 0.95), rtol=1e-5, atol=1e-5)


def test_vtrace_on_policy_equals_lambda_one_returns() -> None:
    d = _episode_data(3)
    ends = d["terminated"] | d["truncated"]
    vs, _ = ppo.vtrace(d["rewards"], d["values"], _next(d), ends, torch.zeros_like(d["values"]), gamma=0.99)
    expected = _reference_gae(d, 0.99, 1.0) + d["values"].numpy()
    np.testing.assert_allclose(vs.numpy(), expected, rtol=1e-5, atol=1e-4)


def test_vtrace_truncates_large_ratios() -> None:
    d = _episode_data(4)
    ends = d["terminated"] | d["truncated"]
    huge = torch.full_like(d["values"], 5.0)  # pi/mu = e^5 everywhere
    vs_huge, adv_huge = ppo.vtrace(d["rewards"], d["values"], _next(d), ends, huge, gamma=0.99)
    vs_one, adv_one = ppo.vtrace(d["rewards"], d["values"], _next(d), ends, torch.zeros_like(huge), gamma=0.99)
    torch.testing.assert_close(vs_huge, vs_one)
    torch.testing.assert_close(adv_huge, adv_one)


def _agent_and_states(seed: int, n_actions: int = 7) -> tuple[Agent, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    agent = Agent(PolicySpec(env_id="test", family="gym", obs_dim=10, n_actions=n_actions, hidden=16))
    with torch.no_grad():  # a sharper policy than the near-uniform initialisation
        agent.actor[-1].weight.mul_(300)
    obs = torch.randn(64, 10)
    bias = torch.empty(64, n_actions).uniform_(-3, 3)
    return agent, obs, bias


def _all_action_logprobs(agent: Agent, obs: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, A] behaviour and policy log-probabilities, as the actor records them, for every action."""
    columns = [
        agent.get_action_and_value(obs, bias, action=torch.full((obs.shape[0],), a)) for a in range(bias.shape[1])
    ]
    return torch.stack([c.behaviour_logprob for c in columns], 1), torch.stack([c.policy_logprob for c in columns], 1)


def test_recorded_probabilities_give_unit_expected_weight() -> None:
    """E_mu[pi/mu] = sum_a mu(a) pi(a)/mu(a) = 1 exactly, for random logits and random biases."""
    agent, obs, bias = _agent_and_states(0)
    with torch.no_grad():
        behaviour, policy = _all_action_logprobs(agent, obs, bias)
    expected_weight = (behaviour.exp() * torch.exp(policy - behaviour)).sum(1)
    torch.testing.assert_close(expected_weight, torch.ones(64), atol=1e-5, rtol=0)
    torch.testing.assert_close(behaviour.exp().sum(1), torch.ones(64), atol=1e-5, rtol=0)


def test_sampled_weights_average_one() -> None:
    agent, obs, bias = _agent_and_states(1)
    g = torch.Generator().manual_seed(0)
    weights = []
    with torch.no_grad():
        for _ in range(200):
            sample = agent.get_action_and_value(obs, bias, generator=g)
            weights.append(torch.exp(sample.policy_logprob - sample.behaviour_logprob))
    mean = torch.stack(weights).mean()
    assert abs(float(mean) - 1.0) < 0.05


def test_shortcut_differs_from_exact_by_the_log_partition_gap() -> None:
    agent, obs, bias = _agent_and_states(2)
    with torch.no_grad():
        behaviour, policy = _all_action_logprobs(agent, obs, bias)
        logits, _ = agent.logits_and_value(obs)
    exact_log_ratio = policy - behaviour  # log pi/mu at pi_new = pi_old
    shortcut_log_ratio = torch.log(ppo.shortcut_ratio(policy, policy, bias))  # = -bias[a]
    gap = ppo.exact_log_partition_gap(logits, bias).unsqueeze(1)
    torch.testing.assert_close(exact_log_ratio, shortcut_log_ratio - gap, atol=1e-4, rtol=0)
    # The shortcut's implied expected weight under mu is not 1: it is biased wherever the gap is not 0.
    shortcut_expectation = (behaviour.exp() * shortcut_log_ratio.exp()).sum(1)
    assert (shortcut_expectation - 1).abs().max() > 0.1


def test_shortcut_is_exact_only_without_bias() -> None:
    agent, obs, _ = _agent_and_states(3)
    zero = torch.zeros(64, 7)
    with torch.no_grad():
        behaviour, policy = _all_action_logprobs(agent, obs, zero)
    torch.testing.assert_close(torch.log(ppo.shortcut_ratio(policy, policy, zero)), policy - behaviour)


def test_importance_weights_truncate_and_report() -> None:
    prox = torch.log(torch.tensor([0.5, 0.5, 0.9]))
    mu = torch.log(torch.tensor([0.5, 0.1, 0.9]))
    weights, truncated = ppo.importance_weights(prox, mu, max_weight=2.0)
    torch.testing.assert_close(weights, torch.tensor([1.0, 2.0, 1.0]))
    assert truncated.tolist() == [False, True, False]


def test_clipped_loss_has_no_gradient_outside_the_clip_range() -> None:
    ratio = torch.tensor([1.5, 0.5, 1.1], requires_grad=True)
    advantages = torch.tensor([1.0, -1.0, 1.0])
    result = ppo.clipped_policy_loss(ratio, advantages, torch.ones(3), clip_coef=0.2)
    result.loss.backward()
    assert ratio.grad is not None
    assert ratio.grad[0] == 0 and ratio.grad[1] == 0 and ratio.grad[2] != 0
    assert result.clipped.tolist() == [True, True, False]


def test_vtrace_can_leave_the_weight_to_the_loss() -> None:
    d = _episode_data(5)
    ends = d["terminated"] | d["truncated"]
    log_rhos = torch.randn_like(d["values"], generator=torch.Generator().manual_seed(0))
    _, weighted = ppo.vtrace(d["rewards"], d["values"], _next(d), ends, log_rhos, gamma=0.99)
    _, plain = ppo.vtrace(d["rewards"], d["values"], _next(d), ends, log_rhos, gamma=0.99, weight_advantages=False)
    torch.testing.assert_close(weighted, log_rhos.exp().clamp(max=1.0) * plain)
