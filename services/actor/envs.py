"""Environments the actor's bots run, and what the actor announces about them."""

from __future__ import annotations

import gymnasium as gym
import minigrid  # noqa: F401  (registers the MiniGrid-* environment ids)
from minigrid.core.actions import Actions

from protos import ActionSpace


def action_space_of(env_id: str) -> ActionSpace:
    """The discrete action space of `env_id`, with MiniGrid's action names where they apply."""
    env = gym.make(env_id)
    try:
        space = env.action_space
        if not isinstance(space, gym.spaces.Discrete):
            raise ValueError(f"{env_id} has a {type(space).__name__} action space; ALA biases discrete actions")
        n = int(space.n)
        if env_id.startswith("MiniGrid-") and n == len(Actions):
            names = [action.name for action in Actions]
        else:
            names = [f"action_{i}" for i in range(n)]
        return ActionSpace(n=n, names=names)
    finally:
        env.close()
