"""MiniGrid and BabyAI (both registered by the `minigrid` package): the agent's 7x7 egocentric view of
(object, colour, state) codes, flattened to 147 float32 values exactly as the policy sees them and one-hot encoded
by the policy; the mission and view in words for LLMs; the whole grid for expert planners.
"""

from __future__ import annotations

from typing import ClassVar

import gymnasium as gym
import minigrid  # noqa: F401  (registers the MiniGrid-* and BabyAI-* environment ids)
import numpy as np
from minigrid.core.actions import Actions
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX
from minigrid.wrappers import ImgObsWrapper

from ala.envs import minigrid_expert, minigrid_options
from ala.envs.base import EnvAdapter, registered_spec
from ala.envs.options import Situation

VIEW = 7
"""MiniGrid's egocentric view is 7x7; the agent stands at column 3 of the last row, facing up the view."""
OBJECT_NAMES = {index: name for name, index in OBJECT_TO_IDX.items()}
COLOUR_NAMES = {index: name for name, index in COLOR_TO_IDX.items()}
DOOR_STATES = {index: name for name, index in STATE_TO_IDX.items()}
ACTION_NAMES = [action.name for action in Actions]
_BACKGROUND = {"unseen", "empty", "wall", "floor"}


class MiniGridAdapter(EnvAdapter):
    family: ClassVar[str] = "minigrid"
    has_text: ClassVar[bool] = True
    onehot_classes: ClassVar[int] = 11
    """Object ids 0-10, colours 0-5 and states 0-2: 11 one-hot classes cover all."""
    options: ClassVar[tuple[str, ...]] = minigrid_options.OPTIONS

    @classmethod
    def matches(cls, env_id: str) -> bool:
        """Every id the minigrid package registers (MiniGrid-*, BabyAI-*), however it is named."""
        try:
            entry_point = registered_spec(env_id).entry_point
        except (gym.error.Error, ImportError):
            return False
        module = entry_point if isinstance(entry_point, str) else getattr(entry_point, "__module__", "")
        return module.split(".")[0] == "minigrid"

    def wrap(self, env: gym.Env) -> gym.Env:
        return ImgObsWrapper(env)  # the image only: mission and direction are constant or in the view

    def action_names(self, n_actions: int) -> list[str]:
        return ACTION_NAMES[:n_actions] if n_actions <= len(ACTION_NAMES) else super().action_names(n_actions)

    def describe(self, env: gym.Env, observation: np.ndarray) -> str:
        """Mission, what is carried, what is right in front, each visible object with its position relative to
        the agent (door states included)."""
        view = observation.reshape(VIEW, VIEW, 3).astype(int)
        lines = [f"Mission: {env.unwrapped.mission}."]  # type: ignore[attr-defined]
        carried = view[VIEW // 2, VIEW - 1]
        lines.append(f"You carry {_thing(carried) if OBJECT_NAMES[carried[0]] not in _BACKGROUND else 'nothing'}.")
        ahead = view[VIEW // 2, VIEW - 2]
        seen_ahead = _thing(ahead) if OBJECT_NAMES[ahead[0]] != "unseen" else "nothing visible"
        lines.append(f"Directly in front of you: {seen_ahead}.")
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

    def summarise(self, observation: np.ndarray) -> str:
        """What is right in front and what is carried."""
        view = observation.reshape(VIEW, VIEW, 3).astype(int)
        ahead, carried = view[VIEW // 2, VIEW - 2, 0], view[VIEW // 2, VIEW - 1, 0]
        carrying = OBJECT_NAMES.get(carried, "?")
        if carrying in ("empty", "unseen", "floor"):
            carrying = "nothing"
        return f"facing {OBJECT_NAMES.get(ahead, '?')}, carrying {carrying}"

    def full_state(self, env: gym.Env) -> np.ndarray:
        """The whole grid as (object, colour, state) codes, the agent's cell holding (agent, 0, direction)."""
        base = env.unwrapped
        encoded = base.grid.encode()  # type: ignore[attr-defined]
        x, y = base.agent_pos  # type: ignore[attr-defined]
        encoded[x, y] = (OBJECT_TO_IDX["agent"], 0, base.agent_dir)  # type: ignore[attr-defined]
        return encoded

    def expert_action(self, env: gym.Env) -> int | None:
        """Shortest-path planning over key, door and goal (`minigrid_expert`): exact for DoorKey rooms."""
        return minigrid_expert.plan(self.full_state(env))

    def situation(self, observation: np.ndarray) -> Situation:
        return minigrid_options.situation(observation)

    def skill_action(self, option: int, observation: np.ndarray) -> int | None:
        return minigrid_options.skill_action(option, observation)

    def plan_ahead(self, full_state: np.ndarray, horizon: int) -> list[tuple[np.ndarray, int]]:
        return minigrid_expert.plan_ahead(full_state, horizon)

    def option_for_state(self, full_state: np.ndarray) -> int | None:
        return minigrid_options.planner_option(full_state)

    def steps_to_goal(self, full_state: np.ndarray) -> int | None:
        return minigrid_expert.steps_to_goal(full_state)

    def return_buckets(self) -> tuple[float, ...]:
        """MiniGrid rewards success with 1 - 0.9 * steps / max_steps, else 0."""
        return (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


def _thing(cell: np.ndarray) -> str:
    kind, colour = OBJECT_NAMES[cell[0]], COLOUR_NAMES.get(cell[1], "")
    if kind == "door":
        return f"a {DOOR_STATES[cell[2]]} {colour} door"
    return f"the {kind}" if kind == "goal" else f"a {colour} {kind}"
