"""Prioritised replay for the value function only (the ACO seed's prioritised replay; issue 31).

PPO is on-policy: replaying old samples through the clipped policy loss would need importance weights against
policies long gone. The critic has no such constraint on a short horizon: its regression targets (the λ-returns the
learner computed when it trained on a sample) stay informative for a few updates, and the critic is a separate
network here (`ala.rl.policy.Agent`), so extra value steps never move the policy. So recent samples are kept with
their targets, and after each PPO update the critic takes `steps` extra minibatch steps on replayed samples drawn
with probability p_i^α / Σ p^α, where p_i = |target_i − V(s_i)| + ε (the error under the critic as it was when the
sample was last seen), each weighted by the importance-sampling correction (N · P(i))^−β / max_j (N · P(j))^−β, β
annealed from `beta` to 1 over `beta_updates` updates: Schaul et al. 2016, "Prioritized Experience Replay", with
their α = 0.6, β₀ = 0.4.

A ring buffer of `capacity` samples bounds memory; sampling is proportional over a flat array (capacity is tens of
thousands: a sum tree would only pay at millions). The buffer is not checkpointed: after a restart it refills within
a few updates.
"""

from __future__ import annotations

import numpy as np
import torch

PRIORITY_EPSILON = 1e-3
"""Added to every |error|, so that no sample's probability is ever 0."""


class ValueReplay:
    def __init__(
        self,
        capacity: int,
        obs_dim: int,
        alpha: float = 0.6,
        beta: float = 0.4,
        beta_updates: int = 1000,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if capacity < 1 or not 0 <= alpha <= 1 or not 0 <= beta <= 1 or beta_updates < 1:
            raise ValueError(f"need capacity >= 1, alpha and beta in [0, 1], beta_updates >= 1: {capacity}, {alpha}")
        self.capacity, self.alpha, self.beta0, self.beta_updates = capacity, alpha, beta, beta_updates
        self.obs = torch.zeros((capacity, obs_dim), dtype=torch.float32, device=device)
        self.targets = torch.zeros(capacity, dtype=torch.float32, device=device)
        self.priorities = np.zeros(capacity, dtype=np.float64)
        self.size = 0
        self.next = 0
        self.updates = 0
        self.rng = np.random.default_rng(seed)

    @property
    def beta(self) -> float:
        """β now: `beta` annealed linearly to 1 over `beta_updates` updates (full correction at the end)."""
        return min(1.0, self.beta0 + (1.0 - self.beta0) * self.updates / self.beta_updates)

    def add(self, obs: torch.Tensor, targets: torch.Tensor, errors: torch.Tensor) -> None:
        """Keep `obs` [n, obs_dim] with their value `targets` [n], prioritised by |`errors`| [n]."""
        n = int(targets.shape[0])
        if n > self.capacity:  # only the newest fit
            obs, targets, errors = obs[-self.capacity :], targets[-self.capacity :], errors[-self.capacity :]
            n = self.capacity
        slots = (self.next + np.arange(n)) % self.capacity
        index = torch.as_tensor(slots, device=self.obs.device)
        self.obs[index] = obs.detach().to(self.obs.device, torch.float32)
        self.targets[index] = targets.detach().to(self.targets.device, torch.float32)
        self.priorities[slots] = errors.detach().abs().cpu().double().numpy() + PRIORITY_EPSILON
        self.next = int((self.next + n) % self.capacity)
        self.size = min(self.capacity, self.size + n)

    def sample(self, batch: int) -> tuple[np.ndarray, torch.Tensor]:
        """`batch` slots drawn by priority, and their importance-sampling weights (max-normalised)."""
        scaled = self.priorities[: self.size] ** self.alpha
        probabilities = scaled / scaled.sum()
        slots = self.rng.choice(self.size, size=batch, p=probabilities)
        weights = (self.size * probabilities[slots]) ** -self.beta
        weights /= (self.size * probabilities.min()) ** -self.beta  # the largest weight any sample can have
        return slots, torch.as_tensor(weights, dtype=torch.float32, device=self.obs.device)

    def update_priorities(self, slots: np.ndarray, errors: torch.Tensor) -> None:
        self.priorities[slots] = errors.detach().abs().cpu().double().numpy() + PRIORITY_EPSILON

    def end_update(self) -> None:
        self.updates += 1
