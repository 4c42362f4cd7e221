from __future__ import annotations

import msgspec
import numpy as np
import pytest

from protos import Array, BiasUpdate
from services.actor.bias import BiasRejected, BiasTable


def _update(bias: list[float], ttl_s: float = 1.0, bots: list[int] | None = None) -> BiasUpdate:
    return BiasUpdate(
        run="test",
        actor="a1",
        bots=bots or [],
        bias=Array.from_numpy(np.array(bias, dtype=np.float32)),
        ttl_s=ttl_s,
        advice_ids=["x"],
        created_at=0.0,
    )


def test_bias_applies_to_target_bots_until_its_remaining_ttl_runs_out() -> None:
    table = BiasTable(num_bots=3, n_actions=3, max_abs_bias=5.0)
    assert table.apply(_update([1.0, 0.0, -1.0], ttl_s=0.5, bots=[1]), now=100.0) == 1
    np.testing.assert_array_equal(table.current(100.49)[1], [1.0, 0.0, -1.0])
    assert not table.current(100.49)[[0, 2]].any()
    assert not table.current(100.5).any()  # expired by this machine's clock, whatever the router's says
    assert table.active(100.2) == 1 and table.active(101.0) == 0


def test_empty_bot_list_reaches_every_bot_and_a_newer_update_replaces_the_old() -> None:
    table = BiasTable(num_bots=4, n_actions=2, max_abs_bias=5.0)
    table.apply(_update([1.0, -1.0], ttl_s=10), now=0.0)
    table.apply(_update([0.0, 2.0], ttl_s=1, bots=[2]), now=1.0)
    current = table.current(1.5)
    np.testing.assert_array_equal(current[2], [0.0, 2.0])
    np.testing.assert_array_equal(current[0], [1.0, -1.0])
    assert not table.current(2.5)[2].any() and table.current(2.5)[0].any()


def test_received_bias_is_clipped_to_the_actor_bound() -> None:
    table = BiasTable(num_bots=1, n_actions=2, max_abs_bias=3.0)
    table.apply(_update([100.0, -100.0]), now=0.0)
    np.testing.assert_array_equal(table.current(0.1)[0], [3.0, -3.0])


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        (_update([1.0, 2.0]), "shape"),
        (_update([np.nan, 0.0, 0.0]), "non_finite"),
        (_update([0.0, 0.0, 0.0], ttl_s=float("inf")), "non_finite"),
        (_update([0.0, 0.0, 0.0], ttl_s=0.0), "expired"),
        (_update([0.0, 0.0, 0.0], bots=[3]), "bot_range"),
    ],
)
def test_bad_updates_are_refused_and_leave_the_table_alone(update: BiasUpdate, reason: str) -> None:
    table = BiasTable(num_bots=3, n_actions=3, max_abs_bias=3.0)
    with pytest.raises(BiasRejected) as refused:
        table.apply(update, now=0.0)
    assert refused.value.reason == reason
    assert table.active(0.0) == 0


def test_clear_removes_every_bias() -> None:
    table = BiasTable(num_bots=2, n_actions=2, max_abs_bias=3.0)
    table.apply(_update([1.0, 0.0]), now=0.0)
    table.clear()
    assert not table.current(0.1).any()


def _state_update(bias: list[float], key: str, ttl_s: float = 10.0, ttl_steps: int = 0) -> BiasUpdate:
    return msgspec.structs.replace(_update(bias, ttl_s), state_key=key, ttl_steps=ttl_steps)


def test_state_advice_reaches_whichever_bot_is_in_that_state_and_wins_over_bot_advice() -> None:
    table = BiasTable(num_bots=3, n_actions=2, max_abs_bias=5.0)
    assert table.apply(_state_update([2.0, -2.0], "s1"), now=0.0) == 0  # reaches bots only when they meet s1
    table.apply(_update([-1.0, 1.0], bots=[2]), now=0.0)
    lookup = table.lookup(0.5, tick=0, keys=["s0", "s1", "s1"])
    np.testing.assert_array_equal(lookup.bias, [[0.0, 0.0], [2.0, -2.0], [2.0, -2.0]])
    assert lookup.from_state.tolist() == [False, True, True] and lookup.from_bot.tolist() == [False, False, False]
    lookup = table.lookup(0.5, tick=0, keys=["s1", "s0", "s0"])
    np.testing.assert_array_equal(lookup.bias, [[2.0, -2.0], [0.0, 0.0], [-1.0, 1.0]])
    assert lookup.from_bot.tolist() == [False, False, True]
    assert table.has_state_advice("s1", 0.5, 0) and not table.has_state_advice("s0", 0.5, 0)


