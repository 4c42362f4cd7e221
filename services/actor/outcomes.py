"""The evidence for trust: a control group of bot-episodes with no advice, and how every episode ended.

At each episode start a bot joins the control group with probability `control_share`: it gets no advice for the
whole episode (and so also shows how the policy alone plays). It also draws a number in [0, 1): a bias whose
`reach` (the router's trust in its advisors) is not above that number does not apply in this episode, so an
advisor trusted 0.25 shapes about a quarter of the episodes. Other episodes remember which advisors' advice they
met. Finished episodes add their return to the control group or to each advisor they met; `take` turns what
accumulated into an `AdviceOutcome` for the router (`services/router/trust.py`) and starts afresh.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from protos import AdviceOutcome, EpisodeStats

MAX_ADVISORS = 64
"""The wire's bound on advisors per report; more are not credited."""


class Sums:
    def __init__(self) -> None:
        self.episodes, self.total, self.squares = 0, 0.0, 0.0

    def add(self, episode_return: float) -> None:
        self.episodes += 1
        self.total += episode_return
        self.squares += episode_return**2

    def stats(self) -> EpisodeStats:
        return EpisodeStats(episodes=self.episodes, return_sum=self.total, return_sq_sum=self.squares)


class OutcomeLedger:
    def __init__(self, num_bots: int, control_share: float, seed: int) -> None:
        self.control_share = control_share
        self.rng = np.random.default_rng(seed)
        self.control = self.rng.random(num_bots) < control_share
        """bool [num_bots]: bots playing this episode without advice."""
        self.draw = self.rng.random(num_bots)
        """[num_bots]: this episode's draw per bot, against each bias's reach."""
        self.met: list[set[str]] = [set() for _ in range(num_bots)]
        self._control = Sums()
        self._advised: dict[str, Sums] = {}

    def unreached(self, reach: np.ndarray) -> np.ndarray:
        """bool [num_bots]: bots whose bias must not apply this step, given each bias's reach (`BiasLookup.reach`)."""
        return self.control | (self.draw >= reach)

    def record_step(self, advisors: Sequence[tuple[str, ...]]) -> None:
        for bot, names in enumerate(advisors):
            if names:
                self.met[bot].update(names)

    def end_episode(self, bot: int, episode_return: float) -> None:
        if self.control[bot]:
            self._control.add(episode_return)
        for advisor in self.met[bot]:
            if advisor in self._advised or len(self._advised) < MAX_ADVISORS:
                self._advised.setdefault(advisor, Sums()).add(episode_return)
        self.met[bot].clear()
        self.control[bot] = self.rng.random() < self.control_share
        self.draw[bot] = self.rng.random()

    def take(self, run: str, actor: str) -> AdviceOutcome | None:
        """What accumulated since the last call, or None when no episode ended."""
        if not self._control.episodes and not self._advised:
            return None
        outcome = AdviceOutcome(
            run=run,
            actor=actor,
            control=self._control.stats(),
            advised={advisor: sums.stats() for advisor, sums in self._advised.items()},
            created_at=time.time(),
        )
        self._control, self._advised = Sums(), {}
        return outcome
