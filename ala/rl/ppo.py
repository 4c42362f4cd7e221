"""PPO maths for data sampled from a biased, possibly stale policy. Pure tensor functions: no I/O, no settings.

Notation: `mu` is the behaviour distribution the actor sampled from, `softmax(logits_old + bias)`; `pi_prox` the
learner's policy at the start of an update; `pi` the policy being optimised. Shapes are time-major `[T, N]`.

Decoupled PPO (Hilton et al. 2021, "Batch size-invariance for policy optimization"): clip `pi / pi_prox` as usual
and weight each sample by `pi_prox / mu`, truncated at `max_weight`. The bias and the policy lag are both inside
`mu`, so one weight corrects both. `shortcut_ratio` is ALA's published alternative, kept for comparison: it omits
the log-partition term `log sum_a exp(logits + bias) - log sum_a exp(logits)`, so it is exact only when that is 0.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


def next_values(
    values: torch.Tensor,
    bootstrap_value: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    final_values: torch.Tensor,
) -> torch.Tensor:
    """V(s_{t+1}) for every step [T, N]: 0 after termination, V(final obs) after truncation."""
    assert values.dim() == 2 and bootstrap_value.shape == values.shape[1:]
    following = torch.cat([values[1:], bootstrap_value.unsqueeze(0)])
    following = torch.where(truncated, final_values, following)
    return torch.where(terminated, torch.zeros_like(following), following)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_value: torch.Tensor,
    episode_ends: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """Generalised advantage estimates [T, N]; `episode_ends` (terminated or truncated) cuts the recursion."""
    deltas = rewards + gamma * next_value - values
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(values[0])
    for t in reversed(range(values.shape[0])):
        last = deltas[t] + gamma * lam * (~episode_ends[t]) * last
        advantages[t] = last
    return advantages


def vtrace(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_value: torch.Tensor,
    episode_ends: torch.Tensor,
    log_rhos: torch.Tensor,
    gamma: float,
    rho_bar: float = 1.0,
    c_bar: float = 1.0,
    weight_advantages: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """V-trace (Espeholt et al. 2018) value targets and policy-gradient advantages [T, N].

    `log_rhos = log pi(a|s) - log mu(a|s)`; importance weights are truncated at `rho_bar` (for the fixed point) and
    `c_bar` (for the trace). `weight_advantages=False` leaves the truncated weight out of the policy-gradient
    advantages, for a loss that applies its own per-sample weight.
    """
    rhos = torch.exp(log_rhos)
    clipped_rhos = rhos.clamp(max=rho_bar)
    cs = rhos.clamp(max=c_bar)
    deltas = clipped_rhos * (rewards + gamma * next_value - values)
    vs_minus_v = torch.zeros_like(values)
    last = torch.zeros_like(values[0])
    for t in reversed(range(values.shape[0])):
        last = deltas[t] + gamma * cs[t] * (~episode_ends[t]) * last
        vs_minus_v[t] = last
    vs = values + vs_minus_v
    # v_{s+1}: the next step's target within an episode, else the bootstrap used for that step.
    next_vs = torch.cat([vs[1:], next_value[-1:]])
    next_vs = torch.where(episode_ends, next_value, next_vs)
    advantages = rewards + gamma * next_vs - values
    return vs, clipped_rhos * advantages if weight_advantages else advantages


def importance_weights(
    prox_logprob: torch.Tensor, behaviour_logprob: torch.Tensor, max_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`pi_prox / mu`, truncated at `max_weight`; returns (weights, truncated mask)."""
    weights = torch.exp(prox_logprob - behaviour_logprob)
    return weights.clamp(max=max_weight), weights > max_weight


def shortcut_ratio(
    new_logprob: torch.Tensor, policy_logprob: torch.Tensor, bias_taken: torch.Tensor, beta: float = 1.0
) -> torch.Tensor:
    """ALA's published ratio `exp(logp_new - logp_old - beta * bias[a])` (drops the log-partition term)."""
    return torch.exp(new_logprob - policy_logprob - beta * bias_taken)


def exact_log_partition_gap(logits: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`log mu(a) - (log pi(a) + bias[a])`, the same for every a: what the shortcut leaves out, negated."""
    return torch.logsumexp(logits, -1) - torch.logsumexp(logits + bias, -1)


class PolicyLoss(NamedTuple):
    loss: torch.Tensor
    ratio: torch.Tensor
    clipped: torch.Tensor


def clipped_policy_loss(
    ratio: torch.Tensor, advantages: torch.Tensor, sample_weights: torch.Tensor, clip_coef: float
) -> PolicyLoss:
    """PPO's clipped surrogate, each sample weighted (decoupled PPO: by `pi_prox / mu`; plain PPO: by 1)."""
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip_coef, 1 + clip_coef) * advantages
    loss = -(sample_weights * torch.min(unclipped, clipped)).mean()
    return PolicyLoss(loss, ratio, (ratio - 1).abs() > clip_coef)
