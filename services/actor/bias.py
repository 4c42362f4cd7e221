"""The actor's local bias table: one bias vector and expiry per bot, read between steps.

Expiry is computed from the *remaining* TTL at receipt with this machine's monotonic clock, so actor and router
clocks need not agree, and a bias expires even if the router dies. An expired or missing bias is zero.
"""

from __future__ import annotations

import numpy as np

from ala.rejection import Rejected
from protos import BiasUpdate


class BiasRejected(Rejected):
    """A bias update the actor will not install; `reason` labels `ala_actor_bias_rejected_total`."""


class BiasTable:
    def __init__(self, num_bots: int, n_actions: int, max_abs_bias: float) -> None:
        self.bias = np.zeros((num_bots, n_actions), dtype=np.float32)
        self.expires_at = np.full(num_bots, -np.inf)
        self.max_abs_bias = max_abs_bias

    def apply(self, update: BiasUpdate, now: float) -> int:
        """Install `update` (received at monotonic time `now`); returns the number of bots it reached."""
        bias = update.bias.to_numpy()
        num_bots, n_actions = self.bias.shape
        if bias.shape != (n_actions,) or bias.dtype != np.float32:
            raise BiasRejected("shape", f"bias is {bias.dtype}{list(bias.shape)}, expected float32[{n_actions}]")
        if not np.isfinite(bias).all() or not np.isfinite(update.ttl_s):
            raise BiasRejected("non_finite", "bias or ttl is NaN or infinite")
        if update.ttl_s <= 0:
            raise BiasRejected("expired", f"ttl {update.ttl_s}s")
        bots = np.asarray(update.bots, dtype=np.int64) if update.bots else np.arange(num_bots)
        if bots.size and (bots.min() < 0 or bots.max() >= num_bots):
            raise BiasRejected("bot_range", f"bots outside [0, {num_bots})")
        # The router bounds biases already; clipping again keeps the ratio guarantee if it is misconfigured.
        self.bias[bots] = np.clip(bias, -self.max_abs_bias, self.max_abs_bias)
        self.expires_at[bots] = now + update.ttl_s
        return int(bots.size)

    def current(self, now: float) -> np.ndarray:
        """Biases in force at `now`, [num_bots, n_actions]; expired rows are zero."""
        return np.where((self.expires_at > now)[:, None], self.bias, np.float32(0))

    def active(self, now: float) -> int:
        return int((self.expires_at > now).sum())

    def clear(self) -> None:
        self.expires_at[:] = -np.inf
