"""The router process: `Router` wired to NATS, plus the control API served by uvicorn in the same event loop.

Advice arrives from every advisor on `ala.<run>.advice.*`; actors' heartbeats say which actors exist and their
action spaces; weight announcements give the learner version that strength annealing can follow. The router
never crashes on input: every dropped advice is counted by reason and logged at a bounded rate.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Iterator

import uvicorn
from nats.aio.msg import Msg

from ala.bus import Bus
from ala.metrics import child
from ala.progress import Rate, report_progress
from ala.ratelimit import RateLimitedLog
from ala.service import ServiceRuntime, ServiceTasks, run_until_signalled
from protos import Advice, AdviceOutcome, BiasUpdate, Heartbeat, WeightsAnnouncement, WireError, decode, subjects
from services.router import metrics
from services.router.api import Status, create_app
from services.router.core import AdviceRejected, LiveConfig, Router, Target, clear_all
from services.router.settings import RouterSettings

log = logging.getLogger(__name__)
MAX_ADVISOR_LABELS = 64


class ApiServer(uvicorn.Server):
    """uvicorn inside the service's event loop: the service owns SIGINT/SIGTERM and stops the API itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class RouterService:
    def __init__(self, settings: RouterSettings, bus: Bus, tasks: ServiceTasks) -> None:
        self.settings = settings
        self.bus = bus
        self.tasks = tasks
        self.router = Router(settings.live_config(), actor_timeout_s=settings.actor_timeout_s)
        self._reject_log = RateLimitedLog(log)
        self._decode_log = RateLimitedLog(log)
        self._advisor_labels: set[str] = set()
        self._remerges: dict[Target, asyncio.TimerHandle] = {}
        self.closed = False
        self.counts: collections.Counter[str] = collections.Counter()
        """Advice received and accepted, bias updates sent, rejections by reason: for the progress line."""
        self._received_rate, self._sent_rate = Rate(), Rate()
        self.set_config(self.router.config)

    async def on_advice(self, msg: Msg) -> None:
        received = time.perf_counter()
        now = time.time()
        try:
            advice = decode(msg.data, Advice)
        except WireError as exc:
            self._reject("decode", exc)
            return
        advisor = self._advisor_label(advice.advisor)
        child(metrics.ADVICE_RECEIVED, advisor).inc()
        self.counts["received"] += 1
        try:
            update = self.router.accept(advice, self.settings.run, now)
        except AdviceRejected as exc:
            self._reject(exc.reason, exc)
            return
        child(metrics.ADVICE_ACCEPTED, advisor).inc()
        self.counts["accepted"] += 1
        if update is not None:
            await self._publish(update)
        metrics.PROCESSING_SECONDS.observe(time.perf_counter() - received)

    async def _publish(self, update: BiasUpdate) -> None:
        if await self.bus.publish(subjects.bias_subject(self.settings.run, update.actor), update, kind="bias"):
            metrics.BIAS_UPDATES.inc()
            self.counts["sent"] += 1
        if len(update.advice_ids) > 1:
            self._schedule_remerge(update)

    def _schedule_remerge(self, update: BiasUpdate) -> None:
        """A merged bias lives as long as its shortest opinion; when that one expires, the others still count."""
        if self.closed:
            return
        bot = None if update.state_key or not update.bots else update.bots[0]
        target: Target = (update.actor, bot, update.state_key)
        previous = self._remerges.pop(target, None)
        if previous is not None:
            previous.cancel()
        self._remerges[target] = asyncio.get_running_loop().call_later(update.ttl_s, self._remerge, target)

    def _remerge(self, target: Target) -> None:
        self._remerges.pop(target, None)
        update = self.router.merged(target, self.settings.run, time.time())
        if update is not None:
            self.tasks.start(self._publish(update), name="remerge")

    def _advisor_label(self, advisor: str) -> str:
        """Advisor names come off the wire: label at most MAX_ADVISOR_LABELS of them, the rest as 'other'."""
        if advisor in self._advisor_labels:
            return advisor
        if len(self._advisor_labels) < MAX_ADVISOR_LABELS or advisor in self.router.config.advisor_weights:
            self._advisor_labels.add(advisor)
            return advisor
        return "other"

    def _reject(self, reason: str, exc: Exception) -> None:
        child(metrics.REJECTED, reason).inc()
        self.counts[f"rejected:{reason}"] += 1
        self._reject_log.warning("advice rejected (%s): %s", reason, exc)

    async def on_heartbeat(self, msg: Msg) -> None:
        try:
            heartbeat = decode(msg.data, Heartbeat)
        except WireError as exc:
            self._undecodable("heartbeat", msg, exc)  # heartbeats are advisory: the next will do
            return
        self.router.observe_heartbeat(heartbeat, time.time())
        metrics.ACTORS.set(len(self.router.actors))

    async def on_outcome(self, msg: Msg) -> None:
        try:
            outcome = decode(msg.data, AdviceOutcome)
        except WireError as exc:
            metrics.OUTCOMES_REJECTED.inc()
            self._reject_log.warning("advice outcome rejected: %s", exc)
            return
        if outcome.run == self.settings.run:
            self.router.trust.observe(outcome)

    async def update_trust(self) -> None:
        """Move every advisor's trust with the evidence, every `trust_interval_s`."""
        while True:
            await asyncio.sleep(self.settings.trust_interval_s)
            for update in self.router.update_trust(self.settings.run, time.time()):
                await self._publish(update)
            for advisor, trust in self.router.trust.trust.items():
                label = self._advisor_label(advisor)
                child(metrics.TRUST, label).set(trust)
                child(metrics.TRUST_ADVANTAGE, label).set(self.router.trust.advantage.get(advisor, 0.0))

    async def on_weights(self, msg: Msg) -> None:
        try:
            self.router.learner_version = decode(msg.data, WeightsAnnouncement).version
        except WireError as exc:
            self._undecodable("weights", msg, exc)  # the schedule's clock waits for the next announcement

    def _undecodable(self, kind: str, msg: Msg, exc: WireError) -> None:
        """Counted and logged: a peer on another wire version, or something else publishing on our subjects."""
        metrics.UNDECODABLE.labels(kind).inc()
        self._decode_log.warning("undecodable %s on %s dropped: %s", kind, msg.subject, exc)

    @property
    def config(self) -> LiveConfig:
        return self.router.config

    def set_config(self, config: LiveConfig) -> None:
        self.router.config = config
        for advisor, weight in config.advisor_weights.items():
            metrics.ADVISOR_WEIGHT.labels(advisor).set(weight)
        metrics.STRENGTH.set(self.router.strength(time.time()))
        log.info("live config: %s", config.model_dump())

    async def kill(self) -> list[str]:
        """Zero bias to every known actor (overriding whatever they hold) and disable the router."""
        self.router.kill()
        metrics.KILLS.inc()
        now, cleared = time.time(), []
        for name, actor in self.router.actors.items():
            update = clear_all(self.settings.run, name, actor.action_space.n, self.settings.kill_ttl_s, now)
            if await self.bus.publish(subjects.bias_subject(self.settings.run, name), update, kind="bias"):
                cleared.append(name)
        await self.bus.nc.flush()
        log.warning("kill: biases cleared on %s; router disabled", cleared)
        return cleared

    def close(self) -> None:
        self.closed = True
        for handle in self._remerges.values():
            handle.cancel()

    def status(self) -> Status:
        now = time.time()
        return Status(
            enabled=self.router.config.enabled,
            strength=self.router.strength(now),
            learner_version=self.router.learner_version,
            actors={name: info.action_space.n for name, info in self.router.actors.items()},
            active_targets=self.router.active_targets(now),
        )

    def progress(self) -> str:
        """The router's console line (every few seconds, see `ala.progress`)."""
        rejected = {k.split(":", 1)[1]: v for k, v in self.counts.items() if k.startswith("rejected:")}
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(rejected.items())) or "none"
        trust = ", ".join(f"{a} {t:.2f}" for a, t in sorted(self.router.trust.trust.items())) or "no evidence yet"
        return (
            f"advice {self._received_rate.per_second(self.counts['received']):.1f}/s  "
            f"accepted {self.counts['accepted']}/{self.counts['received']}  rejected: {reasons}  "
            f"biases sent {self._sent_rate.per_second(self.counts['sent']):.1f}/s  "
            f"live targets {self.router.active_targets(time.time())}  actors {len(self.router.actors)}  "
            f"trust: {trust}"
        )

    async def report(self) -> None:
        while True:
            now = time.time()
            metrics.ACTIVE_BIASES.set(self.router.active_targets(now))
            metrics.STRENGTH.set(self.router.strength(now))
            await asyncio.sleep(1.0)


