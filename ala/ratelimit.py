"""Logging at a bounded rate, for paths that bad input or a dead peer can hit thousands of times a second."""

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
