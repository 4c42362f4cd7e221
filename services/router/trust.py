"""Evidence-driven trust: each advisor has a trust in [0, 1] that rises only while the episodes its advice reached
end better than the control group's, and decays otherwise, down to zero. The router turns it into the share of
bot-episodes the advisor's bias reaches (`core.py`, `trust_acts_on="reach"`, the default) or into a scale on the
bias (`"strength"`).

The evidence comes from the actors (`AdviceOutcome`): a random share of bot-episodes gets no advice at all (the
control group, which also measures the policy alone), and every other finished episode is credited to the advisors
whose advice it met. Statistics forget geometrically (`forget` per update), so trust follows an advisor whose
quality changes, and a policy that outgrows its advice.

Every `interval_s` (the router's task), for each advisor with at least `min_episodes` of both groups (`initial`,
`margin` and `min_episodes` are the router's live config, passed in, so `PUT /config` changes them at once):
- `diff = mean(advised) - mean(control)`, `se` its standard error. `diff - z * se > margin` (beats the control
  by the margin, clearly): trust doubles (`rise`, capped at 1). `diff + z * se < margin` (clearly does not): trust
  halves (`decay`), and below `floor` it falls to `probation` (the router's `trust_probation`, 0.05): the advisor
  still reaches that share of episodes, so when the policy regresses or the task changes, advice that helps again
  shows it and climbs back (x2 per clear win). With probation 0 it is silenced for good, as before: a silenced
  advisor reaches no episodes and cannot earn trust back. In between: trust holds.

Measured on DoorKey-5x5 (`benchmarks/learning_value.py`) while choosing these: a gentler decay (x0.8 every 2 s)
left always-wrong advice at trust 0.26 after 60k steps and the run never reached 0.8; decaying on the point
estimate alone (no `z * se`) from an initial 0.1 silenced the expert by noise in one of two seeds.

While nobody succeeds (early DoorKey: both groups score 0), advice does not beat the control, so trust decays:
good advice must earn its first successes at its initial trust, or it is silenced. Holding trust there instead
was measured to trap learning: always-wrong advice kept trust 0.25 for a whole 60k-step DoorKey-5x5 run, and the
run never reached 0.8, since wrong advice kept the control group from succeeding too.

Failure modes, by design: advice that helps only what training episodes score (a crutch the policy never learns)
still earns trust; an advisor that is right but rarely heard gathers evidence slowly; advice that needs more than
its initial trust to produce a first success is silenced before it can show its worth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from protos import AdviceOutcome, EpisodeStats


@dataclass
class Group:
    """Forgetting sums of episode returns."""

    episodes: float = 0.0
    total: float = 0.0
    squares: float = 0.0

    def add(self, stats: EpisodeStats) -> None:
        self.episodes += stats.episodes
        self.total += stats.return_sum
        self.squares += stats.return_sq_sum

    def forget(self, factor: float) -> None:
        self.episodes *= factor
        self.total *= factor
        self.squares *= factor

    @property
    def mean(self) -> float:
        return self.total / self.episodes if self.episodes else 0.0

    @property
    def variance(self) -> float:
        return max(0.0, self.squares / self.episodes - self.mean**2) if self.episodes else 0.0


@dataclass
class TrustEstimator:
    z: float = 1.0
    rise: float = 2.0
    decay: float = 0.5
    floor: float = 0.05
    forget: float = 0.98
    control: Group = field(default_factory=Group)
    advised: dict[str, Group] = field(default_factory=dict)
    trust: dict[str, float] = field(default_factory=dict)
    advantage: dict[str, float] = field(default_factory=dict)
    """Latest `mean(advised) - mean(control)` per advisor (a metric)."""

    def weight(self, advisor: str, initial: float) -> float:
        return self.trust.get(advisor, initial)

    def observe(self, outcome: AdviceOutcome) -> None:
        self.control.add(outcome.control)
        for advisor, stats in outcome.advised.items():
            self.advised.setdefault(advisor, Group()).add(stats)

    def update(self, initial: float, margin: float, min_episodes: int, probation: float = 0.0) -> dict[str, float]:
        """One step of every advisor's trust from the evidence so far (see the module docstring); returns the
        advisors whose trust changed, with their new trust."""
        control, changed = self.control, {}
        for advisor, group in self.advised.items():
            before = trust = self.weight(advisor, initial)
            if min(group.episodes, control.episodes) >= min_episodes and trust > 0:
                diff = group.mean - control.mean
                self.advantage[advisor] = diff
                se = math.sqrt(group.variance / group.episodes + control.variance / control.episodes)
                if diff - self.z * se > margin:
                    trust = min(1.0, trust * self.rise)
                elif diff + self.z * se < margin:
                    trust = trust * self.decay
                    trust = probation if trust < max(self.floor, probation) else trust
            self.trust[advisor] = trust
            if trust != before:
                changed[advisor] = trust
            group.forget(self.forget)
        control.forget(self.forget)
        return changed
