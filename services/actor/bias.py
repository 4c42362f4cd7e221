"""The actor's bias tables, read between steps: advice about a state, and advice about a bot.

- **State-scoped** (`BiasUpdate.state_key` set): a bounded LRU table key -> bias. A bot gets the bias while its
  current observation has that key, whichever bot the advice was asked for, so an advised state is advised again
  for every bot that meets it, with no round trip. This is how advice lands on the state it is about.
  Advice about an exact state (a key from `full_state_key`, named by advisors that read the full state) is looked
  up by each bot's exact state first, then advice about its observation.
- **Per-bot** (no key): strategic, state-independent advice for some bots; it ends at the bot's episode end.

Both expire by time and by steps, whichever comes first, and never later than `max_ttl_s` after receipt; every
element is clipped to `max_abs_bias` (the router's bounds, announced in its heartbeats: defence in depth). Time:
the *remaining* TTL at receipt on this machine's monotonic clock, so actor and router clocks need not agree and a
bias expires even if the router dies. Steps:
`ttl_steps` ticks of the actor (one tick = every bot steps once). Where both apply, the state's bias wins: it is
about what the bot sees now. An expired or missing bias is zero. Each bias also carries its `reach`, the share of
episodes it applies in; the outcome ledger (`outcomes.py`) decides per bot-episode which biases a bot is reached by.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ala.rejection import Rejected
from ala.rl.trajectory import FULL_STATE_KEY_PREFIX
from protos import BiasUpdate


class BiasRejected(Rejected):
    """A bias update the actor will not install; `reason` labels `ala_actor_bias_rejected_total`."""


@dataclass
class StateBias:
    bias: np.ndarray
    expires_at: float
    """Monotonic seconds."""
    expires_tick: float
    """Actor ticks (inf: time only)."""
    advisors: tuple[str, ...] = ()
    reach: float = 1.0

    def live(self, now: float, tick: int) -> bool:
        return self.expires_at > now and self.expires_tick > tick


@dataclass
class BiasLookup:
    bias: np.ndarray
    """[num_bots, n_actions], zero where no advice is live."""
    from_state: np.ndarray
    """bool [num_bots]: the bias came from the state table."""
    from_bot: np.ndarray
    """bool [num_bots]: the bias came from per-bot advice."""
    advisors: list[tuple[str, ...]]
    """Per bot: the advisors whose advice is in its bias (empty: none)."""
    reach: np.ndarray
    """float [num_bots]: the share of episodes the bot's bias applies in (`BiasUpdate.reach`; 1 where none)."""

    @property
    def in_force(self) -> np.ndarray:
        """bool [num_bots]: advice is in force, whatever its value: from some advisor (a zero bias too), or any
        non-zero bias. A zero bias naming no advisor is the router clearing a target, not advice."""
        named = np.fromiter((bool(names) for names in self.advisors), dtype=np.bool_, count=len(self.advisors))
        return (self.from_state | self.from_bot) & (named | self.bias.any(axis=1))

    def mute(self, bots: np.ndarray) -> None:
        """No advice for these bots (bool mask): the control group."""
        self.bias[bots] = 0
        self.from_state &= ~bots
        self.from_bot &= ~bots
        for bot in np.flatnonzero(bots):
            self.advisors[bot] = ()


