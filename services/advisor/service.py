"""The advisor process: state digests in, advice out, never blocking anything upstream.

Digests arrive in a queue group (replicas share them). Each advisor answers on its own: it has its own bounded
queue, where only the newest digest per bot waits (older ones are dropped and counted), and its own `workers`
tasks, each answer bounded by its timeout and published on that advisor's own subject for the router to merge. A
slow, hung or failing advisor only means its own advice is missing; the others keep their pace. A digest without
what a backend reads (no text for an LLM, from environments the adapter cannot put into words; no full state for
the expert) is skipped and counted by reason, never queued.

Advice names the key of what its backend read (scope `state`, the default): the digest's `full_state_key` for a
backend that reads the full state (the expert), its `state_key` (the observation's) for every other. The actors
then apply it to every bot that meets that state: an LLM's advice, a function of what the policy sees, reaches every
bot that sees the same; the expert's reaches only the exact state it planned for, not the states that look alike
to the policy (on DoorKey-8x8, 11-13% of its observation-keyed advice landed on such a state). Scope `bot` keeps
advice for the bot that asked, until its episode ends.

Workers and the review run in one task group: an unexpected error stops the process with a traceback and a
non-zero exit rather than leaving it heartbeating with no worker.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

import numpy as np
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ala.bus import Bus
from ala.envs import adapter_for
from ala.metrics import child
from ala.progress import Rate, report_progress
from ala.ratelimit import RateLimitedLog
from ala.rl.trajectory import BadChunk, from_chunk
from ala.service import ServiceRuntime, ServiceTasks, run_until_signalled
from protos import (
    Advice,
    AdviceTarget,
    Array,
    Heartbeat,
    PolicySpec,
    StateDigest,
    TrajectoryChunk,
    WireError,
    decode,
    subjects,
)
from services.advisor import metrics
from services.advisor.backends import Backend, BackendError, Choice, EmbeddedBackend, Suggestion, create_backend
from services.advisor.breaker import BreakerState, CircuitBreaker
from services.advisor.cache import AdviceCache
from services.advisor.review import CriticalStateReviewer, EpisodeAssembler
from services.advisor.settings import AdvisorSettings, AdvisorSpec
from services.advisor.situations import SituationCache, cache_file

log = logging.getLogger(__name__)
T = TypeVar("T")
REVIEW_PENDING = 64
"""Trajectory chunks waiting for the review, at most (beyond: dropped, counted as a slow consumer)."""


class Prompt:
    """Editable templates (`system.txt`, `user.txt`) filled with the digest's text and its legal actions."""

    def __init__(self, settings: AdvisorSettings) -> None:
        self.system = (settings.prompt_dir / "system.txt").read_text().strip()
        self.user = (settings.prompt_dir / "user.txt").read_text().strip()
        self.options_system = (settings.prompt_dir / "options_system.txt").read_text().strip()
        self.options_user = (settings.prompt_dir / "options_user.txt").read_text().strip()
        self.options_version = hashlib.sha1(f"{self.options_system}\n{self.options_user}".encode()).hexdigest()[:8]
        """Names the situation caches' files: a changed prompt starts a new cache."""

    def option_messages(self, digest: StateDigest, names: list[str]) -> list[dict[str, str]]:
        """The option question: the mission (the first line of the digest's text) and the situation, never the
        exact state, so that one answer serves every state of the situation."""
        mission = digest.text.splitlines()[0] if digest.text else ""
        options = "\n".join(f"- {name}" for name in names)
        user = self.options_user.format(mission=mission, situation=digest.situation, options=options)
        return [{"role": "system", "content": self.options_system}, {"role": "user", "content": user}]

    def messages(self, digest: StateDigest) -> list[dict[str, str]]:
        actions = "\n".join(f"{i}: {name}" for i, name in enumerate(digest.action_names))
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": self.user.format(state=digest.text, actions=actions)},
        ]


