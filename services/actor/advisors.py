"""Which advisors can use this actor's digests: heard from their heartbeats, which say what each reads.

An actor whose digests carry nothing a live advisor reads (CartPole has no text for an LLM, no full state for the
planner) sends none: they would all be skipped. The set is bounded, since heartbeats come from outside.
"""

from __future__ import annotations

import time

from protos import MAX_ADVISORS, Heartbeat

SILENT_HEARTBEATS = 3
"""An advisor not heard for this many heartbeat intervals is gone: its digests would go unread."""


class AdvisorsHeard:
    def __init__(self, offered: set[str], heartbeat_interval_s: float) -> None:
        self.offered = offered
        """What this actor's digests carry, against what each advisor reads (`Heartbeat.reads`)."""
        self.heartbeat_interval_s = heartbeat_interval_s
        self.heard: dict[str, tuple[frozenset[str], float]] = {}
        """Advisor instance -> (what it reads, monotonic time of its last heartbeat), at most `MAX_ADVISORS`."""

    def hear(self, heartbeat: Heartbeat) -> None:
        if heartbeat.instance not in self.heard and len(self.heard) >= MAX_ADVISORS:
            del self.heard[min(self.heard, key=lambda name: self.heard[name][1])]  # the one heard longest ago
        self.heard[heartbeat.instance] = (frozenset(heartbeat.reads), time.monotonic())

    def reading(self) -> int | None:
        """Advisors heard within `SILENT_HEARTBEATS` heartbeats that read what this actor's digests carry; None
        while no advisor has been heard at all (one may be starting: ask)."""
        if not self.heard:
            return None
        recent = time.monotonic() - SILENT_HEARTBEATS * self.heartbeat_interval_s
        return sum(at > recent and not reads.isdisjoint(self.offered) for reads, at in self.heard.values())