class BiasTable:
    def __init__(
        self, num_bots: int, n_actions: int, max_abs_bias: float, max_states: int = 4096, max_ttl_s: float = 60.0
    ) -> None:
        self.bias = np.zeros((num_bots, n_actions), dtype=np.float32)
        self.expires_at = np.full(num_bots, -np.inf)
        self.expires_tick = np.full(num_bots, np.inf)
        self.bot_advisors: list[tuple[str, ...]] = [()] * num_bots
        self.bot_reach = np.ones(num_bots)
        self.states: OrderedDict[str, StateBias] = OrderedDict()
        self.max_states = max_states
        self.max_abs_bias = max_abs_bias
        self.max_ttl_s = max_ttl_s
        self.clipped_elements = 0
        """Bias elements received beyond `max_abs_bias` (none from a router that keeps its bound): a total."""
        self.capped_ttls = 0
        """Updates received with a TTL beyond `max_ttl_s`: a total."""
        self.exact_until = -np.inf
        """Monotonic time until which advice about an exact state may be live: the actor computes its bots' exact
        keys (~0.5 ms a step for 16 DoorKey bots) only until then."""

    def apply(self, update: BiasUpdate, now: float, tick: int = 0) -> int:
        """Install `update` (received at monotonic time `now`, actor tick `tick`); returns the number of bots it
        reached now (state-scoped advice: 0, it reaches bots when they meet the state)."""
        bias = update.bias.to_numpy()
        num_bots, n_actions = self.bias.shape
        if bias.shape != (n_actions,) or bias.dtype != np.float32:
            raise BiasRejected("shape", f"bias is {bias.dtype}{list(bias.shape)}, expected float32[{n_actions}]")
        if not np.isfinite(bias).all() or not np.isfinite(update.ttl_s):
            raise BiasRejected("non_finite", "bias or ttl is NaN or infinite")
        if update.ttl_s <= 0:
            raise BiasRejected("expired", f"ttl {update.ttl_s}s")
        if not 0 <= update.reach <= 1:  # msgspec checks it on decode; this guards updates built in-process
            raise BiasRejected("range", f"reach {update.reach} outside [0, 1]")
        # The router bounds biases and TTLs already; bounding them again here keeps the guarantee whoever published
        # the update (any client may, on a bus without permissions) and however the router is configured.
        clipped = np.clip(bias, -self.max_abs_bias, self.max_abs_bias)
        self.clipped_elements += int((clipped != bias).sum())
        ttl_s = min(update.ttl_s, self.max_ttl_s)
        self.capped_ttls += int(ttl_s < update.ttl_s)
        expires_tick = tick + update.ttl_steps if update.ttl_steps else np.inf
        if update.state_key:
            # Cleared (the router revoked it, and names no advisor): the state has no advice, and may be asked again.
            # A zero bias that names its advisors is advice in force (the null advisor's, the control arm for the
            # advised normaliser floor): it is kept, so the state is not asked again and its steps count as advised.
            if not clipped.any() and not update.advisors:
                self.states.pop(update.state_key, None)
                return 0
            self.states[update.state_key] = StateBias(
                clipped, now + ttl_s, expires_tick, tuple(update.advisors), update.reach
            )
            if update.state_key.startswith(FULL_STATE_KEY_PREFIX):
                self.exact_until = max(self.exact_until, now + ttl_s)
            self.states.move_to_end(update.state_key)
            while len(self.states) > self.max_states:
                self.states.popitem(last=False)
            return 0
        bots = np.asarray(update.bots, dtype=np.int64) if update.bots else np.arange(num_bots)
        if bots.size and (bots.min() < 0 or bots.max() >= num_bots):
            raise BiasRejected("bot_range", f"bots outside [0, {num_bots})")
        self.bias[bots] = clipped
        self.expires_at[bots] = now + ttl_s
        self.expires_tick[bots] = expires_tick
        self.bot_reach[bots] = update.reach
        for bot in bots:
            self.bot_advisors[bot] = tuple(update.advisors)
        return int(bots.size)

    def lookup(self, now: float, tick: int = 0, keys: Sequence[str] = (), exact_keys: Sequence[str] = ()) -> BiasLookup:
        """Biases in force at `now` for bots whose observations have `keys` (one per bot; empty: no state lookup)
        and whose exact states have `exact_keys` (one per bot, looked up first; empty: none)."""
        from_bot = self._bots_live(now, tick)
        bias = np.where(from_bot[:, None], self.bias, np.float32(0))
        from_state = np.zeros(len(from_bot), dtype=np.bool_)
        advisors = [self.bot_advisors[bot] if live else () for bot, live in enumerate(from_bot)]
        reach = np.where(from_bot, self.bot_reach, 1.0)
        if self.states:
            for bot, key in enumerate(keys):
                entry = self._live(exact_keys[bot], now, tick) if exact_keys else None
                entry = entry or self._live(key, now, tick)
                if entry is None:
                    continue
                bias[bot] = entry.bias
                from_state[bot] = True
                advisors[bot] = entry.advisors
                reach[bot] = entry.reach
        return BiasLookup(bias, from_state, from_bot & ~from_state, advisors, reach)

    def current(self, now: float, tick: int = 0, keys: Sequence[str] = ()) -> np.ndarray:
        """Biases in force, [num_bots, n_actions]; expired rows are zero."""
        return self.lookup(now, tick, keys).bias

    def _live(self, key: str, now: float, tick: int) -> StateBias | None:
        """The live entry of `key` (marked recently used), or None; an expired one is dropped."""
        entry = self.states.get(key)
        if entry is None:
            return None
        if not entry.live(now, tick):
            del self.states[key]
            return None
        self.states.move_to_end(key)
        return entry

    def has_state_advice(self, key: str, now: float, tick: int) -> bool:
        entry = self.states.get(key)
        return entry is not None and entry.live(now, tick)

    def may_have_exact_advice(self, now: float) -> bool:
        return now < self.exact_until

    def end_episodes(self, bots: Sequence[int]) -> None:
        """Per-bot advice is about the episode it was given in."""
        self.expires_at[list(bots)] = -np.inf

    def active(self, now: float, tick: int = 0) -> int:
        """Bots with live per-bot advice."""
        return int(self._bots_live(now, tick).sum())

    def live_states(self, now: float, tick: int = 0) -> int:
        """States with live advice (expired entries stay in the table until a lookup or the LRU drops them)."""
        return sum(entry.live(now, tick) for entry in self.states.values())

    def _bots_live(self, now: float, tick: int) -> np.ndarray:
        return (self.expires_at > now) & (self.expires_tick > tick)

    def clear(self) -> None:
        self.expires_at[:] = -np.inf
        self.states.clear()
        self.exact_until = -np.inf
