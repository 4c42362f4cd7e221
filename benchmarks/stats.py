"""The learning benchmarks' statistics: when a run reached the threshold, censoring, paired ratios and intervals.

- **Reached** means two consecutive evaluations at or above the threshold: one evaluation of 32 episodes can be
  lucky. The run's figure is the env steps (and seconds) of the first of the two.
- **Censored**: a run that never reached it, stopped by its step or time budget, counts at the env steps it actually
  ran (its last evaluation), flagged `>=`: its true figure is at least that.
- **Paired ratios**, seed by seed against the baseline run on the same seed: a censored arm makes the ratio a lower
  bound (`>=`), a censored baseline an upper bound (`<=`), both censored tells nothing (`?`).
- **Aggregates** (rliable, Agarwal et al. 2021): the interquartile mean over seeds with a 95% stratified bootstrap
  interval; the geometric mean of the paired ratios with its interval; and the probability that the arm needs fewer
  env steps than the baseline. An aggregate over censored figures is a bound in the same direction as they all are,
  or `?` when they point both ways.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from rliable import library as rly
from rliable import metrics as rly_metrics

THRESHOLD = 0.8
CONFIRMING_EVALUATIONS = 2
"""Consecutive evaluations at or above the threshold that count as having reached it."""
BOOTSTRAP_REPS = 2000
CONFIDENCE = 0.95

Bound = Literal["", ">=", "<=", "?"]
Point = tuple[int, float, float]
"""(env steps, seconds since start, evaluation return): one evaluation."""


def crossing(curve: Sequence[Point], threshold: float = THRESHOLD) -> Point | None:
    """The first evaluation that starts `CONFIRMING_EVALUATIONS` in a row at or above `threshold`, or None."""
    run = 0
    for index, point in enumerate(curve):
        run = run + 1 if point[2] >= threshold else 0
        if run == CONFIRMING_EVALUATIONS:
            return curve[index - CONFIRMING_EVALUATIONS + 1]
    return None


@dataclass(frozen=True)
class Figure:
    """A number and which way it may be wrong: exact (""), at least (">="), at most ("<="), unknown ("?")."""

    value: float
    bound: Bound = ""

    def show(self, digits: int = 2, thousands: bool = False) -> str:
        if self.bound == "?" or math.isnan(self.value):
            return "?"
        number = f"{self.value:,.0f}" if thousands else f"{self.value:.{digits}f}"
        return f"{self.bound}{number}" if self.bound else number


def merge_bounds(bounds: Sequence[Bound]) -> Bound:
    """The bound of an aggregate (a mean, a quantile) of figures with these bounds: monotone in each of them."""
    kinds = {bound for bound in bounds if bound}
    if not kinds:
        return ""
    return kinds.pop() if len(kinds) == 1 and "?" not in kinds else "?"


def paired_ratio(arm: Figure, baseline: Figure) -> Figure:
    """arm / baseline on one seed, with the direction censoring allows."""
    value = arm.value / baseline.value if baseline.value else float("nan")
    if arm.bound and baseline.bound:
        return Figure(value, "?")
    if arm.bound == ">=" or baseline.bound == "<=":
        return Figure(value, ">=")
    if arm.bound == "<=" or baseline.bound == ">=":
        return Figure(value, "<=")
    return Figure(value)


def _interval(values: Sequence[float], aggregate: str) -> tuple[float, float, float]:
    """(point, low, high) of an aggregate over seeds, with a stratified bootstrap interval (rliable)."""
    scores = np.asarray(values, dtype=float).reshape(-1, 1)  # runs x tasks: one task
    functions = {"iqm": rly_metrics.aggregate_iqm, "mean": rly_metrics.aggregate_mean}
    point, interval = rly.get_interval_estimates(
        {"arm": scores},
        lambda x: np.array([functions[aggregate](x)]),
        reps=BOOTSTRAP_REPS,
        confidence_interval_size=CONFIDENCE,
    )
    (low,), (high,) = interval["arm"]
    return float(point["arm"][0]), float(low), float(high)


@dataclass(frozen=True)
class Summary:
    """An aggregate over seeds with its 95% interval, and the bound every censored figure in it imposes."""

    point: float
    low: float
    high: float
    bound: Bound

    def show(self, digits: int = 2, thousands: bool = False) -> str:
        if self.bound == "?" or math.isnan(self.point):
            return "?"
        fmt = (lambda v: f"{v:,.0f}") if thousands else (lambda v: f"{v:.{digits}f}")
        return f"{self.bound}{fmt(self.point)} ({fmt(self.low)}-{fmt(self.high)})"


def iqm(figures: Sequence[Figure]) -> Summary:
    """Interquartile mean over seeds, 95% stratified bootstrap interval."""
    if not figures:
        return Summary(float("nan"), float("nan"), float("nan"), "")
    point, low, high = _interval([f.value for f in figures], "iqm")
    return Summary(point, low, high, merge_bounds([f.bound for f in figures]))


def geometric_mean_ratio(ratios: Sequence[Figure]) -> Summary:
    """Geometric mean of paired ratios (the mean of their logarithms, bootstrapped), 95% interval."""
    usable = [r for r in ratios if r.value > 0 and math.isfinite(r.value)]
    if not usable:
        return Summary(float("nan"), float("nan"), float("nan"), "?")
    point, low, high = _interval([math.log(r.value) for r in usable], "mean")
    return Summary(math.exp(point), math.exp(low), math.exp(high), merge_bounds([r.bound for r in usable]))


def probability_fewer_steps(arm: Sequence[Figure], baseline: Sequence[Figure]) -> float:
    """P(a run of the arm needs fewer env steps than a run of the baseline), ties counting half (rliable's
    probability of improvement on negated steps). Censored runs count at the steps they ran."""
    if not arm or not baseline:
        return float("nan")
    x = -np.array([f.value for f in arm], dtype=float).reshape(-1, 1)
    y = -np.array([f.value for f in baseline], dtype=float).reshape(-1, 1)
    return float(rly_metrics.probability_of_improvement(x, y))
