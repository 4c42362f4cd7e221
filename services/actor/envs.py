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
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX
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


def action_space_of(spec: PolicySpec, minigrid_names: bool) -> ActionSpace:
    """The discrete action space the policy acts in, with MiniGrid's action names where they apply."""
    return ActionSpace(n=spec.n_actions, names=action_names(spec.n_actions, minigrid_names))


def action_names(n_actions: int, minigrid_names: bool) -> list[str]:
    if minigrid_names and n_actions == len(Actions):
        return [action.name for action in Actions]
    return [f"action_{i}" for i in range(n_actions)]


VIEW = 7
"""MiniGrid's egocentric view is 7x7; the agent stands at column 3 of the last row, facing up the view."""
OBJECT_NAMES = {index: name for name, index in OBJECT_TO_IDX.items()}
_COLOURS = {index: name for name, index in COLOR_TO_IDX.items()}
_DOOR_STATES = {index: name for name, index in STATE_TO_IDX.items()}
_BACKGROUND = {"unseen", "empty", "wall", "floor"}


def describe(env: gym.Env, observation: np.ndarray) -> str:
    """What one bot sees, in words, for an LLM: mission, each visible object with its position relative to the
    agent, what is right in front, what it carries, door states. Non-MiniGrid envs get their raw observation."""
    base = env.unwrapped
    if not hasattr(base, "mission"):
        return f"Observation: {np.array2string(observation, precision=3, max_line_width=200)}"
    view = observation.reshape(VIEW, VIEW, 3).astype(int)
    lines = [f"Mission: {base.mission}."]
    carried = view[VIEW // 2, VIEW - 1]
    lines.append(f"You carry {_thing(carried) if OBJECT_NAMES[carried[0]] not in _BACKGROUND else 'nothing'}.")
    ahead = view[VIEW // 2, VIEW - 2]
    lines.append(
        f"Directly in front of you: {_thing(ahead) if OBJECT_NAMES[ahead[0]] != 'unseen' else 'nothing visible'}."
    )
    seen = []
    for column in range(VIEW):
        for row in range(VIEW):
            cell = view[column, row]
            if (column, row) == (VIEW // 2, VIEW - 1) or OBJECT_NAMES[cell[0]] in _BACKGROUND:
                continue
            forward, sideways = VIEW - 1 - row, column - VIEW // 2
            where = [f"{forward} step{'s' if forward != 1 else ''} ahead"] if forward else []
            if sideways:
                where.append(f"{abs(sideways)} to the {'right' if sideways > 0 else 'left'}")
            seen.append(f"{_thing(cell)} ({', '.join(where)})")
    lines.append("You see: " + ("; ".join(seen) if seen else "no objects, only walls and floor") + ".")
    return "\n".join(lines)


def full_state_of(env: gym.Env) -> np.ndarray:
    """The whole MiniGrid grid as (object, colour, state) codes, the agent's cell holding (agent, 0, direction):
    privileged information for expert advisors (`StateDigest.full_state`)."""
    base = env.unwrapped
    encoded = base.grid.encode()  # type: ignore[attr-defined]
    encoded[base.agent_pos[0], base.agent_pos[1]] = (OBJECT_TO_IDX["agent"], 0, base.agent_dir)  # type: ignore[attr-defined]
    return encoded


def _thing(cell: np.ndarray) -> str:
    kind, colour = OBJECT_NAMES[cell[0]], _COLOURS.get(cell[1], "")
    if kind == "door":
        return f"a {_DOOR_STATES[cell[2]]} {colour} door"
    return f"the {kind}" if kind == "goal" else f"a {colour} {kind}"