def missing_input(backend: Backend, digest: StateDigest) -> str | None:
    """Why `backend` cannot answer `digest`, or None when it can."""
    reads = getattr(backend, "reads", "observation")  # plug-ins that say nothing get the observation
    if reads == "text" and not digest.text:
        return "no_text"
    if reads == "full_state" and digest.full_state is None:
        return "no_full_state"
    return None


class Advisor:
    """One configured advisor: a backend, optionally behind the adaptive cache, and its queue of digests."""

    def __init__(
        self,
        spec: AdvisorSpec,
        backend: Backend,
        cache: AdviceCache | None,
        max_pending: int = 256,
        situations: SituationCache | None = None,
    ) -> None:
        self.spec = spec
        self.backend = backend
        self.cache = cache
        self.backend_calls = 0
        self.backend_seconds = 0.0
        self.max_pending = max_pending
        self.waiting: OrderedDict[tuple[str, int], StateDigest] = OrderedDict()
        """The newest digest per (actor, bot), oldest first."""
        self.ready = asyncio.Event()
        self.breaker = CircuitBreaker(
            spec.breaker_failures, spec.breaker_base_s, spec.breaker_max_s, random.Random(spec.seed)
        )
        self.situations = situations
        """Option answers per situation (None: privileged backends, whose answer depends on the exact state)."""
        self.choosing: set[str] = set()
        """Situations being asked now: a second digest of one waits for the first's answer instead of asking."""

    def advises_options(self, digest: StateDigest, names: list[str]) -> bool:
        """Whether this digest gets option advice: the env declares options and the advisor gives them."""
        if not (digest.situation_key and names and hasattr(self.backend, "choose")):
            return False
        if self.spec.advice == "auto":
            return self.backend.kind in ("embedded", "openai")
        return self.spec.advice == "options"

    def enqueue(self, digest: StateDigest) -> None:
        key = (digest.actor, digest.bot)
        if key in self.waiting:
            child(metrics.DIGESTS_DROPPED, self.spec.name).inc()  # the newer state supersedes it
            del self.waiting[key]
        self.waiting[key] = digest
        while len(self.waiting) > self.max_pending:
            self.waiting.popitem(last=False)
            child(metrics.DIGESTS_DROPPED, self.spec.name).inc()
        child(metrics.QUEUE_DEPTH, self.spec.name).set(len(self.waiting))
        self.ready.set()

    async def next_digest(self) -> StateDigest:
        while not self.waiting:
            self.ready.clear()
            await self.ready.wait()
        _, digest = self.waiting.popitem(last=False)
        child(metrics.QUEUE_DEPTH, self.spec.name).set(len(self.waiting))
        return digest

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
        return await self._call(lambda: self.backend.suggest(digest, messages))

    async def choose(self, digest: StateDigest, messages: list[dict[str, str]], policy: PolicySpec) -> Choice:
        """An option for the digest's situation: from the situation cache, else from the backend (then cached)."""
        names = policy.option_names
        key = f"{policy.env_id}|{digest.situation_key}"  # the same situation in another env may want another option
        cached = self.situations.get(key) if self.situations is not None else None
        if cached is not None and cached < len(names):
            child(metrics.SITUATION_CACHE, self.spec.name, "hit").inc()
            return Choice(cached)
        child(metrics.SITUATION_CACHE, self.spec.name, "miss").inc()
        if key in self.choosing:
            raise Skipped("in_flight", "this situation is being asked already")  # one call per situation
        self.choosing.add(key)
        try:
            choice = await self._call(lambda: self.backend.choose(digest, messages, names))  # type: ignore[attr-defined]
        finally:
            self.choosing.discard(key)
        if self.situations is not None:
            self.situations.put(key, choice.option, digest.situation)
        return choice

    async def _call(self, ask: Callable[[], Awaitable[T]]) -> T:
        """One backend call, behind the breaker and the timeout, timed and its tokens counted."""
        if not self.breaker.allow():
            raise CircuitOpen("circuit_open", f"{self.breaker.consecutive_failures} failures in a row; waiting")
        start = time.perf_counter()
        try:
            suggestion = await asyncio.wait_for(ask(), self.spec.timeout_s)
        except Exception:  # every failure counts towards the breaker (and is reported by the caller)
            self._breaker_failed()
            raise
        self.breaker.success()
        child(metrics.BREAKER_OPEN, self.spec.name).set(0)
        elapsed = time.perf_counter() - start
        child(metrics.LLM_SECONDS, self.spec.name).observe(elapsed)
        self.backend_calls += 1
        self.backend_seconds += elapsed
        child(metrics.COMPLETION_TOKENS, self.spec.name).inc(suggestion.completion_tokens)
        child(metrics.REASONING_TOKENS, self.spec.name).inc(suggestion.reasoning_tokens)
        return suggestion

    def _breaker_failed(self) -> None:
        trips = self.breaker.trips_total
        self.breaker.failure()
        if self.breaker.trips_total > trips:
            child(metrics.BREAKER_TRIPS, self.spec.name).inc()
            child(metrics.BREAKER_OPEN, self.spec.name).set(1)
            log.warning(
                "advisor %s: circuit breaker open after %d failures in a row; next probe in %.1fs",
                self.spec.name,
                self.breaker.consecutive_failures,
                self.breaker.retry_at - time.monotonic(),
            )


