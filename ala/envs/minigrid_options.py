"""MiniGrid's options, situations and skills (see `ala.envs.options`), from the bot's own 7x7 view only.

The view is `view[column, row]`: the agent stands at column 3 of the last row, facing up the view (row - 1), and
its own cell shows what it carries. Skills search breadth-first over (column, row, direction) in the view, through
floor, open doors and the goal, never through walls, lava or unseen cells; what is out of sight is explored for.

Colours are left out of situations and options on purpose: in DoorKey the key and door share a colour drawn per
episode, and keeping it would multiply the situations an LLM must answer by six without changing the answer.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from minigrid.core.actions import Actions
from minigrid.core.constants import OBJECT_TO_IDX, STATE_TO_IDX

from ala.envs.options import Situation

VIEW = 7
AGENT_CELL, AHEAD_CELL = (VIEW // 2, VIEW - 1), (VIEW // 2, VIEW - 2)
KEY, DOOR, GOAL, BALL, BOX = (OBJECT_TO_IDX[name] for name in ("key", "door", "goal", "ball", "box"))
UNSEEN, EMPTY, WALL, FLOOR, LAVA = (OBJECT_TO_IDX[name] for name in ("unseen", "empty", "wall", "floor", "lava"))
OPEN = STATE_TO_IDX["open"]
STATE_NAMES = {index: name for name, index in STATE_TO_IDX.items()}
OBJECT_NAMES = {index: name for name, index in OBJECT_TO_IDX.items()}
PICKABLE = {KEY, BALL, BOX}
BACKGROUND = {UNSEEN, EMPTY, WALL, FLOOR}

OPTIONS = (
    "go to the key",
    "go to the door",
    "go to the goal",
    "go to the ball",
    "go to the box",
    "pick up",
    "open the door",
    "drop",
    "explore",
)
GO_TO = {0: KEY, 1: DOOR, 2: GOAL, 3: BALL, 4: BOX}
PICK_UP, OPEN_DOOR, DROP, EXPLORE = 5, 6, 7, 8
MOVES = ((0, -1), (1, 0), (0, 1), (-1, 0))
"""Direction -> (column, row) step in the view; 0 is the way the agent faces (up the view); right turns add 1."""


def _label(cell: np.ndarray) -> str:
    kind = int(cell[0])
    if kind == DOOR:
        return f"{STATE_NAMES[int(cell[2])]} door"
    return OBJECT_NAMES.get(kind, "unknown")


def situation(observation: np.ndarray) -> Situation:
    """What is carried, what is directly ahead, which objects are in sight (doors with their state)."""
    view = observation.reshape(VIEW, VIEW, 3).astype(int)
    carried = view[AGENT_CELL]
    carry = _label(carried) if int(carried[0]) not in BACKGROUND else "nothing"
    ahead = view[AHEAD_CELL]
    front = _label(ahead) if int(ahead[0]) not in BACKGROUND else ("a wall" if int(ahead[0]) == WALL else "nothing")
    seen = sorted(
        {
            _label(view[column, row])
            for column in range(VIEW)
            for row in range(VIEW)
            if (column, row) != AGENT_CELL and int(view[column, row, 0]) not in BACKGROUND
        }
    )
    key = f"carry={carry};front={front};see={','.join(seen)}"
    text = (
        f"You carry {'nothing' if carry == 'nothing' else 'a ' + carry}. Directly in front of you: "
        f"{front if front in ('nothing', 'a wall') else 'a ' + front}. "
        f"In sight: {', '.join(seen) if seen else 'no objects'}."
    )
    return Situation(key, text)


def skill_action(option: int, observation: np.ndarray) -> int | None:
    """The action `option`'s skill takes from this view, or None once the option has terminated here."""
    view = observation.reshape(VIEW, VIEW, 3).astype(int)
    ahead = view[AHEAD_CELL]
    carrying = int(view[AGENT_CELL][0]) not in BACKGROUND
    if option in GO_TO:
        target = GO_TO[option]
        if int(ahead[0]) == target:
            return int(Actions.forward) if target == GOAL else None  # reached (the goal: step onto it)
        return _approach(view, {target})
    if option == PICK_UP:
        if carrying:
            return None  # picked up
        return int(Actions.pickup) if int(ahead[0]) in PICKABLE else _approach(view, PICKABLE)
    if option == OPEN_DOOR:
        if int(ahead[0]) == DOOR:
            return None if int(ahead[2]) == OPEN else int(Actions.toggle)
        return _approach(view, {DOOR}, closed_doors_only=True)
    if option == DROP:
        if not carrying:
            return None
        return int(Actions.drop) if int(ahead[0]) in (EMPTY, FLOOR) else _explore(view)
    if option == EXPLORE:
        return _explore(view)
    raise ValueError(f"option {option} outside [0, {len(OPTIONS)})")


