"""The critical-state review's loop: follow the trajectory stream, assemble episodes, review one in
`review_every_episodes` (services/advisor/review.py), teach the caches, publish the suggested actions as advice and
the implicit rewards."""

from __future__ import annotations

import logging

from nats.aio.subscription import Subscription

from ala.bus import Bus
from ala.envs import adapter_for
from ala.ratelimit import RateLimitedLog
from ala.rl.trajectory import BadChunk, from_chunk, observation_key
from protos import AdviceTarget, PolicySpec, TrajectoryChunk, WireError, decode, subjects
from services.advisor import metrics
from services.advisor.advice import suggested_advice
from services.advisor.advisor import Advisor
from services.advisor.backends import BackendError, EmbeddedBackend
from services.advisor.review import CriticalStateReviewer, Episode, EpisodeAssembler, PlannerReviewer, Review, Reviewer
from services.advisor.settings import AdvisorSettings

log = logging.getLogger(__name__)
REVIEW_PENDING = 64
"""Trajectory chunks waiting for the review, at most (beyond: dropped, counted as a slow consumer)."""


async def review_episodes(
    settings: AdvisorSettings, bus: Bus, advisors: list[Advisor], policies: dict[str, PolicySpec]
) -> None:
    """Follow the trajectory stream, review one finished episode in `review_every_episodes`, teach the caches the
    critical states' advice, publish it, and publish the bounded implicit rewards. Chunks the reviewer cannot read
    (no text for an LLM, no full states for the planner, or no known spec yet) are skipped and counted."""
    embedded = next((a.backend for a in advisors if isinstance(a.backend, EmbeddedBackend)), None)
    if settings.review_by == "embedded" and embedded is None:
        log.warning("critical-state review by the embedded LLM needs an embedded advisor; review is off")
        return
    # A core subscription sees each chunk as the actor publishes it (the stream stores the same message): the review
    # is best effort, so it needs no JetStream consumer, and the advisor's credential no consumer rights
    # (`ala.security`). Past `REVIEW_PENDING` waiting chunks, nats.py drops the newest and reports a slow consumer.
    subscription = await bus.nc.subscribe(subjects.trajectory_wildcard(settings.run), pending_msgs_limit=REVIEW_PENDING)
    try:
        await _review_stream(settings, bus, advisors, policies, subscription, embedded)
    finally:
        await subscription.unsubscribe()


def _reviewer(settings: AdvisorSettings, spec: PolicySpec, embedded: EmbeddedBackend | None) -> Reviewer:
    adapter = adapter_for(spec.env_id)
    if settings.review_by == "planner":
        return PlannerReviewer(adapter, settings.review_max_critical, settings.max_implicit_reward, settings.run)
    assert embedded is not None  # review_episodes does not start the embedded review without one
    return CriticalStateReviewer(
        embedded,
        spec.action_names,
        adapter.summarise,
        settings.max_implicit_reward,
        settings.run,
        settings.review_max_critical,
    )


def _unreviewable(settings: AdvisorSettings, spec: PolicySpec, chunk: TrajectoryChunk) -> str | None:
    """Why the configured reviewer cannot read this chunk, or None."""
    if settings.review_by == "planner":
        return "no_full_state" if chunk.full_states is None else None
    return None if adapter_for(spec.env_id).has_text else "no_text"


async def _review_stream(
    settings: AdvisorSettings,
    bus: Bus,
    advisors: list[Advisor],
    policies: dict[str, PolicySpec],
    subscription: Subscription,
    embedded: EmbeddedBackend | None,
) -> None:
    review_log = RateLimitedLog(log)
    assembler, reviewers, finished = EpisodeAssembler(), dict[str, Reviewer](), 0
    async for msg in subscription.messages:
        try:
            chunk = decode(msg.data, TrajectoryChunk)
        except WireError as exc:
            metrics.REVIEW_SKIPPED.labels("decode").inc()
            review_log.warning("undecodable chunk on %s not reviewed: %s", msg.subject, exc)
            continue
        spec = policies.get(chunk.actor)
        if spec is None:
            metrics.REVIEW_SKIPPED.labels("no_spec").inc()
            continue
        reason = _unreviewable(settings, spec, chunk)
        if reason is not None:
            metrics.REVIEW_SKIPPED.labels(reason).inc()
            continue
        try:
            trajectory = from_chunk(chunk, spec)
        except BadChunk as exc:
            metrics.REVIEW_SKIPPED.labels(exc.reason).inc()
            continue
        if spec.env_id not in reviewers:
            reviewers[spec.env_id] = _reviewer(settings, spec, embedded)
        for episode in assembler.add(chunk.actor, trajectory, chunk.chunk_seq):
            finished += 1
            if finished % settings.review_every_episodes:
                continue
            try:
                review = await reviewers[spec.env_id].review(episode)
            except BackendError:
                metrics.REVIEW_FAILURES.inc()
                continue
            metrics.REVIEWS.inc()
            await _act_on(settings, bus, advisors, episode, review)


async def _act_on(
    settings: AdvisorSettings, bus: Bus, advisors: list[Advisor], episode: Episode, review: Review
) -> None:
    """Teach the caches, publish the suggestions as advice (where asked) and the implicit rewards."""
    name = f"review-{settings.review_by}"
    for observation, suggestion in review.suggestions:
        for advisor in advisors:
            if advisor.cache is not None:
                advisor.cache.store(observation, suggestion)
        if settings.review_advice:
            # About the observation, for every bot of the actor that meets it: the episode is over, and what the
            # review learnt is worth most where the same view recurs (MiniGrid's views recur across layouts).
            target = AdviceTarget(actor=episode.actor, state_key=observation_key(observation))
            advice = suggested_advice(name, 1.0, target, settings.review_advice_ttl_s, suggestion)
            if await bus.publish(subjects.advice_subject(settings.run, name), advice, "advice"):
                metrics.REVIEW_ADVICE.inc()
    for reward in review.rewards:
        await bus.publish(subjects.implicit_reward_subject(settings.run), reward, kind="implicit-reward")
