"""Bounded rates: logging that bad input or a dead peer can hit thousands of times a second, and a token bucket."""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    """Log at most one record per `interval_s`, saying how many were suppressed since the last one.

    Counting belongs to metrics; this only keeps logs readable.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 5.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last = -float("inf")
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self._suppressed += 1
            return
        if self._suppressed:
            message += f" ({self._suppressed} similar messages suppressed)"
        self.logger.warning(message, *args)
        self._last = now
        self._suppressed = 0


class TokenBucket:
    """At most `rate_per_s` events per second on average, `burst` at once; `take` never waits."""

    def __init__(self, rate_per_s: float, burst: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = burst
        self._last = time.monotonic()

    def take(self, now: float | None = None) -> bool:
        """Spend one token if there is one (`now`: monotonic seconds, for tests)."""
        now = time.monotonic() if now is None else now
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._last) * self.rate_per_s)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
