"""Answers as wire messages: per-step advice keyed on the state its backend read, and options keyed on the
situation."""

from __future__ import annotations

import time
import uuid

import numpy as np

from protos import Advice, AdviceTarget, Array, StateDigest
from services.advisor.backends import Backend, Choice, Suggestion
from services.advisor.settings import AdvisorSpec


def advice_key(spec: AdvisorSpec, backend: Backend, digest: StateDigest) -> str:
    """The state the advice is about: the exact state for a backend that read it, else the observation."""
    if spec.scope != "state":
        return ""
    if getattr(backend, "reads", "observation") == "full_state" and digest.full_state_key:
        return digest.full_state_key
    return digest.state_key


def to_option_advice(spec: AdvisorSpec, digest: StateDigest, choice: Choice) -> Advice:
    """An option for the digest's situation, for every bot of its actor that meets that situation."""
    return Advice(
        advice_id=f"{spec.name}-{uuid.uuid4().hex[:12]}",
        advisor=spec.name,
        priority=spec.priority,
        target=AdviceTarget(actor=digest.actor, state_key=digest.situation_key),
        ttl_s=spec.ttl_s or spec.option_ttl_s,
        created_at=time.time(),
        recommended_option=choice.option,
        confidence=choice.confidence,
    )


def to_advice(spec: AdvisorSpec, digest: StateDigest, suggestion: Suggestion, state_key: str) -> Advice:
    target = AdviceTarget(actor=digest.actor, bot=digest.bot, state_key=state_key)
    return suggested_advice(spec.name, spec.priority, target, spec.ttl_s or suggestion.ttl_s, suggestion)


def suggested_advice(
    advisor: str, priority: float, target: AdviceTarget, ttl_s: float, suggestion: Suggestion
) -> Advice:
    """`suggestion` as advisor `advisor`'s advice for `target`: its scores where it has them, else its action."""
    return Advice(
        advice_id=f"{advisor}-{uuid.uuid4().hex[:12]}",
        advisor=advisor,
        priority=priority,
        target=target,
        ttl_s=ttl_s,
        created_at=time.time(),
        scores=None if suggestion.scores is None else Array.from_numpy(np.asarray(suggestion.scores, np.float32)),
        recommended_action=suggestion.action if suggestion.scores is None else None,
        confidence=suggestion.confidence,
        rationale=suggestion.rationale,
    )
