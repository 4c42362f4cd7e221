"""The advisor process: state digests in, advice out, never blocking anything upstream.

Digests arrive in a queue group (replicas share them). Only the newest digest per bot waits (older ones are
dropped and counted), in a bounded table. `workers` tasks take the oldest waiting bot and ask every configured
advisor in parallel, each bounded by its timeout; each answer is published on that advisor's own subject for the
router to merge. A slow or dead advisor only means its advice is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ala.bus import Bus
from ala.metrics import child
from ala.policy import PolicySpec
from ala.ratelimit import RateLimitedLog
from ala.service import ServiceRuntime, run_until_signalled
from ala.trajectory import BadChunk, from_chunk
from protos import Advice, AdviceTarget, StateDigest, TrajectoryChunk, WireError, decode, subjects
from services.actor.envs import action_names
from services.advisor import metrics
from services.advisor.backends import Backend, BackendError, EmbeddedBackend, Suggestion, create_backend
from services.advisor.cache import AdviceCache
from services.advisor.review import CriticalStateReviewer, EpisodeAssembler
from services.advisor.settings import AdvisorSettings, AdvisorSpec

log = logging.getLogger(__name__)


class Prompt:
    """Editable templates (`system.txt`, `user.txt`) filled with the digest's text and its legal actions."""

    def __init__(self, settings: AdvisorSettings) -> None:
        self.system = (settings.prompt_dir / "system.txt").read_text().strip()
        self.user = (settings.prompt_dir / "user.txt").read_text().strip()

    def messages(self, digest: StateDigest) -> list[dict[str, str]]:
        actions = "\n".join(f"{i}: {name}" for i, name in enumerate(digest.action_names))
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": self.user.format(state=digest.text, actions=actions)},
        ]


class Advisor:
    """One configured advisor: a backend, optionally behind the adaptive cache."""

    def __init__(self, spec: AdvisorSpec, backend: Backend, cache: AdviceCache | None) -> None:
        self.spec = spec
        self.backend = backend
        self.cache = cache

    async def answer(self, digest: StateDigest, messages: list[dict[str, str]]) -> Suggestion:
        if self.cache is None:
            return await self._ask(digest, messages)
        observation = digest.observation.to_numpy()
        found = self.cache.lookup(observation)
        if found.suggestion is not None and not found.audit:
            child(metrics.CACHE_HITS, self.spec.name).inc()
            return found.suggestion
        child(metrics.CACHE_MISSES, self.spec.name).inc()
        fresh = await self._ask(digest, messages)
        if found.audit and found.suggestion is not None:
            self.cache.record_audit(found.suggestion, fresh)
            child(metrics.CACHE_THRESHOLD, self.spec.name).set(self.cache.max_distance)
        self.cache.store(observation, fresh)
        return fresh

    async def _ask(self, digest: StateDigest, messages: list[dict[str, str]]) -> Suggestion:
        start = time.perf_counter()
        suggestion = await asyncio.wait_for(self.backend.suggest(digest, messages), self.spec.timeout_s)
        child(metrics.LLM_SECONDS, self.spec.name).observe(time.perf_counter() - start)
        child(metrics.COMPLETION_TOKENS, self.spec.name).inc(suggestion.completion_tokens)
        return suggestion


def to_advice(spec: AdvisorSpec, digest: StateDigest, suggestion: Suggestion) -> Advice:
    return Advice(
        advice_id=f"{spec.name}-{uuid.uuid4().hex[:12]}",
        advisor=spec.name,
        priority=spec.priority,
        target=AdviceTarget(actor=digest.actor, bot=digest.bot, state_key=digest.state_key),
        ttl_s=suggestion.ttl_s,
        created_at=time.time(),
        recommended_action=suggestion.action,
        confidence=suggestion.confidence,
        rationale=suggestion.rationale,
    )