def test_advice_about_an_exact_state_reaches_only_that_state_and_wins_over_advice_about_its_observation() -> None:
    table = BiasTable(num_bots=3, n_actions=2, max_abs_bias=5.0)
    table.apply(_state_update([1.0, 0.0], "o1"), now=0.0)  # an LLM's: about what the policy sees
    assert not table.may_have_exact_advice(0.0)  # the actor need not compute exact keys yet
    table.apply(_state_update([0.0, 2.0], "full:x1", ttl_s=2.0), now=0.0)  # the expert's: about one exact state
    assert table.may_have_exact_advice(1.9) and not table.may_have_exact_advice(2.0)
    # Bots 0 and 1 look alike (observation o1) but are in different states; bot 2 sees something else.
    lookup = table.lookup(0.5, tick=0, keys=["o1", "o1", "o2"], exact_keys=["full:x1", "full:x2", "full:x1"])
    np.testing.assert_array_equal(lookup.bias, [[0.0, 2.0], [1.0, 0.0], [0.0, 2.0]])
    assert lookup.from_state.tolist() == [True, True, True]
    lookup = table.lookup(2.5, tick=0, keys=["o1", "o1", "o2"], exact_keys=["full:x1", "full:x2", "full:x1"])
    np.testing.assert_array_equal(lookup.bias, [[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # the exact advice expired


def test_advice_expires_by_steps_as_well_as_time_and_bot_advice_ends_with_the_episode() -> None:
    table = BiasTable(num_bots=2, n_actions=2, max_abs_bias=5.0)
    table.apply(_state_update([1.0, 0.0], "s", ttl_s=100.0, ttl_steps=5), now=0.0, tick=10)
    table.apply(_update([0.0, 1.0], ttl_s=100.0, bots=[1]), now=0.0, tick=10)
    assert table.current(1.0, tick=14, keys=["s", "t"]).any(axis=1).tolist() == [True, True]
    table.end_episodes([0, 1])
    assert table.current(1.0, tick=14, keys=["s", "t"]).any(axis=1).tolist() == [True, False]  # states outlive it
    assert not table.current(1.0, tick=15, keys=["s", "t"]).any()  # 5 steps on: the state's advice is gone


def test_only_live_state_advice_is_counted_as_advised_states() -> None:
    table = BiasTable(num_bots=1, n_actions=2, max_abs_bias=5.0)
    table.apply(_state_update([1.0, 0.0], "s", ttl_s=100.0, ttl_steps=5), now=0.0, tick=0)
    table.apply(_state_update([0.0, 1.0], "t", ttl_s=1.0), now=0.0, tick=0)
    assert table.live_states(0.5, tick=1) == 2
    assert table.live_states(2.0, tick=1) == 1  # "t" outlived its seconds: still in the table, not advised
    assert table.live_states(2.0, tick=5) == 0 and len(table.states) == 2


def test_the_state_table_is_bounded_and_forgets_the_least_recently_met() -> None:
    table = BiasTable(num_bots=1, n_actions=2, max_abs_bias=5.0, max_states=2)
    table.apply(_state_update([1.0, 0.0], "a"), now=0.0)
    table.apply(_state_update([1.0, 0.0], "b"), now=0.0)
    table.lookup(0.1, keys=["a"])  # a met again: b is now the least recent
    table.apply(_state_update([1.0, 0.0], "c"), now=0.0)
    assert list(table.states) == ["a", "c"]


def test_a_zero_bias_for_a_state_removes_its_advice() -> None:
    table = BiasTable(num_bots=1, n_actions=2, max_abs_bias=5.0)
    table.apply(_state_update([1.0, -1.0], "s"), now=0.0)
    table.apply(_state_update([0.0, 0.0], "s"), now=1.0)
    assert not table.has_state_advice("s", 1.0, 0) and not table.lookup(1.0, keys=["s"]).from_state.any()


def test_each_bias_reports_its_reach_and_the_ledger_withholds_it_from_episodes_drawn_beyond() -> None:
    from services.actor.outcomes import OutcomeLedger

    table = BiasTable(num_bots=3, n_actions=2, max_abs_bias=5.0)
    table.apply(msgspec.structs.replace(_state_update([1.0, -1.0], "s"), reach=0.25), now=0.0)
    table.apply(msgspec.structs.replace(_update([0.0, 1.0], bots=[2]), reach=0.5), now=0.0)
    lookup = table.lookup(0.5, keys=["s", "t", "t"])
    assert lookup.reach.tolist() == [0.25, 1.0, 0.5]
    ledger = OutcomeLedger(num_bots=3, control_share=0.0, seed=0)
    ledger.draw[:] = [0.3, 0.9, 0.4]
    lookup.mute(ledger.unreached(lookup.reach))
    np.testing.assert_array_equal(lookup.bias, [[0.0, 0.0], [0.0, 0.0], [0.0, 1.0]])  # 0.3 >= 0.25; 0.4 < 0.5
    assert lookup.advisors[0] == () and lookup.from_bot.tolist() == [False, False, True]
    with pytest.raises(BiasRejected) as refused:
        table.apply(msgspec.structs.replace(_update([0.0, 1.0]), reach=1.5), now=0.0)
    assert refused.value.reason == "range"


def test_a_zero_bias_that_names_its_advisors_is_advice_in_force_and_a_clearing_one_is_not() -> None:
    """The null advisor's zero bias is advice (its steps count as advised); the router's clearing zero bias, which
    names no advisor, still removes a state's advice and is no advice for a bot."""
    table = BiasTable(num_bots=3, n_actions=2, max_abs_bias=5.0)
    table.apply(msgspec.structs.replace(_state_update([0.0, 0.0], "s"), advisors=["null"]), now=0.0)
    table.apply(_update([0.0, 0.0], bots=[2]), now=0.0)  # a per-bot clear (kill, or trust down to 0)
    assert table.has_state_advice("s", 0.5, 0)
    lookup = table.lookup(0.5, keys=["s", "t", "t"])
    assert not lookup.bias.any() and lookup.advisors[0] == ("null",)
    assert lookup.in_force.tolist() == [True, False, False]
    lookup.mute(np.array([True, False, False]))  # the control group: no advice, zero or not
    assert not lookup.in_force.any()
    table.apply(_update([1.0, 0.0], bots=[1]), now=0.0)  # no advisors named (an older router): its value shows it
    assert table.lookup(0.5, keys=["s", "t", "t"]).in_force.tolist() == [True, True, False]
    table.apply(_state_update([0.0, 0.0], "s"), now=1.0)
    assert not table.has_state_advice("s", 1.0, 0)
