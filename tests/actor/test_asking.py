"""Which digests the actor sends: states with no advice yet, once per state, at a bounded rate."""

from __future__ import annotations

from services.actor.asking import Asker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _asker(clock: Clock, rate_per_s: float = 100.0, bot_interval_s: float = 0.0) -> Asker:
    return Asker(4, rate_per_s, bot_interval_s, ask_again_s=5.0, max_keys=100, clock=clock)


def test_a_new_state_is_asked_about_once_by_one_bot_until_ask_again_passes() -> None:
    clock = Clock()
    asker = _asker(clock)
    keys = ["s1", "s1", "s2", "s3"]
    assert asker.choose(keys, has_advice=lambda key: key == "s3") == [(0, "new_state"), (2, "new_state")]
    clock.now = 1.0
    assert asker.choose(keys, has_advice=lambda key: False) == [(3, "new_state")]  # s3's advice expired
    clock.now = 6.1  # every state may be asked about again; bot 1, never asked, goes first for s1
    assert asker.choose(keys, has_advice=lambda key: False) == [(1, "new_state"), (2, "new_state"), (3, "new_state")]


def test_requests_and_periodic_digests_skip_the_novelty_test() -> None:
    clock = Clock()
    asker = _asker(clock)
    asker.choose(["a", "b", "c", "d"], has_advice=lambda key: False)
    clock.now = 1.0
    assert asker.choose(["a", "b", "c", "d"], lambda key: True, requested=[1, 9]) == [(1, "requested")]
    assert [reason for _, reason in asker.choose(["a"] * 4, lambda key: True, periodic=True)] == ["periodic"] * 4


def test_overall_rate_and_per_bot_interval_bound_the_digests() -> None:
    clock = Clock()
    asker = _asker(clock, rate_per_s=4.0, bot_interval_s=0.5)
    per_bot = [0] * 4
    for step in range(100):  # 10 s of every bot meeting a new state every 0.1 s
        clock.now = step * 0.1
        for bot, _ in asker.choose([f"{step}-{bot}" for bot in range(4)], has_advice=lambda key: False):
            per_bot[bot] += 1
    assert 30 <= sum(per_bot) <= 41  # at most 4/s over 10 s, plus the initial burst (0.1-s steps waste some)
    assert min(per_bot) >= 7  # the rate is shared: every bot gets its turn
    assert asker.limited > 0
    clock.now = 100.0
    first = asker.choose(["x", "y", "z", "w"], has_advice=lambda key: False)
    clock.now = 100.2
    again = asker.choose(["x2", "y2", "z2", "w2"], has_advice=lambda key: False)
    assert [bot for bot, _ in first] and not again  # each bot waits bot_interval_s between digests