class AdvisorService:
    def __init__(self, settings: AdvisorSettings, bus: Bus, advisors: list[Advisor]) -> None:
        self.settings = settings
        self.bus = bus
        self.advisors = advisors
        self.prompt = Prompt(settings)
        self.waiting: OrderedDict[tuple[str, int], StateDigest] = OrderedDict()
        self.ready = asyncio.Event()
        self._log = RateLimitedLog(log)

    async def on_digest(self, msg: Msg) -> None:
        try:
            digest = decode(msg.data, StateDigest)
        except WireError as exc:
            metrics.DIGESTS_REJECTED.inc()
            self._log.warning("digest rejected: %s", exc)
            return
        metrics.DIGESTS.inc()
        key = (digest.actor, digest.bot)
        if key in self.waiting:
            metrics.DIGESTS_DROPPED.inc()  # the newer state supersedes it
            del self.waiting[key]
        self.waiting[key] = digest
        while len(self.waiting) > self.settings.max_pending:
            self.waiting.popitem(last=False)
            metrics.DIGESTS_DROPPED.inc()
        metrics.QUEUE_DEPTH.set(len(self.waiting))
        self.ready.set()

    async def work(self) -> None:
        while True:
            await self.ready.wait()
            if not self.waiting:
                self.ready.clear()
                continue
            _, digest = self.waiting.popitem(last=False)
            metrics.QUEUE_DEPTH.set(len(self.waiting))
            messages = self.prompt.messages(digest)
            await asyncio.gather(*(self._advise(advisor, digest, messages) for advisor in self.advisors))

    async def _advise(self, advisor: Advisor, digest: StateDigest, messages: list[dict[str, str]]) -> None:
        name = advisor.spec.name
        try:
            suggestion = await advisor.answer(digest, messages)
        except TimeoutError:
            child(metrics.BACKEND_FAILURES, name, "timeout").inc()
            self._log.warning("advisor %s timed out after %.1fs", name, advisor.spec.timeout_s)
            return
        except BackendError as exc:
            child(metrics.BACKEND_FAILURES, name, exc.reason).inc()
            self._log.warning("advisor %s failed: %s", name, exc)
            return
        except Exception as exc:  # a plug-in or a server can fail in ways no list foresees; the worker must live
            child(metrics.BACKEND_FAILURES, name, "error").inc()
            self._log.warning("advisor %s raised %s: %s", name, type(exc).__name__, exc)
            return
        advice = to_advice(advisor.spec, digest, suggestion)
        if await self.bus.publish(subjects.advice_subject(self.settings.run, name), advice, kind="advice"):
            child(metrics.ADVICE_PUBLISHED, name).inc()


async def review_episodes(settings: AdvisorSettings, bus: Bus, advisors: list[Advisor]) -> None:
    """Follow the trajectory stream, review one finished episode in `review_every_episodes`, teach the caches the
    critical states' advice and publish the bounded implicit rewards."""
    embedded = next((a.backend for a in advisors if isinstance(a.backend, EmbeddedBackend)), None)
    if embedded is None:
        log.warning("critical-state review needs an embedded advisor; review is off")
        return
    consumer = await bus.js.pull_subscribe(
        subjects.trajectory_wildcard(settings.run),
        stream=subjects.TRAJECTORIES.name,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW, ack_policy=AckPolicy.NONE),
    )
    assembler, reviewer, finished = EpisodeAssembler(), None, 0
    while True:
        try:
            msgs = await consumer.fetch(4, timeout=1.0)
        except (TimeoutError, NatsTimeoutError):
            continue
        for msg in msgs:
            try:
                chunk = decode(msg.data, TrajectoryChunk)
                spec = PolicySpec(obs_dim=chunk.observations.shape[-1], n_actions=chunk.bias.shape[-1])
                trajectory = from_chunk(chunk, spec)
            except (WireError, BadChunk, IndexError):
                metrics.REVIEW_FAILURES.inc()
                continue
            for episode in assembler.add(chunk.actor, trajectory):
                finished += 1
                if finished % settings.review_every_episodes:
                    continue
                if reviewer is None:
                    # The stream does not say which env; MiniGrid's seven actions are the likely reading of seven.
                    names = action_names(spec.n_actions, minigrid_names=True)
                    reviewer = CriticalStateReviewer(embedded, names, settings.max_implicit_reward, settings.run)
                try:
                    review = await reviewer.review(episode)
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


def build_advisors(settings: AdvisorSettings) -> list[Advisor]:
    advisors = []
    for spec in settings.advisors:
        cache = None
        if settings.cache and spec.backend in ("embedded", "openai"):
            cache = AdviceCache(
                settings.cache_size,
                settings.cache_max_distance,
                settings.cache_target_agreement,
                settings.cache_audit_rate,
                seed=spec.seed,
            )
        advisors.append(Advisor(spec, create_backend(spec), cache))
    return advisors


async def serve(settings: AdvisorSettings, stop: asyncio.Event) -> None:
    advisors = build_advisors(settings)
    async with ServiceRuntime(settings, metrics.SERVICE, metrics.REGISTRY) as runtime:
        service = AdvisorService(settings, runtime.bus, advisors)
        await runtime.bus.subscribe(
            subjects.digest_wildcard(settings.run), service.on_digest, queue=settings.queue_group
        )
        workers = [asyncio.create_task(service.work(), name=f"advisor-worker-{i}") for i in range(settings.workers)]
        if settings.review:
            workers.append(asyncio.create_task(review_episodes(settings, runtime.bus, advisors), name="review"))
        await stop.wait()
        for worker in workers:
            worker.cancel()
        for worker in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
    for advisor in advisors:
        await advisor.backend.close()


def main() -> None:
    run_until_signalled(serve, AdvisorSettings())
