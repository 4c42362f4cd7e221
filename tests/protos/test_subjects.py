from __future__ import annotations

import pytest

from protos import subjects


def _matches(pattern: str, subject: str) -> bool:
    """NATS wildcard semantics: `*` is one token, `>` the rest."""
    pattern_tokens, subject_tokens = pattern.split("."), subject.split(".")
    for i, token in enumerate(pattern_tokens):
        if token == ">":
            return len(subject_tokens) > i
        if i >= len(subject_tokens) or (token != "*" and token != subject_tokens[i]):
            return False
    return len(pattern_tokens) == len(subject_tokens)


def test_subjects_follow_the_documented_shape() -> None:
    assert subjects.advice_subject("run1", "llm-0") == "ala.run1.advice.llm-0"
    assert subjects.bias_subject("run1", "orin_2") == "ala.run1.bias.orin_2"
    assert subjects.digest_subject("run1", "a") == "ala.run1.digest.a"
    assert subjects.heartbeat_subject("run1", "router", "rtx") == "ala.run1.heartbeat.router.rtx"
    assert subjects.trajectory_subject("run1", "a") == "ala.run1.trajectories.a"
    assert subjects.weights_subject("run1") == "ala.run1.weights"


@pytest.mark.parametrize("bad", ["", "a.b", "a b", "*", ">", "x" * 65, "ünï"])
def test_names_that_would_break_a_subject_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="letters, digits"):
        subjects.advice_subject("run", bad)
    with pytest.raises(ValueError):
        subjects.trajectory_subject(bad, "actor")


def test_wildcards_cover_their_subjects() -> None:
    assert _matches(subjects.advice_wildcard("r"), subjects.advice_subject("r", "x"))
    assert _matches(subjects.digest_wildcard("r"), subjects.digest_subject("r", "x"))
    assert _matches(subjects.trajectory_wildcard("r"), subjects.trajectory_subject("r", "x"))
    assert _matches(subjects.heartbeat_wildcard("r"), subjects.heartbeat_subject("r", "actor", "x"))
    assert not _matches(subjects.advice_wildcard("r"), subjects.advice_subject("other", "x"))


def test_durable_subjects_are_stored_and_core_subjects_are_not() -> None:
    durable = [subjects.trajectory_subject("r", "a"), subjects.weights_subject("r")]
    core = [
        subjects.advice_subject("r", "a"),
        subjects.bias_subject("r", "a"),
        subjects.digest_subject("r", "a"),
        subjects.heartbeat_subject("r", "actor", "a"),
    ]
    stream_patterns = [pattern for spec in subjects.STREAMS for pattern in spec.subjects]
    for subject in durable:
        assert sum(_matches(p, subject) for p in stream_patterns) == 1, subject
    for subject in core:
        assert not any(_matches(p, subject) for p in stream_patterns), subject
