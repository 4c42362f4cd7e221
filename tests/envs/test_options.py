"""Options, situations and skills on real MiniGrid rooms: the skills, told the right option by the privileged
planner, solve DoorKey from the bot's own view; situations are few; generic envs declare none."""

from __future__ import annotations

import numpy as np
import pytest
from minigrid.core.actions import Actions

from ala.envs import adapter_for
from ala.envs.minigrid_options import OPTIONS, PICK_UP, situation, skill_action


def follow_planner_options(env_id: str, episodes: int) -> tuple[int, set[str]]:
    """Episodes won by taking the advised option's skill action every step (a random turn or step where the skill
    has terminated), and the situations met."""
    adapter = adapter_for(env_id)
    env = adapter.make()
    rng = np.random.default_rng(0)
    wins, situations = 0, set()
    for seed in range(episodes):
        observation, _ = env.reset(seed=seed)
        while True:
            situations.add(adapter.situation(observation).key)
            option = adapter.planner_option(env)
            action = adapter.skill_action(option, observation)
            observation, reward, terminated, truncated, _ = env.step(int(rng.integers(3)) if action is None else action)
            if terminated or truncated:
                wins += reward > 0
                break
    env.close()
    return wins, situations


@pytest.mark.parametrize(("env_id", "least_wins"), [("MiniGrid-DoorKey-5x5-v0", 48), ("MiniGrid-DoorKey-8x8-v0", 45)])
def test_skills_told_the_right_option_solve_doorkey_from_the_bots_own_view(env_id: str, least_wins: int) -> None:
    wins, situations = follow_planner_options(env_id, 50)
    assert wins >= least_wins
    assert len(situations) <= 40  # a few dozen abstract situations, against thousands of observations


def test_situations_say_what_is_carried_ahead_and_in_sight() -> None:
    adapter = adapter_for("MiniGrid-DoorKey-5x5-v0")
    env = adapter.make()
    observation, _ = env.reset(seed=1)  # the key right ahead, a locked door to the left (seen in the test above)
    found = situation(observation)
    assert found.name == "carry=nothing;front=key;see=key,locked door" and found.key.startswith("sit:")
    assert "Directly in front of you: a key" in found.text
    assert skill_action(PICK_UP, observation) == int(Actions.pickup)
    observation, *_ = env.step(int(Actions.pickup))
    assert situation(observation).name.startswith("carry=key;")
    assert skill_action(PICK_UP, observation) is None  # picked up: the option has terminated
    env.close()


def test_envs_without_options_keep_per_step_advice_only() -> None:
    adapter = adapter_for("CartPole-v1")
    assert adapter.options == () and adapter.probe_spec().option_names == []
    assert adapter.situation(np.zeros(4, np.float32)) is None
    assert adapter_for("MiniGrid-DoorKey-5x5-v0").probe_spec().option_names == list(OPTIONS)