class Skipped(BackendError):
    """The digest is skipped without asking the backend (counted in ala_advisor_digests_skipped, not as a failure)."""


class CircuitOpen(Skipped):
    """The advisor's breaker is open."""


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
    return Advice(
        advice_id=f"{spec.name}-{uuid.uuid4().hex[:12]}",
        advisor=spec.name,
        priority=spec.priority,
        target=AdviceTarget(actor=digest.actor, bot=digest.bot, state_key=state_key),
        ttl_s=spec.ttl_s or suggestion.ttl_s,
        created_at=time.time(),
        scores=None if suggestion.scores is None else Array.from_numpy(np.asarray(suggestion.scores, np.float32)),
        recommended_action=suggestion.action if suggestion.scores is None else None,
        confidence=suggestion.confidence,
        rationale=suggestion.rationale,
    )


class AdvisorService:
    def __init__(self, settings: AdvisorSettings, bus: Bus, advisors: list[Advisor]) -> None:
        self.settings = settings
        self.bus = bus
        self.advisors = advisors
        self.prompt = Prompt(settings)
        self._log = RateLimitedLog(log)
        self.policies: dict[str, PolicySpec] = {}
        """Each actor's policy spec, from its heartbeats: which environment (and adapter) its chunks come from."""
        self.counts: collections.Counter[str] = collections.Counter()
        """Digests in, advice out, skips and failures by reason: for the progress line."""
        self._digest_rate, self._advice_rate = Rate(), Rate()
        self._backend_calls, self._backend_seconds = 0, 0.0

    async def on_heartbeat(self, msg: Msg) -> None:
        try:
            heartbeat = decode(msg.data, Heartbeat)
        except WireError as exc:
            # Heartbeats are advisory (the next one will do), but one we cannot read means a peer on another wire
            # version or a stranger on our subjects: counted and said.
            metrics.UNDECODABLE.labels("heartbeat").inc()
            self._log.warning("undecodable heartbeat on %s dropped: %s", msg.subject, exc)
            return
        if heartbeat.service == "actor" and heartbeat.policy is not None:
            self.policies[heartbeat.instance] = heartbeat.policy

    def progress(self) -> str:
        """The advisor's console line (every few seconds, see `ala.progress`)."""
        calls = sum(a.backend_calls for a in self.advisors)
        seconds = sum(a.backend_seconds for a in self.advisors)
        new_calls, new_seconds = calls - self._backend_calls, seconds - self._backend_seconds
        self._backend_calls, self._backend_seconds = calls, seconds
        latency = f"{new_seconds / new_calls:.2f}s" if new_calls else "-"
        others = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()) if k not in ("digests", "advice"))
        broken = [a.spec.name for a in self.advisors if a.breaker.state is not BreakerState.CLOSED]
        situations = sum(len(a.situations) for a in self.advisors if a.situations is not None)
        return (
            f"digests {self._digest_rate.per_second(self.counts['digests']):.1f}/s  "
            f"advice {self._advice_rate.per_second(self.counts['advice']):.1f}/s  "
            f"waiting {sum(len(advisor.waiting) for advisor in self.advisors)}  "
            f"backend calls {new_calls} (mean {latency})  skipped/failed: {others or 'none'}"
            + (f"  breaker open: {', '.join(broken)}" if broken else "")
            + (f"  situations answered {situations}" if situations else "")
        )

    async def on_digest(self, msg: Msg) -> None:
        try:
            digest = decode(msg.data, StateDigest)
        except WireError as exc:
            metrics.DIGESTS_REJECTED.inc()
            self._log.warning("digest rejected: %s", exc)
            return
        metrics.DIGESTS.inc()
        self.counts["digests"] += 1
        for advisor in self.advisors:
            missing = missing_input(advisor.backend, digest)
            if missing is not None:
                child(metrics.DIGESTS_SKIPPED, advisor.spec.name, missing).inc()
                self.counts[missing] += 1
                continue
            advisor.enqueue(digest)

    async def work(self, advisor: Advisor) -> None:
        """One of `advisor`'s workers: its newest waiting digests, one at a time."""
        while True:
            digest = await advisor.next_digest()
            await self._advise(advisor, digest, self.prompt.messages(digest))

    async def _advise(self, advisor: Advisor, digest: StateDigest, messages: list[dict[str, str]]) -> None:
        policy = self.policies.get(digest.actor)
        if policy is not None and advisor.advises_options(digest, policy.option_names):
            option_messages = self.prompt.option_messages(digest, policy.option_names)
            choice = await self._attempt(advisor, advisor.choose(digest, option_messages, policy))
            if choice is not None:
                await self._publish(advisor, [to_option_advice(advisor.spec, digest, choice)])
            return
        if advisor.spec.advice == "options" and digest.situation_key:
            # Options asked for, and the actor's options not known yet (its heartbeat will say): no per-step advice
            # in their place.
            child(metrics.DIGESTS_SKIPPED, advisor.spec.name, "no_spec").inc()
            self.counts["no_spec"] += 1
            return
        suggestion = await self._attempt(advisor, advisor.answer(digest, messages))
        if suggestion is None:
            return
        key = advice_key(advisor.spec, advisor.backend, digest)
        pieces = [to_advice(advisor.spec, digest, suggestion, key)]
        if key and key == digest.full_state_key:  # a plan's states ahead are exact states too
            pieces += [
                to_advice(advisor.spec, digest, replace(suggestion, action=action, ahead=()), ahead_key)
                for ahead_key, action in suggestion.ahead
            ]
        await self._publish(advisor, pieces)

    async def _publish(self, advisor: Advisor, pieces: list[Advice]) -> None:
        for advice in pieces:
            if await self.bus.publish(subjects.advice_subject(self.settings.run, advisor.spec.name), advice, "advice"):
                child(metrics.ADVICE_PUBLISHED, advisor.spec.name).inc()
                self.counts["advice"] += 1

    async def _attempt(self, advisor: Advisor, answer: Awaitable[T]) -> T | None:
        """The answer, or None after counting and logging why there is none."""
        name = advisor.spec.name
        try:
            return await answer
        except Skipped as exc:  # not a failure: the breaker is open, or another worker asks the same situation
            child(metrics.DIGESTS_SKIPPED, name, exc.reason).inc()
            self.counts[exc.reason] += 1
            return None
        except TimeoutError:
            child(metrics.BACKEND_FAILURES, name, "timeout").inc()
            self.counts["timeout"] += 1
            self._log.warning("advisor %s timed out after %.1fs", name, advisor.spec.timeout_s)
            return None
        except BackendError as exc:
            child(metrics.BACKEND_FAILURES, name, exc.reason).inc()
            self.counts[exc.reason] += 1
            self._log.warning("advisor %s failed: %s", name, exc)
            return None
        except Exception as exc:  # a plug-in or a server can fail in ways no list foresees; the worker must live
            child(metrics.BACKEND_FAILURES, name, "error").inc()
            self.counts["error"] += 1
            self._log.warning("advisor %s raised %s: %s", name, type(exc).__name__, exc)
            return None


