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
import logging
from collections.abc import Awaitable
from dataclasses import replace
from typing import TypeVar

from nats.aio.msg import Msg

from ala.bus import Bus
from ala.metrics import child
from ala.progress import Rate, report_progress
from ala.ratelimit import RateLimitedLog
from ala.service import ServiceRuntime, ServiceTasks, run_until_signalled
from protos import Advice, AdviceOutcome, Heartbeat, PolicySpec, StateDigest, WireError, decode, subjects
from services.advisor import metrics
from services.advisor.advice import advice_key, to_advice, to_option_advice
from services.advisor.advisor import Advisor, Skipped, missing_input
from services.advisor.backends import BackendError, create_backend
from services.advisor.breaker import BreakerState
from services.advisor.cache import AdviceCache
from services.advisor.cache_tuning import PerformanceTuner
from services.advisor.prompt import Prompt
from services.advisor.ranking import Ranker, rank_preferences
from services.advisor.review_stream import review_episodes
from services.advisor.settings import AdvisorSettings
from services.advisor.situations import SituationCache, cache_file

log = logging.getLogger(__name__)
T = TypeVar("T")


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

    async def on_outcome(self, msg: Msg) -> None:
        """An actor's episode outcomes: the policy-performance signal of caches tuned by performance."""
        try:
            outcome = decode(msg.data, AdviceOutcome)
        except WireError as exc:
            metrics.UNDECODABLE.labels("outcome").inc()
            self._log.warning("undecodable outcome report on %s dropped: %s", msg.subject, exc)
            return
        for advisor in self.advisors:
            advisor.observe_outcome(outcome)

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


def build_advisors(settings: AdvisorSettings) -> list[Advisor]:
    advisors = []
    for spec in settings.advisors:
        cache, tuner = None, None
        # The simulated backend too: it stands in for a served LLM (benchmarks measure what the cache saves on it).
        if settings.cache and spec.backend in ("embedded", "openai", "simulated"):
            by_performance = settings.cache_tuning == "performance"
            cache = AdviceCache(
                settings.cache_size,
                settings.cache_max_distance,
                settings.cache_target_agreement,
                settings.cache_audit_rate,
                seed=spec.seed,
                adapt_to_agreement=not by_performance,
            )
            if by_performance:
                tuner = PerformanceTuner(cache, settings.cache_tuning_window, settings.cache_tuning_tolerance)
        backend = create_backend(spec, settings.third_party_log_level)
        situations = None
        # Not the planners: they read the exact state.
        if settings.situation_cache and spec.backend in ("embedded", "openai", "random", "plugin"):
            path = None
            if settings.situation_cache_dir is not None and spec.backend in ("embedded", "openai"):
                model = spec.model if spec.backend == "openai" else "smollm2-135m"
                path = cache_file(settings.situation_cache_dir, spec.name, model, Prompt(settings).options_version)
            situations = SituationCache(settings.situation_cache_size, path)
        advisors.append(Advisor(spec, backend, cache, settings.max_pending, situations, tuner))
    return advisors


async def serve(settings: AdvisorSettings, stop: asyncio.Event) -> None:
    advisors = build_advisors(settings)
    ranker = None
    if settings.preference_ranker is not None:
        ranker = Ranker(settings.preference_ranker, settings.third_party_log_level)
    try:
        async with ServiceRuntime(settings, metrics.SERVICE, metrics.REGISTRY) as runtime, ServiceTasks() as tasks:
            service = AdvisorService(settings, runtime.bus, advisors)
            runtime.reads = sorted({advisor.backend.reads for advisor in advisors})
            await runtime.bus.subscribe(subjects.heartbeat_wildcard(settings.run), service.on_heartbeat)
            await runtime.bus.subscribe(
                subjects.digest_wildcard(settings.run), service.on_digest, queue=settings.queue_group
            )
            if any(advisor.tuner is not None for advisor in advisors):
                await runtime.bus.subscribe(subjects.outcome_wildcard(settings.run), service.on_outcome)
            for advisor in advisors:
                for i in range(settings.workers):
                    tasks.start(service.work(advisor), name=f"advisor-{advisor.spec.name}-{i}")
            if settings.review:
                tasks.start(review_episodes(settings, runtime.bus, advisors, service.policies), name="review")
            if ranker is not None:
                tasks.start(rank_preferences(settings, runtime.bus, ranker), name="preferences")
            tasks.start(report_progress("advisor", service.progress, settings.progress_interval_s), name="progress")
            await stop.wait()
            await tasks.stop_all()
    finally:
        for advisor in advisors:
            await advisor.backend.close()
        if ranker is not None:
            await ranker.close()


def main() -> None:
    run_until_signalled(serve, AdvisorSettings())
