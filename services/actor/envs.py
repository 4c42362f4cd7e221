"""Environments the actor's bots run, the policy shape they imply, and what the actor announces about them.

MiniGrid observations are the agent's 7x7 egocentric view of (object, colour, state) codes, flattened to 147
float32 values exactly as the policy sees them; the policy one-hot encodes the codes. Other Gymnasium envs with a
flat Box observation and Discrete actions work unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import minigrid  # noqa: F401  (registers the MiniGrid-* environment ids)
import numpy as np
from minigrid.core.actions import Actions
from minigrid.wrappers import ImgObsWrapper

from ala.policy import PolicySpec
from protos import ActionSpace

MINIGRID_CODES = 11
"""MiniGrid encodes cells with object ids 0-10, colours 0-5 and states 0-2: 11 one-hot classes cover all."""


def is_minigrid(env_id: str) -> bool:
    return env_id.startswith("MiniGrid-")


def make_env(env_id: str, **kwargs: object) -> gym.Env:
    env = gym.make(env_id, **kwargs)
    if is_minigrid(env_id):
        env = ImgObsWrapper(env)
    env = gym.wrappers.FlattenObservation(env)
    return gym.wrappers.TransformObservation(
        env,
        lambda obs: np.asarray(obs, dtype=np.float32),
        gym.spaces.Box(-np.inf, np.inf, env.observation_space.shape, np.float32),
    )


def make_vector_env(env_id: str, num_bots: int, **kwargs: object) -> gym.vector.SyncVectorEnv:
    """N bots in one process. SAME_STEP autoreset: every step is a real transition, and the final observation of
    a finished episode is in `info["final_obs"]` (needed to bootstrap truncated episodes)."""
    factories: list[Callable[[], gym.Env]] = [lambda: make_env(env_id, **kwargs) for _ in range(num_bots)]
    return gym.vector.SyncVectorEnv(factories, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def policy_spec_of(env_id: str, hidden: int = 64) -> PolicySpec:
    env = make_env(env_id)
    try:
        if not isinstance(env.action_space, gym.spaces.Discrete):
            raise ValueError(f"{env_id} has a {type(env.action_space).__name__} action space; ALA needs Discrete")
        obs_shape = env.observation_space.shape
        assert obs_shape is not None and len(obs_shape) == 1
        return PolicySpec(
            obs_dim=int(obs_shape[0]),
            n_actions=int(env.action_space.n),
            onehot_classes=MINIGRID_CODES if is_minigrid(env_id) else 0,
            hidden=hidden,
        )
    finally:
        env.close()


def action_space_of(env_id: str) -> ActionSpace:
    """The discrete action space of `env_id`, with MiniGrid's action names where they apply."""
    n = policy_spec_of(env_id).n_actions
    if is_minigrid(env_id) and n == len(Actions):
        return ActionSpace(n=n, names=[action.name for action in Actions])
    return ActionSpace(n=n, names=[f"action_{i}" for i in range(n)])


def describe(env: gym.Env) -> str:
    """A plain-text rendering of one bot's state for an LLM (the advisor issue makes it richer)."""
    base = env.unwrapped
    if hasattr(base, "mission") and hasattr(base, "agent_pos"):
        carrying = base.carrying.type if base.carrying is not None else "nothing"
        return (
            f"Mission: {base.mission}\nAgent at {tuple(int(v) for v in base.agent_pos)} facing {int(base.agent_dir)}"
            f", carrying {carrying}.\nGrid:\n{base.pprint_grid()}"
        )
    return f"Observation of {base.spec.id if base.spec else type(base).__name__}"
