"""One configured advisor: its backend behind a circuit breaker and a timeout, the adaptive answer cache, the
situation cache for options, and its own bounded queue where only the newest digest per bot waits."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

from ala.metrics import child
from protos import AdviceOutcome, EpisodeStats, PolicySpec, StateDigest
from services.advisor import metrics
from services.advisor.backends import Backend, BackendError, Choice, Suggestion
from services.advisor.breaker import CircuitBreaker
from services.advisor.cache import AdviceCache
from services.advisor.cache_tuning import PerformanceTuner
from services.advisor.settings import AdvisorSpec
from services.advisor.situations import SituationCache

log = logging.getLogger(__name__)
T = TypeVar("T")


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
        tuner: PerformanceTuner | None = None,
    ) -> None:
        self.spec = spec
        self.backend = backend
        self.cache = cache
        self.tuner = tuner
        """Moves `cache`'s reuse threshold by the policy's performance (None: by agreement, or no cache)."""
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

    def observe_outcome(self, outcome: AdviceOutcome) -> None:
        """One actor's outcome report, for the cache tuned by performance (a no-op for any other)."""
        if self.tuner is None:
            return
        step = self.tuner.observe(outcome.advised.get(self.spec.name, EpisodeStats()), outcome.control)
        if step is not None:
            child(metrics.CACHE_THRESHOLD, self.spec.name).set(self.tuner.cache.max_distance)
            child(metrics.CACHE_TUNING_WINDOWS, self.spec.name, {1: "up", -1: "down", 0: "held"}[step]).inc()

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
        # What is reused is the action: a plan's states ahead (`Suggestion.ahead`) belong to the state asked about.
        self.cache.store(observation, replace(fresh, ahead=()))
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
