"""The learning benchmarks' statistics: one lucky evaluation is no crossing; censored runs bound ratios rightly."""

from __future__ import annotations

from benchmarks.learning import Run, steps_figure, steps_per_seed
from benchmarks.learning_value import final_return, report, withdrawal
from benchmarks.stats import Figure, crossing, geometric_mean_ratio, iqm, merge_bounds, paired_ratio


def _run(arm: str, seed: int, returns: list[float], stopped: str, step: int = 1000) -> Run:
    curve = [((i + 1) * step, float(i), ret) for i, ret in enumerate(returns)]
    reached = crossing(curve)
    return Run("MiniGrid-DoorKey-5x5-v0", arm, seed, reached and reached[0], reached and reached[1], stopped, curve)


def test_reaching_the_threshold_takes_two_consecutive_evaluations_counted_at_the_first() -> None:
    assert crossing([(1, 0.0, 0.85), (2, 0.0, 0.1), (3, 0.0, 0.7)]) is None  # one lucky evaluation
    assert crossing([(1, 0.0, 0.85), (2, 0.0, 0.1), (3, 0.0, 0.81), (4, 0.0, 0.9)]) == (3, 0.0, 0.81)


def test_a_censored_run_counts_at_the_steps_it_ran_and_bounds_its_ratios_the_right_way() -> None:
    never = _run("plain", 1, [0.1, 0.2, 0.3], "time")
    assert steps_figure(never) == Figure(3000, ">=")
    fast = Figure(1000)
    assert paired_ratio(fast, steps_figure(never)).bound == "<="  # the baseline needed at least 3,000
    assert paired_ratio(steps_figure(never), fast).bound == ">="
    assert paired_ratio(steps_figure(never), steps_figure(never)).bound == "?"
    assert merge_bounds(["", ">=", ">="]) == ">=" and merge_bounds([">=", "<="]) == "?" and merge_bounds([""]) == ""


def test_aggregates_carry_their_intervals_and_bounds() -> None:
    exact = iqm([Figure(v) for v in (10.0, 20.0, 30.0, 40.0, 50.0)])
    assert exact.low <= exact.point <= exact.high and exact.bound == ""
    ratio = geometric_mean_ratio([Figure(0.5), Figure(2.0), Figure(1.0, ">=")])
    assert abs(ratio.point - 1.0) < 1e-9 and ratio.bound == ">="
    assert ratio.show().startswith(">=1.00")


def test_the_final_return_is_the_return_at_the_budget_and_absent_for_runs_stopped_at_the_threshold() -> None:
    stopped_early = _run("expert", 1, [0.5, 0.9, 0.95], "threshold")
    at_budget = _run("plain", 1, [0.5, 0.6, 0.4], "steps")
    assert final_return(stopped_early) is None and final_return(at_budget) == 0.4
    text = report([at_budget, stopped_early], 1, "python -m benchmarks.learning_value", {at_budget.env_id: 3000})
    expert_row = [line for line in text.splitlines() if line.startswith("| expert |")][-1]  # after provenance's
    assert "| - |" in expert_row and "commit:" in text
    assert steps_per_seed([stopped_early], [at_budget]) == "s1: 2,000 (<=0.67)"


def test_a_scheduled_strength_is_reported_where_it_halves_and_ends_with_the_policys_evaluation_then() -> None:
    annealed = _run("expert-anneal", 2, [0.1, 0.3, 0.5, 0.85, 0.9], "threshold")
    annealed.series = [(step, {"strength": strength}) for step, strength in zip(
        (1000, 2000, 3000, 4000, 5000), (2.0, 1.5, 1.0, 0.0, 0.0), strict=True)]  # fmt: skip
    constant = _run("expert", 2, [0.85, 0.9], "threshold")
    constant.series = [(1000, {"strength": 2.0}), (2000, {"strength": 2.0})]
    assert withdrawal(annealed) == (3000, 4000) and withdrawal(constant) is None
    text = report([annealed, constant], 1, "python -m benchmarks.learning_value", {annealed.env_id: 5000})
    assert "| expert-anneal | 2 | 3,000 | 0.50 | 4,000 | 0.85 | 4,000 |" in text
    assert "| expert | 2 |" not in text  # no schedule, no row
