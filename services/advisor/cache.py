"""Adaptive advice cache (after arXiv 2505.07274): reuse advice for a state already answered, or a near one.

States are the compact observations the policy saw (MiniGrid: 7x7 view codes, which include the carried object).
An exact match is always reused. A near match (at most `max_distance` differing values) is reused too, and the
threshold adapts online: near hits are answered afresh anyway and compared (every one until `MIN_AUDITS` have been,
then a share `audit_rate`); while agreement stays at or above `target_agreement` the threshold may grow by one,
and it shrinks on a disagreement that brings agreement below target. A hit is published as new advice, with a
fresh creation time and the cached answer's TTL. With `cache_tuning = "performance"` the threshold follows the
policy's performance instead (`cache_tuning.py`).
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np

from services.advisor.backends import Suggestion

AUDIT_WINDOW = 50
MIN_AUDITS = 10
"""Near hits audited before trusting the threshold at all: a new cache learns its backend's tolerance first."""
MAX_DISTANCE_CAP = 8


@dataclass
class Lookup:
    suggestion: Suggestion | None
    """Reusable advice, or None: ask the backend."""
    exact: bool = False
    audit: bool = False
    """A near hit chosen for audit: ask the backend anyway and report agreement with `record_audit`."""


class AdviceCache:
    def __init__(
        self,
        capacity: int,
        max_distance: int,
        target_agreement: float,
        audit_rate: float,
        seed: int = 0,
        adapt_to_agreement: bool = True,
    ) -> None:
        self.capacity = capacity
        self.adapt_to_agreement = adapt_to_agreement
        """False: audits are measured, and the threshold is left to `cache_tuning.PerformanceTuner`."""
        self.max_distance = max_distance
        self.target_agreement = target_agreement
        self.audit_rate = audit_rate
        self.entries: OrderedDict[bytes, tuple[np.ndarray, Suggestion]] = OrderedDict()
        self.audits: deque[bool] = deque(maxlen=AUDIT_WINDOW)
        self.rng = random.Random(seed)
        self.hits = 0
        self.misses = 0

    def lookup(self, observation: np.ndarray) -> Lookup:
        key = observation.tobytes()
        if key in self.entries:
            self.entries.move_to_end(key)
            self.hits += 1
            return Lookup(self.entries[key][1], exact=True)
        near = self._nearest(observation)
        if near is not None:
            # Audits cost a backend call each: only where agreement moves the threshold.
            if self.adapt_to_agreement and (len(self.audits) < MIN_AUDITS or self.rng.random() < self.audit_rate):
                return Lookup(near, audit=True)
            self.hits += 1
            return Lookup(near)
        self.misses += 1
        return Lookup(None)

    def _nearest(self, observation: np.ndarray) -> Suggestion | None:
        if self.max_distance == 0 or not self.entries:
            return None
        stored = np.stack([obs for obs, _ in self.entries.values()])
        distances = (stored != observation).sum(axis=1)
        best = int(distances.argmin())
        if distances[best] > self.max_distance:
            return None
        return list(self.entries.values())[best][1]

    def store(self, observation: np.ndarray, suggestion: Suggestion) -> None:
        self.entries[observation.tobytes()] = (observation.copy(), suggestion)
        self.entries.move_to_end(observation.tobytes())
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)

    def record_audit(self, cached: Suggestion, fresh: Suggestion) -> None:
        """Adapt the reuse threshold from how often a near hit agrees with a fresh answer."""
        self.misses += 1
        self.audits.append(cached.action == fresh.action)
        if not self.adapt_to_agreement:
            return
        agreement = sum(self.audits) / len(self.audits)
        if not self.audits[-1] and agreement < self.target_agreement:
            self.max_distance = max(0, self.max_distance - 1)
        elif len(self.audits) >= 10 and agreement >= self.target_agreement:
            self.max_distance = min(MAX_DISTANCE_CAP, self.max_distance + 1)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
