"""The critical-state review's loop: follow the trajectory stream, assemble episodes, review one in
`review_every_episodes` (services/advisor/review.py), teach the caches and publish the implicit rewards."""

from __future__ import annotations

import logging

from nats.aio.subscription import Subscription

from ala.bus import Bus
from ala.envs import adapter_for
from ala.ratelimit import RateLimitedLog
from ala.rl.trajectory import BadChunk, from_chunk
from protos import PolicySpec, TrajectoryChunk, WireError, decode, subjects
from services.advisor import metrics
from services.advisor.advisor import Advisor
from services.advisor.backends import BackendError, EmbeddedBackend
from services.advisor.review import CriticalStateReviewer, EpisodeAssembler
from services.advisor.settings import AdvisorSettings

log = logging.getLogger(__name__)
REVIEW_PENDING = 64
"""Trajectory chunks waiting for the review, at most (beyond: dropped, counted as a slow consumer)."""


async def review_episodes(
    settings: AdvisorSettings, bus: Bus, advisors: list[Advisor], policies: dict[str, PolicySpec]
) -> None:
    """Follow the trajectory stream, review one finished episode in `review_every_episodes`, teach the caches the
    critical states' advice and publish the bounded implicit rewards. Chunks from actors whose environment has no
    text (or whose spec is not known yet) are skipped and counted."""
    embedded = next((a.backend for a in advisors if isinstance(a.backend, EmbeddedBackend)), None)
    if embedded is None:
        log.warning("critical-state review needs an embedded advisor; review is off")
        return
    # A core subscription sees each chunk as the actor publishes it (the stream stores the same message): the review
    # is best effort, so it needs no JetStream consumer, and the advisor's credential no consumer rights
    # (`ala.security`). Past `REVIEW_PENDING` waiting chunks, nats.py drops the newest and reports a slow consumer.
    subscription = await bus.nc.subscribe(subjects.trajectory_wildcard(settings.run), pending_msgs_limit=REVIEW_PENDING)
    try:
        await _review_stream(settings, bus, advisors, policies, subscription, embedded)
    finally:
        await subscription.unsubscribe()


async def _review_stream(
    settings: AdvisorSettings,
    bus: Bus,
    advisors: list[Advisor],
    policies: dict[str, PolicySpec],
    subscription: Subscription,
    embedded: EmbeddedBackend,
) -> None:
    review_log = RateLimitedLog(log)
    assembler, reviewers, finished = EpisodeAssembler(), dict[str, CriticalStateReviewer](), 0
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
        adapter = adapter_for(spec.env_id)
        if not adapter.has_text:
            metrics.REVIEW_SKIPPED.labels("no_text").inc()
            continue
        try:
            trajectory = from_chunk(chunk, spec)
        except BadChunk as exc:
            metrics.REVIEW_SKIPPED.labels(exc.reason).inc()
            continue
        if spec.env_id not in reviewers:
            reviewers[spec.env_id] = CriticalStateReviewer(
                embedded, spec.action_names, adapter.summarise, settings.max_implicit_reward, settings.run
            )
        for episode in assembler.add(chunk.actor, trajectory):
            finished += 1
            if finished % settings.review_every_episodes:
                continue
            try:
                review = await reviewers[spec.env_id].review(episode)
            except BackendError:
                metrics.REVIEW_FAILURES.inc()
                continue
            metrics.REVIEWS.inc()
            for state, suggestion in review.suggestions:
                for advisor in advisors:
                    if advisor.cache is not None:
                        advisor.cache.store(state, suggestion)
            for reward in review.rewards:
                await bus.publish(subjects.implicit_reward_subject(settings.run), reward, kind="implicit-reward")
