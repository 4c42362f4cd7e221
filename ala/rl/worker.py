"""The rollout worker: one chunk of every bot's steps with the bias an `AdviceSource` gives, and nothing of NATS.

It yields to the event loop between steps, so that the service's callbacks (bias updates, weights announcements)
run there and the bias read at the next step is the newest; it never waits for advice. The actor's advice client
(services/actor/advice_client.py) is the source in the stack; `NoAdvice` is plain PPO.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ala.rl.rollout import Episode, Rollout
from ala.rl.trajectory import Trajectory


@dataclass(frozen=True)
class StepAdvice:
    bias: np.ndarray | None
    """float32 [N, n_actions] added to the logits (None: none)."""
    advice: np.ndarray | None = None
    """float32 [N, n_actions] recorded for the learner to distil, not applied (None: not recorded)."""
    advised: np.ndarray | None = None
    """bool [N]: which bots had advice in force, whatever its value (None: not recorded)."""
    full_states: np.ndarray | None = None
    """uint8 [N, *state_shape]: each bot's privileged full state now, recorded for a review that plans (None: not
    shared)."""


class AdviceSource(Protocol):
    def before_step(self) -> StepAdvice:
        """The advice in force for every bot's next step."""
        ...

    async def after_step(self, finished: list[Episode]) -> None:
        """After each step, with the episodes it ended."""
        ...


class NoAdvice:
    def before_step(self) -> StepAdvice:
        return StepAdvice(bias=None)

    async def after_step(self, finished: list[Episode]) -> None:
        return None


async def collect_chunk(rollout: Rollout, source: AdviceSource) -> Trajectory:
    """`rollout.num_steps` steps of every bot, all sampled by the policy version installed now."""
    trajectory = rollout.new_trajectory()
    for t in range(rollout.num_steps):
        step = source.before_step()
        rollout.step(trajectory, t, step.bias, advice=step.advice, advised=step.advised, full_states=step.full_states)
        finished, rollout.finished = rollout.finished, []
        await source.after_step(finished)
        await asyncio.sleep(0)  # the service's callbacks run here, between steps
    return rollout.finish(trajectory)
