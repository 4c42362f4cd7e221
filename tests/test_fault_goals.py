"""The fault matrix's judgement (benchmarks/faults.py): the step p99 read from the actor's histogram, and a run that
fails when any promise does, not only exactly-once."""

from __future__ import annotations

import math

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.faults import Goals, Result, buckets, failures, p99
from services.actor.metrics import STEP_BUCKETS

CLEAN = (100, 0, 100, 0)
"""Exactly-once kept: 100 chunks stored, all settled, 100 trained ids, none twice."""


def _scrape(steps: np.ndarray) -> dict[float, float]:
    """The actor's step histogram after observing `steps`, read as the benchmark reads it (`ala.testing.scrape`'s
    keys, from the exposition text)."""
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


def test_a_3_ms_steps_p99_is_read_within_half_a_millisecond() -> None:
    steps = np.random.default_rng(0).gamma(shape=50.0, scale=3e-3 / 50, size=5000)  # ~3 ms, a tail to ~4 ms
    scraped = _scrape(steps)
    assert len(STEP_BUCKETS) < 40 and 0.015 in STEP_BUCKETS  # the budget alert's threshold is a bound
    assert abs(p99({}, scraped) - np.percentile(steps, 99)) < 0.5e-3


def test_the_p99_is_of_the_window_between_two_scrapes_interpolated_within_its_bucket() -> None:
    before = {0.001: 0.0, 0.002: 100.0, 0.003: 100.0, math.inf: 100.0}
    after = {0.001: 0.0, 0.002: 100.0, 0.003: 200.0, math.inf: 200.0}  # the window: 100 steps in (2, 3] ms
    assert math.isclose(p99(before, after), 0.002 + 0.001 * 0.99)
    assert p99({}, {0.001: 0.0, 0.002: 1.0, math.inf: 100.0}) == 0.002  # in +Inf: the highest finite bound
    assert math.isnan(p99(after, after))  # no steps in the window: nothing to judge


def test_every_broken_promise_fails_the_run_with_its_figure() -> None:
    goals = Goals(max_p99_ratio=1.5, max_resume_s=10.0)
    results = [
        Result("none", 3.0, 5.0, 0.1, 0.2),  # the control: no promise, shown for its noise
        Result("broker", 3.0, 3.2, 0.3, 0.4),
        Result("router", 3.0, 4.8, 0.1, 0.1),
        Result("learner", 3.0, 3.0, 12.5, None),
        Result("advisor", 3.0, math.nan, 0.1, 0.1),
        Result("actor", 3.0, 9.0, 2.0, 2.5),  # a fresh actor: no step "during" its own fault
    ]
    assert failures(results[:2], CLEAN, goals) == []
    failed = failures(results, (100, 2, 99, 1), goals)
    assert failed == [
        "exactly-once: 2 of 100 stored chunks were never settled by a learner (goal 0)",
        "exactly-once: 1 of 99 trained chunk ids appear twice (goal 0)",
        "router: actor step p99 during the fault 4.80 ms is 1.60x the 3.00 ms before it (goal <= 1.5x; the control"
        " without a fault moved 1.67x)",
        "learner: training resumed (learner's next version) 12.5 s after the restart (goal <= 10 s)",
        "learner: training resumed (actor on it) not within 60 s after the restart (goal <= 10 s)",
        "advisor: actor step p99 not measured (before 3.00 ms, during nan ms: no steps scraped)",
    ]