def _passable(cell: np.ndarray) -> bool:
    kind = int(cell[0])
    return kind in (EMPTY, FLOOR, GOAL) or (kind == DOOR and int(cell[2]) == OPEN)


def _approach(view: np.ndarray, targets: set[int], closed_doors_only: bool = False) -> int:
    """First action of a shortest way (turns and steps, within the view) to face an object of `targets`; the
    explorer's action when none is in sight or reachable."""
    start = (*AGENT_CELL, 0)
    first: dict[tuple[int, int, int], int | None] = {start: None}
    frontier = deque([start])
    while frontier:
        column, row, direction = frontier.popleft()
        dc, dr = MOVES[direction]
        fc, fr = column + dc, row + dr
        inside = 0 <= fc < VIEW and 0 <= fr < VIEW
        if inside and int(view[fc, fr, 0]) in targets and not (closed_doors_only and int(view[fc, fr, 2]) == OPEN):
            action = first[(column, row, direction)]
            return _explore(view) if action is None else action
        moves = [(int(Actions.left), (column, row, (direction - 1) % 4))]
        moves.append((int(Actions.right), (column, row, (direction + 1) % 4)))
        if inside and _passable(view[fc, fr]) and int(view[fc, fr, 0]) != GOAL:
            moves.append((int(Actions.forward), (fc, fr, direction)))
        for action, state in moves:
            if state not in first:
                first[state] = action if first[(column, row, direction)] is None else first[(column, row, direction)]
                frontier.append(state)
    return _explore(view)


def _explore(view: np.ndarray) -> int:
    """Forward while the way ahead is open; otherwise turn towards the side with more open floor in sight."""
    if _passable(view[AHEAD_CELL]) and int(view[AHEAD_CELL][0]) != GOAL:
        return int(Actions.forward)
    open_cells = np.isin(view[:, :, 0], (EMPTY, FLOOR))
    left, right = int(open_cells[: VIEW // 2].sum()), int(open_cells[VIEW // 2 + 1 :].sum())
    return int(Actions.left) if left > right else int(Actions.right)


def planner_option(full_state: np.ndarray) -> int | None:
    """The right option for an exact DoorKey-like state (privileged: it reads the whole grid, as the expert does):
    fetch the key, open the door, reach the goal. The upper bound of option advice; None without a key, door and
    goal to plan over."""
    grid = full_state.astype(int)
    kinds = grid[:, :, 0]
    ((x, y),) = np.argwhere(kinds == OBJECT_TO_IDX["agent"])
    direction = int(grid[x, y, 2])
    dx, dy = ((1, 0), (0, 1), (-1, 0), (0, -1))[direction]  # MiniGrid's DIR_TO_VEC
    ahead = grid[x + dx, y + dy] if 0 <= x + dx < grid.shape[0] and 0 <= y + dy < grid.shape[1] else None
    doors = np.argwhere(kinds == DOOR)
    if not (kinds == GOAL).any():
        return None
    door_open = not len(doors) or int(grid[doors[0][0], doors[0][1], 2]) == OPEN
    if door_open:
        return OPTIONS.index("go to the goal")
    if (kinds == KEY).any():  # the key still lies in the room
        return PICK_UP if ahead is not None and int(ahead[0]) == KEY else OPTIONS.index("go to the key")
    return OPEN_DOOR
