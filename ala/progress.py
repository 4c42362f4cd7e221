"""Progress lines: every service logs one compact line about its own job every `progress_interval_s`
(`ALA_<SERVICE>_PROGRESS_INTERVAL_S`, 0 turns it off), so the console of `ala up` reads as a dashboard.

    12:00:10 INFO  ala.actor: steps 412,160  5,010/s  policy v402  return 0.871 (last 100)  biased bots 3/16
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

ProgressLine = Callable[[], str]


class Rate:
    """Per-second rate of a growing count between successive reads."""

    def __init__(self, count: float = 0.0) -> None:
        self._then = time.monotonic()
        self._count = count

    def per_second(self, count: float) -> float:
        now = time.monotonic()
        elapsed, grown = now - self._then, count - self._count
        self._then, self._count = now, count
        return grown / elapsed if elapsed > 0 else 0.0


async def report_progress(service: str, line: ProgressLine, interval_s: float) -> None:
    """Log `line()` every `interval_s` seconds, forever (a long-lived task of the service's task group)."""
    if interval_s <= 0:
        return
    logger = logging.getLogger(f"ala.{service}")
    while True:
        await asyncio.sleep(interval_s)
        logger.info("%s", line())
