"""The expert: a planner with full knowledge of a MiniGrid room (shortest path to key, door and goal).

It reads the privileged full state (`MiniGridAdapter.full_state`, sent as `StateDigest.full_state`: the whole grid
as MiniGrid codes, the agent's cell holding `(agent, 0, direction)`), searches breadth-first over (position,
direction, carrying the key, door open) and gives the first action of a shortest plan. The expert advisor answers
with it (the upper bound for experiments, and the template for users' own heuristic advisors), and the actor can
judge advice with it (`ALA_ACTOR_JUDGE_RATE`: advice precision).
"""

from __future__ import annotations

from collections import deque

import numpy as np
from minigrid.core.actions import Actions
from minigrid.core.constants import DIR_TO_VEC, OBJECT_TO_IDX, STATE_TO_IDX

AGENT, KEY, DOOR, GOAL = OBJECT_TO_IDX["agent"], OBJECT_TO_IDX["key"], OBJECT_TO_IDX["door"], OBJECT_TO_IDX["goal"]
PASSABLE = {OBJECT_TO_IDX["empty"], OBJECT_TO_IDX["floor"], GOAL}
State = tuple[int, int, int, bool, bool]
"""x, y, direction, carrying the key, door open."""


def plan(full_state: np.ndarray) -> int | None:
    """First action of a shortest plan to the goal, or None if the goal cannot be reached."""
    path = _shortest_path(full_state.astype(int))
    return path[0][1] if path else None


def steps_to_goal(full_state: np.ndarray) -> int | None:
    """Steps of a shortest plan to the goal, or None if the goal cannot be reached."""
    path = _shortest_path(full_state.astype(int))
    return None if path is None else len(path)


def plan_ahead(full_state: np.ndarray, horizon: int) -> list[tuple[np.ndarray, int]]:
    """The first `horizon` steps of a shortest plan: (full state, action) for the state given and the states the
    plan passes through next, each rendered as `MiniGridAdapter.full_state` would encode it when the agent gets
    there. Empty if the goal cannot be reached or the agent stands in the doorway (the door's cell is then hidden
    under the agent, so states beyond it cannot be rendered)."""
    grid = full_state.astype(int)
    path = _shortest_path(grid)
    if path is None:
        return []
    if not (grid[:, :, 0] == DOOR).any():
        return [(full_state, path[0][1])]
    base = grid.copy()
    ((x, y),) = np.argwhere(grid[:, :, 0] == AGENT)
    base[x, y] = (OBJECT_TO_IDX["empty"], 0, 0)  # what lies under the agent off the doorway: floor
    return [(_render(base, state, full_state.dtype), action) for state, action in path[:horizon]]


def _render(base: np.ndarray, state: State, dtype: np.dtype) -> np.ndarray:
    x, y, direction, has_key, door_open = state
    grid = base.copy()
    if has_key:
        grid[grid[:, :, 0] == KEY] = (OBJECT_TO_IDX["empty"], 0, 0)
    if door_open:
        grid[grid[:, :, 0] == DOOR, 2] = STATE_TO_IDX["open"]
    grid[x, y] = (AGENT, 0, direction)
    return grid.astype(dtype)


def _shortest_path(grid: np.ndarray) -> list[tuple[State, int]] | None:
    """(state, action) along a shortest plan to the goal, breadth-first over (position, direction, key, door)."""
    ((x, y),) = np.argwhere(grid[:, :, 0] == AGENT)
    keys = np.argwhere(grid[:, :, 0] == KEY)
    doors = np.argwhere(grid[:, :, 0] == DOOR)
    door_open = bool(len(doors)) and grid[doors[0][0], doors[0][1], 2] == STATE_TO_IDX["open"]
    start: State = (int(x), int(y), int(grid[x, y, 2]), len(keys) == 0, door_open)
    came_from: dict[State, tuple[State, int] | None] = {start: None}
    frontier = deque([start])
    while frontier:
        state = frontier.popleft()
        for action, following, reached_goal in _moves(grid, state):
            if reached_goal:
                path = [(state, action)]
                while (step := came_from[path[-1][0]]) is not None:
                    path.append(step)
                return path[::-1]
            if following not in came_from:
                came_from[following] = (state, action)
                frontier.append(following)
    return None


def _moves(grid: np.ndarray, state: State) -> list[tuple[int, State, bool]]:
    x, y, direction, has_key, door_open = state
    dx, dy = DIR_TO_VEC[direction]
    fx, fy = x + int(dx), y + int(dy)
    ahead = grid[fx, fy, 0] if 0 <= fx < grid.shape[0] and 0 <= fy < grid.shape[1] else OBJECT_TO_IDX["wall"]
    if ahead == KEY and has_key:
        ahead = OBJECT_TO_IDX["empty"]  # picked up already
    moves = [
        (int(Actions.left), (x, y, (direction - 1) % 4, has_key, door_open), False),
        (int(Actions.right), (x, y, (direction + 1) % 4, has_key, door_open), False),
    ]
    if ahead in PASSABLE or ahead == AGENT or (ahead == DOOR and door_open):
        moves.append((int(Actions.forward), (fx, fy, direction, has_key, door_open), ahead == GOAL))
    if ahead == KEY and not has_key:
        moves.append((int(Actions.pickup), (x, y, direction, True, door_open), False))
    if ahead == DOOR and not door_open and has_key:
        moves.append((int(Actions.toggle), (x, y, direction, has_key, True), False))
    return moves
