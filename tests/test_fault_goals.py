"""The fault matrix's judgement (benchmarks/faults.py): the step p99 read from the actor's histogram, and a run that
fails when any promise does, not only exactly-once."""

from __future__ import annotations

import math

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.faults import Counts, Goals, NoFault, Result, buckets, failures, p99_ms, window
from services.actor.metrics import STEP_BUCKETS

CLEAN = (100, 0, 100, 0)
"""Exactly-once kept: 100 chunks stored, all settled, 100 trained ids, none twice."""


def _scrape(steps: np.ndarray) -> Counts:
    """The actor's step histogram after observing `steps` (seconds), read as the benchmark reads it
    (`tests.support.scrape`'s keys, from the exposition text)."""
    registry = CollectorRegistry()
    histogram = Histogram("ala_actor_step_seconds", "steps", buckets=STEP_BUCKETS, registry=registry)
    for step in steps:
        histogram.observe(float(step))
    samples = {
        sample.name + str(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }
    return buckets(samples)


def _steps(slow_ms: float, n: int = 2000) -> Counts:
    """A window of `n` steps: 98% at 2 ms, the slowest 2% at `slow_ms` (the p99 in its bucket)."""
    slow = n // 50
    return _scrape(np.array([2e-3] * (n - slow) + [slow_ms * 1e-3] * slow))


def test_a_3_ms_steps_p99_is_read_within_half_a_millisecond() -> None:
    steps = np.random.default_rng(0).gamma(shape=50.0, scale=3e-3 / 50, size=5000)  # ~3 ms, a tail to ~4 ms
    assert len(STEP_BUCKETS) < 40 and 0.015 in STEP_BUCKETS  # the budget alert's threshold is a bound
    assert abs(p99_ms(_scrape(steps)) - np.percentile(steps, 99) * 1e3) < 0.5


def test_the_p99_is_of_the_window_between_two_scrapes_interpolated_within_its_bucket() -> None:
    before = {0.001: 0.0, 0.002: 100.0, 0.003: 100.0, math.inf: 100.0}
    after = {0.001: 0.0, 0.002: 100.0, 0.003: 200.0, math.inf: 200.0}  # the window: 100 steps in (2, 3] ms
    assert math.isclose(p99_ms(window(before, after)), 2.0 + 0.99)
    assert p99_ms({0.001: 0.0, 0.002: 1.0, math.inf: 100.0}) == 2.0  # in +Inf: the highest finite bound
    assert math.isnan(p99_ms(window(after, after)))  # no steps in the window: nothing to judge


def test_every_broken_promise_fails_the_run_with_its_figure() -> None:
    goals = Goals(max_p99_ratio=1.5, max_resume_s=10.0)
    steady = _steps(3.0)
    results = [
        Result("none", steady, _steps(4.0), steady, 0.1, 0.2),  # the control: a no-fault window, no promise
        Result("broker", steady, _steps(3.2), _steps(9.0), 0.3, 0.4),
        Result("router", steady, _steps(6.0), steady, 0.1, 0.1),
        Result("learner", steady, steady, steady, 12.5, None),
        Result("advisor", steady, {}, steady, 0.1, 0.1),
        Result("actor", steady, {}, _steps(9.0), 2.0, 2.5),  # a fresh actor: no step "during" its own fault
    ]
    assert failures(results[:2], CLEAN, goals) == []  # a slow recovery (broker: 9 ms) is shown, not judged
    no_fault = NoFault.of(results)
    assert no_fault.windows == 8 and no_fault.lowest_ms < no_fault.p99_ms < no_fault.highest_ms
    failed = failures(results, (100, 2, 99, 1), goals)
    assert failed[:2] == [
        "exactly-once: 2 of 100 stored chunks were never settled by a learner (goal 0)",
        "exactly-once: 1 of 99 trained chunk ids appear twice (goal 0)",
    ]
    router = p99_ms(results[2].during)
    assert 5.5 < router <= 6.0
    assert failed[2].startswith(
        f"router: actor step p99 during the fault {router:.2f} ms is {no_fault.ratio(results[2]):.2f}x"
    )
    assert failed[3:] == [
        "learner: training resumed (learner's next version) 12.5 s after the restart (goal <= 10 s)",
        "learner: training resumed (actor on it) not within 60 s after the restart (goal <= 10 s)",
        f"advisor: actor step p99 not measured (during nan ms, no fault {no_fault.p99_ms:.2f} ms)",
    ]


def test_a_flow_controlled_outage_with_too_few_steps_for_a_p99_is_not_judged_but_a_stalled_actor_fails() -> None:
    goals = Goals(max_p99_ratio=1.5, max_resume_s=10.0)
    steady, few_slow = _steps(3.0), {0.03: 0.0, 0.0305: 30.0, math.inf: 30.0}
    results = [Result("broker", steady, few_slow, steady, 0.3, 0.4), Result("router", steady, {}, steady, 0.1, 0.1)]
    failed = failures(results, CLEAN, goals)
    assert len(failed) == 1 and failed[0].startswith("router: actor step p99 not measured")
