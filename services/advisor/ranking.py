"""Ranking pairs of states for the learner's reward model (issue 31; Motif, arXiv 2310.00166; ONI, 2410.23022).

Actors send `PreferenceQuery`s (two bots' states); the ranker named by `preference_ranker` answers which is closer to
finishing the task, and the answer goes to the learner as a `Preference` with both observations. Two kinds of ranker:

- `expert`: the privileged planner ranks by the length of its shortest plan from each full state (fewer steps left is
  better; equal lengths are a tie, not sent): the upper bound of a ranker.
- `embedded` or `openai`: an LLM reads both states' text and answers `A` or `B`, constrained to those two (the
  option-choice schema and grammar: a ranking costs a few tokens).

One query is ranked at a time, in arrival order; at most `preference_max_pending` wait (beyond, nats.py drops the
newest and counts a slow consumer): a ranker slower than the actors' rate ranks a sample of the pairs, never a queue
that grows. Every query's outcome is counted (`ala_advisor_preferences{outcome}`).
"""

from __future__ import annotations

import logging
import time

from ala.bus import Bus
from ala.ratelimit import RateLimitedLog
from protos import Preference, PreferenceQuery, StateDigest, WireError, decode, subjects
from services.advisor import metrics
from services.advisor.backends import Backend, BackendError, create_backend, full_state_of, planner_of
from services.advisor.settings import RANKERS, AdvisorSettings, AdvisorSpec

log = logging.getLogger(__name__)
CHOICES = ["A", "B"]


def rank_messages(first: StateDigest, second: StateDigest) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You judge an agent's progress in a grid world. Answer with one letter."},
        {
            "role": "user",
            "content": f"Situation A: {first.text}\nSituation B: {second.text}\n"
            "In which situation is the agent closer to completing its mission? Answer A or B.",
        },
    ]


class Ranker:
    """One ranker: the planner, or an LLM backend made from the spec."""

    def __init__(self, spec: AdvisorSpec, log_level: str = "WARNING") -> None:
        if spec.backend not in RANKERS:
            raise ValueError(f"preference_ranker: backend {spec.backend!r} cannot rank states; use one of {RANKERS}")
        self.spec = spec
        self.llm: Backend | None = None if spec.backend == "expert" else create_backend(spec, log_level)

    async def rank(self, first: StateDigest, second: StateDigest) -> int | None:
        """0 if `first` is closer to the goal, 1 if `second` is, None for a tie; raises `BackendError`."""
        if self.llm is None:
            steps = [planner_of(d).steps_to_goal(full_state_of(d)) for d in (first, second)]
            if steps[0] is None or steps[1] is None:
                raise BackendError("unavailable", "no plan to the goal from one of the states")
            return None if steps[0] == steps[1] else int(steps[1] < steps[0])
        if not first.text or not second.text:
            raise BackendError("unavailable", "an LLM ranks by text, and a state has none")
        choice = await self.llm.choose(first, rank_messages(first, second), CHOICES)  # type: ignore[attr-defined]
        return int(choice.option)

    async def close(self) -> None:
        if self.llm is not None:
            await self.llm.close()


async def answer(bus: Bus, ranker: Ranker, data: bytes, run: str, errors: RateLimitedLog) -> str:
    """Rank one query and publish the ranking; returns the outcome counted."""
    try:
        query = decode(data, PreferenceQuery)
    except WireError as exc:
        errors.warning("undecodable preference query dropped: %s", exc)
        return "undecodable"
    try:
        preferred = await ranker.rank(query.first, query.second)
    except BackendError as exc:
        errors.warning("query %s/%d not ranked: %s", query.actor, query.query, exc)
        return exc.reason
    if preferred is None:
        return "tie"
    preference = Preference(
        run=run,
        actor=query.actor,
        query=query.query,
        first=query.first.observation,
        second=query.second.observation,
        preferred=preferred,
        source=ranker.spec.name,
        created_at=time.time(),
    )
    sent = await bus.publish(subjects.preference_subject(run), preference, "preference")
    return "ranked" if sent else "unsent"


async def rank_preferences(settings: AdvisorSettings, bus: Bus, ranker: Ranker) -> None:
    """Answer the run's preference queries, one at a time, until cancelled."""
    subscription = await bus.nc.subscribe(
        subjects.preference_query_wildcard(settings.run),
        queue=settings.queue_group,
        pending_msgs_limit=settings.preference_max_pending,
    )
    errors = RateLimitedLog(log)
    try:
        async for msg in subscription.messages:
            metrics.PREFERENCES.labels(await answer(bus, ranker, msg.data, settings.run, errors)).inc()
    finally:
        await subscription.unsubscribe()
