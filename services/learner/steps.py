"""How many env steps are behind the learner's weights, counted exactly from the chunks themselves.

Every learning curve's x axis is this number (the evaluator reports it with each version's score), so it must not
come from a heartbeat that is seconds old. A chunk counts once, when it is trained on or dropped as stale: its
T x N steps were taken by the envs either way. Each rank counts its own chunks and keeps the count in its
checkpoint, so a resumed learner goes on from where its checkpoint was; with several ranks, rank 0 announces the
sum over ranks (`Ranks.sum_counts`, once per update).
"""

from __future__ import annotations

from collections import Counter


class EnvStepLedger:
    def __init__(self) -> None:
        self.own: Counter[str] = Counter()
        """Env steps per actor in the chunks this rank has settled."""
        self.group: dict[str, int] | None = None
        """The sum over every rank, as of the last update (None: this is the only learner)."""

    def count(self, actor: str, steps: int) -> None:
        self.own[actor] += steps

    def by_actor(self) -> dict[str, int]:
        """What the weights announcement carries: every rank's steps per actor."""
        return dict(self.own) if self.group is None else dict(self.group)

    @property
    def total(self) -> int:
        return sum(self.by_actor().values())

    def state(self) -> dict[str, int]:
        return dict(self.own)

    def restore(self, state: dict[str, int]) -> None:
        self.own = Counter({actor: int(steps) for actor, steps in state.items()})
