"""Implicit rewards from the advisor's critical-state review, added to the environment's reward. Off by default
(`ALA_LEARNER_IMPLICIT_REWARDS`) until the learning benchmark shows a benefit.

A message says: taking `action` in the state named `state_key` deserves `reward` extra. The learner adds it to
every matching step of the chunks it trains on, clipped again to `max_reward` whatever the sender claimed, so a
misbehaving advisor can shift a step's reward by at most that much.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ala.rl.trajectory import Trajectory, observation_key
from protos import ImplicitReward


class ImplicitRewards:
    def __init__(self, max_reward: float, capacity: int = 10_000) -> None:
        self.max_reward = max_reward
        self.capacity = capacity
        self.table: OrderedDict[tuple[str, int], float] = OrderedDict()

    def add(self, message: ImplicitReward) -> None:
        if not np.isfinite(message.reward):
            return
        self.table[(message.state_key, message.action)] = float(
            np.clip(message.reward, -self.max_reward, self.max_reward)
        )
        self.table.move_to_end((message.state_key, message.action))
        while len(self.table) > self.capacity:
            self.table.popitem(last=False)

    def apply(self, trajectory: Trajectory) -> int:
        """Add the known implicit rewards to `trajectory.rewards` in place; returns how many steps matched."""
        if not self.table:
            return 0
        matched = 0
        steps, bots = trajectory.actions.shape
        for t in range(steps):
            for bot in range(bots):
                key = (observation_key(trajectory.observations[t, bot]), int(trajectory.actions[t, bot]))
                if key in self.table:
                    trajectory.rewards[t, bot] += self.table[key]
                    matched += 1
        return matched
