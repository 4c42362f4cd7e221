"""A count-based exploration bonus from Laplace-smoothed transition counts (the ACO seed's smoothing, issue 31).

Every transition the learner trains on, (observation, action, next observation), is hashed into a fixed table of
counts, and its reward gets `beta / sqrt(N + alpha)` extra, where N counts the transition *before* this one. The
Laplace constant `alpha > 0` is added to every count, as the seed adds it to the transition estimate
`P(s'|s,a) = (N(s,a,s') + alpha) / (N(s,a) + alpha |S|)`: a transition never seen gets the largest bonus,
`beta / sqrt(alpha)`, instead of a division by zero, and the bonus decays as the count grows (the MBIE-EB form,
Strehl & Littman 2008; 1/sqrt(N) as in Bellemare et al. 2016 and Tang et al. 2017's hashed counts).

Observations are hashed exactly as the policy saw them (float32), with a random linear hash over their bytes: a
table of `buckets` counts bounds memory whatever the environment, at the price of rare collisions (which only lower
a bonus). The next observation of a chunk's last step is not in the chunk (it opens the next one), so that step is
neither counted nor rewarded; a terminal step's next state is the episode's end. Counts live in the learner and
start again at zero when it restarts: they steer exploration, they are not data.
"""

from __future__ import annotations

import numpy as np

from ala.rl.trajectory import Trajectory

_TERMINAL = np.uint64(0x9E3779B97F4A7C15)
"""The 'next state' of a step that ended its episode."""


class TransitionCounts:
    def __init__(self, beta: float, alpha: float = 1.0, buckets: int = 1 << 20, seed: int = 0) -> None:
        if beta < 0 or alpha <= 0 or buckets < 1:
            raise ValueError(f"need beta >= 0, alpha > 0 and buckets >= 1, got {beta}, {alpha}, {buckets}")
        self.beta = beta
        self.alpha = alpha
        self.counts = np.zeros(buckets, dtype=np.uint32)
        self._rng = np.random.default_rng(seed)
        self._weights: np.ndarray | None = None  # drawn at the first observation, when its size is known
        self._mix = self._rng.integers(1, 2**63, size=2, dtype=np.uint64) | np.uint64(1)

    def _hash(self, observations: np.ndarray) -> np.ndarray:
        """One uint64 per row of float32 observations [..., obs_dim]: a random linear hash of their 32-bit words."""
        words = np.ascontiguousarray(observations, dtype=np.float32).view(np.uint32).astype(np.uint64)
        if self._weights is None or self._weights.shape[0] != words.shape[-1]:
            self._weights = self._rng.integers(1, 2**63, size=words.shape[-1], dtype=np.uint64) | np.uint64(1)
        with np.errstate(over="ignore"):  # arithmetic modulo 2**64 is the hash
            return (words * self._weights).sum(axis=-1, dtype=np.uint64)

    def add_bonus(self, trajectory: Trajectory) -> float:
        """Count `trajectory`'s transitions and add their bonus to its rewards in place; returns the bonus's sum."""
        if self.beta == 0:
            return 0.0
        steps = trajectory.actions.shape[0] - 1  # the last step's next observation opens the next chunk
        if steps < 1:
            return 0.0
        states = self._hash(trajectory.observations)  # [T, N]
        done = trajectory.terminated[:steps] | trajectory.truncated[:steps]
        following = np.where(done, _TERMINAL, states[1:])
        with np.errstate(over="ignore"):
            keys = states[:steps] * self._mix[0] + trajectory.actions[:steps].astype(np.uint64) * self._mix[1]
            keys = (keys ^ (following * np.uint64(0xBF58476D1CE4E5B9))) % np.uint64(self.counts.size)
        flat = keys.ravel().astype(np.int64)
        # Each transition's count before it, repeats within the chunk included (as if counted one at a time).
        order = np.argsort(flat, kind="stable")
        sorted_keys = flat[order]
        first = np.searchsorted(sorted_keys, sorted_keys, side="left")
        earlier_in_chunk = np.empty_like(flat)
        earlier_in_chunk[order] = np.arange(flat.size) - first
        before = self.counts[flat].astype(np.float64) + earlier_in_chunk
        bonus = (self.beta / np.sqrt(before + self.alpha)).astype(np.float32).reshape(keys.shape)
        np.add.at(self.counts, flat, 1)
        trajectory.rewards[:steps] += bonus
        return float(bonus.sum())
