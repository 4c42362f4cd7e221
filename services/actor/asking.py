"""Which bots' states to describe to the advisors, and when: ask about states with no advice yet, at a bounded rate.

A digest is worth sending for a bot whose current state (its observation key) has no live state-scoped advice and
was not asked about in the last `ask_again_s`: one answer then serves every bot that meets that state. Each bot
asks at most once per `bot_interval_s`, and the whole actor at most `rate_per_s` on average, so that a slow LLM
(~3 s an answer) is not flooded: the advisor keeps only the newest digest per bot anyway. Digests the advisor asked
for (`DigestRequest`) and the optional periodic ones bypass the novelty test but not the overall rate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import numpy as np
from cachetools import TTLCache

from ala.ratelimit import TokenBucket

Reason = Literal["new_state", "requested", "periodic"]


class Asker:
    def __init__(
        self,
        num_bots: int,
        rate_per_s: float,
        bot_interval_s: float,
        ask_again_s: float,
        max_keys: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bucket = TokenBucket(rate_per_s, burst=max(1.0, rate_per_s / 4))
        self.bot_interval_s = bot_interval_s
        self.last_asked = np.full(num_bots, -np.inf)
        self.asked: TTLCache[str, bool] = TTLCache(maxsize=max_keys, ttl=ask_again_s, timer=clock)
        self.clock = clock
        self.limited = 0
        """Times the overall rate held back wanted digests (a metric)."""

    def choose(
        self,
        keys: Sequence[str],
        has_advice: Callable[[str], bool],
        requested: Iterable[int] = (),
        periodic: bool = False,
    ) -> list[tuple[int, Reason]]:
        """(bot, why) for every digest to publish now."""
        now = self.clock()
        wanted: dict[int, Reason] = {}
        if periodic:
            wanted |= dict.fromkeys(range(len(keys)), "periodic")
        wanted |= dict.fromkeys((bot for bot in requested if 0 <= bot < len(keys)), "requested")
        for bot, key in enumerate(keys):
            if bot in wanted or now - self.last_asked[bot] < self.bot_interval_s:
                continue
            if key not in self.asked and not has_advice(key):
                wanted[bot] = "new_state"
        chosen = []
        # Least recently asked first, so that under the overall rate every bot gets its turn.
        for bot, reason in sorted(wanted.items(), key=lambda item: (self.last_asked[item[0]], item[0])):
            if reason == "new_state" and keys[bot] in self.asked:
                continue  # another bot in the same state asked for it this step
            if not self.bucket.take(now):
                self.limited += 1
                break
            self.asked[keys[bot]] = True
            self.last_asked[bot] = now
            chosen.append((bot, reason))
        return chosen
