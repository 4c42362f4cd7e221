"""The advice cache's reuse threshold meta-optimised from policy performance (after arXiv 2505.07274, whose cache
parameters follow surrogate gradients of the policy's performance instead of staying fixed).

The signal is the actors' episode outcomes (`AdviceOutcome`, the router's evidence for trust): the mean return of
the episodes this advisor's advice reached, minus the mean return of the control group's unadvised episodes
reported over the same window. That lift is what the advice is worth to the policy now, free of the policy's own
progress, which lifts both groups alike.

The threshold moves one step a window, a finite difference in the one parameter: after `window_episodes` advised
episodes at threshold d, the lift measured there (the mean of its last `RECENT` windows: the lift a weak early
policy gets from advice is not the lift a later one gets) is compared with the best measured at any lower threshold.
Within `tolerance` of it, reuse goes up (d + 1: more answers from the cache, learning kept); below it, reuse comes
down (d - 1). With advice that is worth nothing, every threshold measures the same lift within noise, and the cache
climbs to its cap. More answers from the cache means fewer backend calls per answer; whether it means fewer calls
depends on how often the actors ask (on DoorKey-8x8 they ask more often than a slow advisor answers, and the calls
did not fall: docs/seed-mechanisms.md).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field

from protos import EpisodeStats
from services.advisor.cache import MAX_DISTANCE_CAP, AdviceCache

RECENT = 3
"""Windows remembered per threshold."""
log = logging.getLogger(__name__)


@dataclass
class Window:
    advised_episodes: int = 0
    advised_return: float = 0.0
    control_episodes: int = 0
    control_return: float = 0.0

    def add(self, advised: EpisodeStats, control: EpisodeStats) -> None:
        self.advised_episodes += advised.episodes
        self.advised_return += advised.return_sum
        self.control_episodes += control.episodes
        self.control_return += control.return_sum

    @property
    def lift(self) -> float:
        return self.advised_return / self.advised_episodes - self.control_return / self.control_episodes


@dataclass
class PerformanceTuner:
    cache: AdviceCache
    window_episodes: int
    """Advised episodes per window (and at least half as many control episodes)."""
    tolerance: float
    """Return lift a higher threshold may give up against the best lower one."""
    window: Window = field(default_factory=Window)
    starved: bool = False
    """Said that no control episodes come."""
    lifts: dict[int, deque[float]] = field(default_factory=dict)
    """The last `RECENT` lifts measured at each threshold, one per window."""

    def observe(self, advised: EpisodeStats, control: EpisodeStats) -> int | None:
        """Add one outcome report; at the end of a window, move the threshold and return the step taken (+1, -1, or
        0 at a bound), else None. A report with a non-finite return is ignored (decoding checks types, not values)."""
        if not (math.isfinite(advised.return_sum) and math.isfinite(control.return_sum)):
            return None
        window = self.window
        window.add(advised, control)
        if window.advised_episodes < self.window_episodes or 2 * window.control_episodes < self.window_episodes:
            if window.advised_episodes >= 4 * self.window_episodes and not window.control_episodes and not self.starved:
                self.starved = True  # said once: no control group (the actors' control_share 0), no signal
                log.warning("no control episodes reported: the cache's threshold stays at %d", self.cache.max_distance)
            return None
        here = self.cache.max_distance
        self.lifts.setdefault(here, deque(maxlen=RECENT)).append(window.lift)
        self.window = Window()
        lower = [mean(self.lifts[d]) for d in self.lifts if d < here]
        keeps = not lower or mean(self.lifts[here]) >= max(lower) - self.tolerance
        new = min(MAX_DISTANCE_CAP, here + 1) if keeps else max(0, here - 1)
        self.cache.max_distance = new
        return new - here


def mean(values: deque[float]) -> float:
    return sum(values) / len(values)