async def review_episodes(settings: AdvisorSettings, service: AdvisorService) -> None:
    """Follow the trajectory stream, review one finished episode in `review_every_episodes`, teach the caches the
    critical states' advice and publish the bounded implicit rewards. Chunks from actors whose environment has no
    text (or whose spec is not known yet) are skipped and counted."""
    advisors, bus = service.advisors, service.bus
    embedded = next((a.backend for a in advisors if isinstance(a.backend, EmbeddedBackend)), None)
    if embedded is None:
        log.warning("critical-state review needs an embedded advisor; review is off")
        return
    # A core subscription sees each chunk as the actor publishes it (the stream stores the same message): the review
    # is best effort, so it needs no JetStream consumer, and the advisor's credential no consumer rights
    # (`ala.security`). Past `REVIEW_PENDING` waiting chunks, nats.py drops the newest and reports a slow consumer.
    subscription = await bus.nc.subscribe(subjects.trajectory_wildcard(settings.run), pending_msgs_limit=REVIEW_PENDING)
    try:
        await _review_stream(settings, service, subscription, embedded)
    finally:
        await subscription.unsubscribe()


async def _review_stream(
    settings: AdvisorSettings,
    service: AdvisorService,
    subscription: Subscription,
    embedded: EmbeddedBackend,
) -> None:
    advisors, bus, review_log = service.advisors, service.bus, RateLimitedLog(log)
    assembler, reviewers, finished = EpisodeAssembler(), dict[str, CriticalStateReviewer](), 0
    async for msg in subscription.messages:
        try:
            chunk = decode(msg.data, TrajectoryChunk)
        except WireError as exc:
            metrics.REVIEW_SKIPPED.labels("decode").inc()
            review_log.warning("undecodable chunk on %s not reviewed: %s", msg.subject, exc)
            continue
        spec = service.policies.get(chunk.actor)
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
        backend = create_backend(spec, settings.third_party_log_level)
        situations = None
        if spec.backend in ("embedded", "openai", "random", "plugin"):  # not the planners: they read the exact state
            path = None
            if settings.situation_cache_dir is not None and spec.backend in ("embedded", "openai"):
                model = spec.model if spec.backend == "openai" else "smollm2-135m"
                path = cache_file(settings.situation_cache_dir, spec.name, model, Prompt(settings).options_version)
            situations = SituationCache(settings.situation_cache_size, path)
        advisors.append(Advisor(spec, backend, cache, settings.max_pending, situations))
    return advisors


async def serve(settings: AdvisorSettings, stop: asyncio.Event) -> None:
    advisors = build_advisors(settings)
    try:
        async with ServiceRuntime(settings, metrics.SERVICE, metrics.REGISTRY) as runtime, ServiceTasks() as tasks:
            service = AdvisorService(settings, runtime.bus, advisors)
            runtime.reads = sorted({advisor.backend.reads for advisor in advisors})
            await runtime.bus.subscribe(subjects.heartbeat_wildcard(settings.run), service.on_heartbeat)
            await runtime.bus.subscribe(
                subjects.digest_wildcard(settings.run), service.on_digest, queue=settings.queue_group
            )
            for advisor in advisors:
                for i in range(settings.workers):
                    tasks.start(service.work(advisor), name=f"advisor-{advisor.spec.name}-{i}")
            if settings.review:
                tasks.start(review_episodes(settings, service), name="review")
            tasks.start(report_progress("advisor", service.progress, settings.progress_interval_s), name="progress")
            await stop.wait()
            await tasks.stop_all()
    finally:
        for advisor in advisors:
            await advisor.backend.close()


def main() -> None:
    run_until_signalled(serve, AdvisorSettings())
