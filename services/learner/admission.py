"""Which fetched chunks the learner trains: the checks between a message and an update, with no NATS in them.

A chunk is refused for good (terminated: it must never come back) when it does not decode or fit the policy, belongs
to another run, or names a version further ahead than `max_policy_lag` (a learner restored from an older checkpoint
cannot know it). It is dropped (acknowledged) when it was trained already or is waiting in the batch, or is too
stale to correct for. Everything else is trained, with the advisor's implicit rewards, the exploration bonus and the
preference model's shaping added. Each verdict is counted.
"""

from __future__ import annotations

import logging
from collections.abc import Container
from dataclasses import dataclass

from ala.rl.exploration import TransitionCounts
from ala.rl.learner import Learner
from ala.rl.preference import PreferenceReward
from ala.rl.trajectory import BadChunk, Trajectory, from_chunk
from protos import TrajectoryChunk, WireError, decode, subjects
from services.learner import metrics
from services.learner.implicit import ImplicitRewards
from services.learner.steps import EnvStepLedger

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refused:
    terminate: bool
    """True: never to be delivered again (bad, or not this learner's); False: acknowledged as done."""


@dataclass(frozen=True)
class Admitted:
    chunk_id: str
    trajectory: Trajectory


class Admission:
    def __init__(
        self,
        run: str,
        max_policy_lag: int,
        learner: Learner,
        trained: Container[str],
        env_steps: EnvStepLedger,
        implicit: ImplicitRewards,
        exploration: TransitionCounts | None = None,
        preferences: PreferenceReward | None = None,
    ) -> None:
        self.run = run
        self.max_policy_lag = max_policy_lag
        self.learner = learner
        self.trained = trained
        self.env_steps = env_steps
        self.implicit = implicit
        self.exploration = exploration
        self.preferences = preferences
        self.pending: set[str] = set()
        """Chunks admitted and waiting for their batch (a slow batch can see one redelivered)."""

    def check(self, data: bytes) -> Admitted | Refused:
        try:
            chunk = decode(data, TrajectoryChunk)
            trajectory = from_chunk(chunk, self.learner.agent.spec)
        except (WireError, BadChunk) as exc:
            reason = exc.reason if isinstance(exc, BadChunk) else "decode"
            metrics.CHUNKS_REJECTED.labels(reason).inc()
            log.warning("chunk rejected (%s): %s", reason, exc)
            return Refused(terminate=True)
        chunk_id = subjects.trajectory_msg_id(chunk.run, chunk.actor, chunk.chunk_seq)
        if chunk_id in self.trained or chunk_id in self.pending:
            metrics.CHUNKS_DUPLICATE.inc()
            return Refused(terminate=False)
        if chunk.run != self.run:
            metrics.CHUNKS_REJECTED.labels("run").inc()
            return Refused(terminate=True)
        # From here on the chunk is settled or trained before the next weights: its steps are behind them.
        self.env_steps.count(chunk.actor, trajectory.num_steps)
        ahead = chunk.policy_version - self.learner.version  # > 0 only after a restart lost the newest versions
        if ahead > self.max_policy_lag:
            metrics.CHUNKS_REJECTED.labels("unknown_version").inc()
            return Refused(terminate=True)
        metrics.POLICY_LAG.observe(max(0, -ahead))
        if self.learner.is_stale(trajectory):
            metrics.CHUNKS_STALE.inc()
            return Refused(terminate=False)
        trajectory.rewards = trajectory.rewards.copy()  # decoded arrays are read-only views
        metrics.IMPLICIT_REWARDS_APPLIED.inc(self.implicit.apply(trajectory))
        if self.exploration is not None:
            metrics.EXPLORATION_BONUS.inc(self.exploration.add_bonus(trajectory))
        if self.preferences is not None:
            metrics.PREFERENCE_SHAPING.inc(self.preferences.shape(trajectory))
        self.pending.add(chunk_id)
        return Admitted(chunk_id, trajectory)