async def serve(settings: RouterSettings, stop: asyncio.Event) -> None:
    async with ServiceRuntime(settings, metrics.SERVICE, metrics.REGISTRY) as runtime, ServiceTasks() as tasks:
        service = RouterService(settings, runtime.bus, tasks)
        runtime.bias_bounds = lambda: (service.router.config.b_max, service.router.config.max_ttl_s)
        runtime.advisor_reach = service.router.advisor_reach
        run = settings.run
        await runtime.bus.subscribe(subjects.heartbeat_wildcard(run), service.on_heartbeat)
        await runtime.bus.subscribe(subjects.weights_subject(run), service.on_weights)
        await runtime.bus.subscribe(subjects.advice_wildcard(run), service.on_advice)
        await runtime.bus.subscribe(subjects.outcome_wildcard(run), service.on_outcome)
        api = ApiServer(
            uvicorn.Config(create_app(service), host=settings.api_host, port=settings.api_port, log_level="warning")
        )
        api_task = tasks.start(api.serve(), name="router-api")
        tasks.start(service.report(), name="router-report")
        tasks.start(service.update_trust(), name="router-trust")
        tasks.start(report_progress("router", service.progress, settings.progress_interval_s), name="progress")
        await stop.wait()
        api.should_exit = True
        await api_task
        service.close()
        await tasks.stop_all()


def main() -> None:
    run_until_signalled(serve, RouterSettings())
