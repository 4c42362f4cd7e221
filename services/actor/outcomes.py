"""The evidence for trust: a control group of bot-episodes with no advice, and how every episode ended.

At each episode start a bot joins the control group with probability `control_share`: it gets no advice for the
whole episode (and so also shows how the policy alone plays). It also draws a number in [0, 1) and, by intention
to treat, is assigned there and then to every advisor whose reach (the router's trust in it, announced in the
router's heartbeats: `set_reach`) is above that number: an advisor trusted 0.25 is assigned about a quarter of the
episodes. A bias applies only to a bot assigned to one of the advisors in it, and a finished episode counts for
every advisor it was assigned to, whether or not it met their advice: crediting the episodes that *met* advice
compares groups selected after treatment (a bot that never reaches the advised states never meets the advice).

Until the router has announced any reach, the fallback is the older rule: a bias applies where its own `reach` is
above the draw, and the episode counts for the advisors whose advice it met. `take` turns what accumulated into an
`AdviceOutcome` for the router (`services/router/trust.py`) and starts afresh.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from protos import AdviceOutcome, EpisodeStats
from protos.messages import MAX_ADVISORS  # the wire's bound on advisors per report; more are not credited


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
        self.reach: dict[str, float] | None = None
        """The router's announced reach per advisor (None: not heard yet)."""
        self.assigned: list[frozenset[str] | None] = [None] * num_bots
        """Per bot: the advisors its episode was assigned to when it started (None: started before any reach)."""
        self._control = Sums()
        self._advised: dict[str, Sums] = {}

    def set_reach(self, reach: dict[str, float]) -> None:
        """The router's reach per advisor: it assigns the episodes that start from now on."""
        self.reach = dict(reach)
        for bot, assigned in enumerate(self.assigned):
            if assigned is None:  # episodes under way join at once (their draw was made at their start)
                self.assigned[bot] = self._assign(bot)

    def _assign(self, bot: int) -> frozenset[str] | None:
        if self.reach is None:
            return None
        return frozenset(name for name, reach in self.reach.items() if self.draw[bot] < reach)

    def unreached(self, reach: np.ndarray, advisors: Sequence[tuple[str, ...]] = ()) -> np.ndarray:
        """bool [num_bots]: bots whose bias must not apply this step: control bots, and bots assigned to none of
        the advisors in their bias (`advisors`, per bot); before any reach is announced, bots whose draw is not
        below their bias's own reach (`BiasLookup.reach`)."""
        muted = self.control | (self.draw >= reach)
        for bot, names in enumerate(advisors):
            assigned = self.assigned[bot]
            if names and assigned is not None:
                muted[bot] = self.control[bot] or assigned.isdisjoint(names)
        return muted

    def record_step(self, advisors: Sequence[tuple[str, ...]]) -> None:
        for bot, names in enumerate(advisors):
            if names:
                self.met[bot].update(names)

    def end_episode(self, bot: int, episode_return: float) -> None:
        if self.control[bot]:
            self._control.add(episode_return)
        assigned = self.assigned[bot]
        credited = self.met[bot] if assigned is None else (set() if self.control[bot] else assigned)
        for advisor in credited:
            if advisor in self._advised or len(self._advised) < MAX_ADVISORS:
                self._advised.setdefault(advisor, Sums()).add(episode_return)
        self.met[bot].clear()
        self.control[bot] = self.rng.random() < self.control_share
        self.draw[bot] = self.rng.random()
        self.assigned[bot] = self._assign(bot)

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
