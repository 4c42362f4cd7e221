"""The actor's option executor on real DoorKey observations: an advised option becomes its skill's action, bounded
together with per-step advice, only in the situation it is about."""

from __future__ import annotations

import numpy as np
from minigrid.core.actions import Actions

from ala.envs import adapter_for
from ala.envs.minigrid_options import OPTIONS, PICK_UP
from ala.rl.trajectory import observation_key
from protos import Array, BiasUpdate
from services.actor.bias import BiasTable
from services.actor.options import OptionExecutor

B_MAX = 2.0


def option_update(situation_key: str, option: int, strength: float = 1.5) -> BiasUpdate:
    bias = np.full(len(OPTIONS), -strength / len(OPTIONS), np.float32)
    bias[option] += strength
    return BiasUpdate(
        run="test",
        actor="a1",
        bots=[],
        bias=Array.from_numpy(bias),
        ttl_s=30.0,
        advice_ids=["o1"],
        created_at=0.0,
        state_key=situation_key,
        options=True,
        advisors=["llm-0"],
        reach=0.5,
    )


def test_an_advised_option_biases_its_skills_action_in_its_situation_only() -> None:
    adapter = adapter_for("MiniGrid-DoorKey-5x5-v0")
    env = adapter.make()
    facing_key, _ = env.reset(seed=1)  # the key right ahead
    elsewhere, _ = env.reset(seed=2)
    assert adapter.situation(facing_key).key != adapter.situation(elsewhere).key
    observations = np.stack([facing_key, elsewhere])
    keys = [observation_key(o) for o in observations]
    bias = BiasTable(num_bots=2, n_actions=7, max_abs_bias=B_MAX)
    per_step = np.zeros(7, np.float32)
    per_step[int(Actions.pickup)] = 1.5  # per-step advice agreeing with the option: the sum is clipped to b_max
    bias.apply(
        BiasUpdate(
            run="test", actor="a1", bots=[0], bias=Array.from_numpy(per_step), ttl_s=30.0, advice_ids=[], created_at=0
        ),
        now=0.0,
    )
    executor = OptionExecutor(adapter, bias)
    assert executor.compose(bias.lookup(0.1), observations, keys, 0.1, 0).bias[1].sum() == 0  # no option advice yet
    executor.table.apply(option_update(adapter.situation(facing_key).key, PICK_UP), now=0.0)
    lookup = executor.compose(bias.lookup(0.1), observations, keys, 0.1, 0)
    assert lookup.bias[0].argmax() == int(Actions.pickup) and lookup.bias[0].max() == B_MAX
    assert not lookup.bias[1].any() and lookup.advisors[1] == ()  # another situation: no option advice
    assert lookup.advisors[0] == ("llm-0",) and lookup.in_force[0]
    assert executor.advised(keys[0], 0.1, 0) and not executor.advised(keys[1], 0.1, 0)
    env.close()


def test_an_option_that_has_terminated_leaves_the_policy_alone() -> None:
    adapter = adapter_for("MiniGrid-DoorKey-5x5-v0")
    env = adapter.make()
    env.reset(seed=1)
    carrying, *_ = env.step(int(Actions.pickup))
    executor = OptionExecutor(adapter, BiasTable(num_bots=1, n_actions=7, max_abs_bias=B_MAX))
    executor.table.apply(option_update(adapter.situation(carrying).key, PICK_UP), now=0.0)
    lookup = executor.compose(executor.bias.lookup(0.1), carrying[None], [observation_key(carrying)], 0.1, 0)
    assert not lookup.bias.any() and not lookup.in_force.any()  # picked up already: nothing to follow
    env.close()
