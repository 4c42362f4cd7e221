"""The actor process: the rollout wired to NATS.

- Bias updates (own subject and broadcast) land in the bias tables from a callback; the step loop reads them
  between steps and never waits for the advisor or router. State-scoped advice reaches every bot whose observation
  has the advised key (`bias.py`); digests ask about states with no advice yet, at a bounded rate (`asking.py`).
- Chunks go to JetStream through a bounded retry buffer: when the broker is away they wait and are retried with the
  same `Nats-Msg-Id`; when the buffer is full, stepping waits. Nothing produced is dropped.
- Flow control: the learner's weights announcements say how far training has come (`settled_stream_seq`); the
  actor starts a chunk only while at most `max_chunks_ahead` of its chunks wait to be trained and the newest
  announced weights are downloaded, so it samples with a policy about one version old instead of racing ahead
  (a wait longer than `flow_timeout_s` is counted and logged, and sampling goes on). A model being built (a
  TensorRT engine: seconds) counts as installed: the bots never pause for a build.
- New weights are fetched and verified (size, sha256, policy spec, shapes) off the step loop and installed
  between chunks, so every chunk is sampled by exactly one policy version.
- With `backend=onnx`, ONNX Runtime runs the forward (`ala.rl.onnx_policy`, on the first available of the
  configured execution providers): each version's ONNX model is fetched with its weights, loaded and checked on the
  probe batch against the torch output the learner announced, in a worker thread; a model that fails is refused
  (counted by reason) and the old version stays in use. Sampling, log-probabilities and values come from the
  model's output.
- The step loop, the chunk shipper and weight fetches run in one task group: if any of them fails, the process
  logs the traceback and exits non-zero instead of heartbeating on with a dead loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque

import numpy as np
import torch
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from ala.bus import Bus, PublishError
from ala.envs import EnvAdapter, adapter_for
from ala.progress import Rate, report_progress
from ala.ratelimit import RateLimitedLog
from ala.rejection import Rejected
from ala.rl.onnx_policy import OnnxOptions, OnnxPolicy, export_verified, select_providers
from ala.rl.policy import Agent
from ala.rl.rollout import Rollout
from ala.rl.trajectory import to_chunk
from ala.service import ServiceRuntime, ServiceTasks, run_until_signalled
from ala.weights import fetch_onnx_policy, fetch_policy
from protos import (
    ActionSpace,
    BiasUpdate,
    DigestRequest,
    Heartbeat,
    WeightsAnnouncement,
    WireError,
    decode,
    encode,
    subjects,
)
from services.actor import metrics
from services.actor.advisors import AdvisorsHeard
from services.actor.asking import Asker, Reason
from services.actor.bias import BiasLookup, BiasRejected, BiasTable
from services.actor.digests import digest_contents, make_digest
from services.actor.options import OptionExecutor
from services.actor.outcomes import OutcomeLedger
from services.actor.settings import ActorSettings
from services.actor.states import exact_state_keys, judge, state_keys

log = logging.getLogger(__name__)
RETRY_BACKOFF_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
MAX_TRACKED_CHUNKS = 1024
WEIGHTS_RETRY_S = 0.5
MAX_WEIGHTS_RETRY_S = 5.0
"""Backoff of a weights fetch that failed for the broker's sake (a newer announcement replaces it at once)."""


class Actor:
    def __init__(
        self,
        settings: ActorSettings,
        bus: Bus,
        rollout: Rollout,
        bias: BiasTable,
        adapter: EnvAdapter,
        tasks: ServiceTasks,
        onnx_options: OnnxOptions | None = None,
    ) -> None:
        self.settings = settings
        self.onnx_options = onnx_options
        """With backend onnx: how each version's ONNX model is loaded and checked."""
        self.bus = bus
        self.rollout = rollout
        self.bias = bias
        self.adapter = adapter
        self.spec = rollout.agent.spec
        self.tasks = tasks
        self.outbox: asyncio.Queue[tuple[str, bytes, str]] = asyncio.Queue(settings.retry_buffer_chunks)
        # Unique across restarts of this actor, so the learner never mistakes a new chunk for a redelivery.
        self.next_chunk_seq = time.time_ns() // 1000
        self.latest_announced = 0
        self.has_learner_weights = False
        """Until the first weights arrive, the actor samples with its own random initialisation (as version 0)."""
        self._pending_policy: tuple[Agent, OnnxPolicy | None, int] | None = None
        self._fetch: asyncio.Task[None] | None = None
        self._building = False
        """An ONNX model (a TensorRT engine) is being built and verified in a worker thread."""
        self._wanted: WeightsAnnouncement | None = None
        self._reject_log = RateLimitedLog(log)
        self._flow_log = RateLimitedLog(log)
        self._decode_log = RateLimitedLog(log)
        self.flow_active = False
        self.learner_ranks = 1
        """From the announcements: several learner ranks take a chunk each per update (see `_wait_for_training`)."""
        """Flow control starts with the first announcement: without a learner there is nothing to wait for."""
        self.settled_stream_seq = 0
        self.unacked_chunks = 0
        """Chunks enqueued and not yet stored by JetStream."""
        self.shipped_seqs: deque[int] = deque(maxlen=MAX_TRACKED_CHUNKS)
        """Stream sequences of this actor's stored chunks that the learner has not settled yet, ascending (one
        shipper stores them in order; announcements drop the settled ones from the left). Bounded: with no learner
        nothing settles them."""
        self.progressed = asyncio.Event()
        """Set whenever training may have caught up: an announcement, installed weights, a stored chunk."""
        self.recent_returns: deque[float] = deque(maxlen=100)
        self.requested_digests: set[int] = set()
        self.asker = Asker(
            rollout.num_bots,
            settings.digest_rate_per_s,
            settings.digest_bot_interval_s,
            settings.ask_again_s,
            max_keys=4 * settings.state_table_size,
        )
        offered = digest_contents(adapter, rollout, settings.digest_full_state)
        self.advisors = AdvisorsHeard(offered, settings.heartbeat_interval_s)
        self.judge_rng = np.random.default_rng(settings.rollout_seed)
        self.outcomes = OutcomeLedger(rollout.num_bots, settings.control_share, settings.rollout_seed + 1)
        self.keys = self.state_keys()
        """The key of each bot's current observation: what state-scoped advice is looked up by."""
        self.exact_keys = self.exact_state_keys()
        """The key of each bot's exact state, looked up first; empty while no exact-state advice is about."""
        self.step_rate = Rate()
        self.options = OptionExecutor(adapter, bias, settings.state_table_size)
        self.report_bounds()

    # Bias updates: a callback writes the table; the step loop reads it.
    async def on_bias(self, msg: Msg) -> None:
        start = time.perf_counter()
        try:
            update = decode(msg.data, BiasUpdate)
            table = self.options.table if update.options else self.bias  # option advice: `options.py`
            clipped, capped = table.clipped_elements, table.capped_ttls
            table.apply(update, time.monotonic(), self.tick)
        except WireError as exc:
            self._reject("decode", exc)
            return
        except BiasRejected as exc:
            self._reject(exc.reason, exc)
            return
        if table.clipped_elements > clipped or table.capped_ttls > capped:
            metrics.BIAS_BOUNDED.labels("element").inc(table.clipped_elements - clipped)
            metrics.BIAS_BOUNDED.labels("ttl").inc(table.capped_ttls - capped)
        metrics.BIAS_APPLY_SECONDS.observe(time.perf_counter() - start)
        if update.advice_created_at > 0:
            metrics.ADVICE_TO_BIAS_SECONDS.observe(max(0.0, time.time() - update.advice_created_at))

    async def on_router_heartbeat(self, msg: Msg) -> None:
        """The router's bounds, as configured now: the actor holds every bias to the tighter of its own and these.
        An undecodable heartbeat changes nothing: the bounds in force stay (never looser than the actor's own)."""
        heartbeat = self._heartbeat(msg, "router")
        if heartbeat is None:
            return
        if heartbeat.b_max > 0:
            self.bias.max_abs_bias = min(self.settings.max_abs_bias, heartbeat.b_max)
        if heartbeat.max_ttl_s > 0:
            self.bias.max_ttl_s = min(self.settings.max_ttl_s, heartbeat.max_ttl_s)
        if heartbeat.reach:
            self.hear_reach(heartbeat.reach)
        self.report_bounds()

    async def on_advisor_heartbeat(self, msg: Msg) -> None:
        heartbeat = self._heartbeat(msg, "advisor")
        if heartbeat is not None:
            self.advisors.hear(heartbeat)

    def _heartbeat(self, msg: Msg, sender: str) -> Heartbeat | None:
        """The heartbeat, or None (counted and logged): the next one will do."""
        try:
            return decode(msg.data, Heartbeat)
        except WireError as exc:
            metrics.UNDECODABLE.labels("heartbeat").inc()
            self._decode_log.warning("undecodable %s heartbeat on %s dropped: %s", sender, msg.subject, exc)
            return None

    def hear_reach(self, reach: dict[str, float]) -> None:
        """The router's reach per advisor: new episodes are assigned by it (`outcomes.py`), and while no advisor
        reaches `ask_full_reach` of the episodes, digests go out at the trickle the most trusted one can use (0.05 of
        the rate on probation), none while every one is silenced for good."""
        self.outcomes.set_reach(reach)
        usable = max(reach.values())
        share = 1.0 if usable >= self.settings.ask_full_reach else usable
        self.asker.bucket.rate_per_s = self.settings.digest_rate_per_s * share
        self.asker.bucket.burst = max(1.0, self.asker.bucket.rate_per_s / 4)
        metrics.DIGEST_RATE.set(self.asker.bucket.rate_per_s)

    def report_bounds(self) -> None:
        metrics.BIAS_BOUND.labels("b_max").set(self.bias.max_abs_bias)
        metrics.BIAS_BOUND.labels("max_ttl_s").set(self.bias.max_ttl_s)

    def _reject(self, reason: str, exc: Exception) -> None:
        metrics.BIAS_REJECTED.labels(reason).inc()
        self._reject_log.warning("bias update rejected (%s): %s", reason, exc)

    async def on_digest_request(self, msg: Msg) -> None:
        try:
            request = decode(msg.data, DigestRequest)
        except WireError as exc:
            metrics.DIGEST_REQUESTS_REJECTED.inc()
            self._decode_log.warning("undecodable digest request on %s dropped: %s", msg.subject, exc)
            return
        bots = request.bots or range(self.rollout.num_bots)
        self.requested_digests.update(bot for bot in bots if bot < self.rollout.num_bots)

    # Weights: announcements start a fetch; the loop installs the result between chunks.
    async def on_weights(self, msg: Msg) -> None:
        try:
            announcement = decode(msg.data, WeightsAnnouncement)
        except WireError as exc:
            self._undecodable_weights(msg.subject, exc)
            return
        self.announce(announcement)

    def _undecodable_weights(self, subject: str | None, exc: WireError) -> None:
        metrics.WEIGHTS_REJECTED.labels("decode").inc()
        self._decode_log.warning("undecodable weights announcement on %s dropped: %s", subject, exc)

    def announce(self, announcement: WeightsAnnouncement) -> None:
        # Any version but the one in use: a learner restarted without its checkpoint starts again from 0.
        if announcement.run != self.settings.run:
            return
        self.flow_active = True
        self.learner_ranks = announcement.learner_ranks
        self.settled_stream_seq = max(self.settled_stream_seq, announcement.settled_stream_seq)
        while self.shipped_seqs and self.shipped_seqs[0] <= self.settled_stream_seq:
            self.shipped_seqs.popleft()
        self.progressed.set()
        if self.has_learner_weights and announcement.version == self.rollout.policy_version:
            return
        self.latest_announced = announcement.version
        self._wanted = announcement
        if self._fetch is None or self._fetch.done():
            self._fetch = self.tasks.start(self._fetch_weights(), name="fetch-weights")

    async def _fetch_weights(self) -> None:
        """Fetch the newest wanted weights. A fetch that failed for the broker's sake (missing, timeout: a restart)
        is retried with backoff until it succeeds or a newer announcement replaces it: an actor left on old
        weights ships only stale chunks, which the learner cannot train on, so nothing else would unstick it."""
        retry_s = WEIGHTS_RETRY_S
        while self._wanted is not None:
            announcement, self._wanted = self._wanted, None
            timeout_s = self.settings.weights_fetch_timeout_s
            try:
                agent = await fetch_policy(self.bus, announcement, self.spec, self.rollout.device, timeout_s)
                onnx = None
                if self.onnx_options is not None:
                    self._building = True  # seconds on TensorRT: flow control counts it as installed meanwhile
                    self.progressed.set()  # and wakes up to see it
                    try:
                        onnx = await fetch_onnx_policy(self.bus, announcement, agent, self.onnx_options, timeout_s)
                    finally:
                        self._building = False
            except Rejected as exc:
                metrics.WEIGHTS_REJECTED.labels(exc.reason).inc()
                log.warning("weights rejected (%s): %s", exc.reason, exc)
                if exc.reason in ("missing", "timeout") and self._wanted is None:
                    await asyncio.sleep(retry_s)
                    retry_s = min(2 * retry_s, MAX_WEIGHTS_RETRY_S)
                    self._wanted = self._wanted or announcement
                continue
            retry_s = WEIGHTS_RETRY_S
            self._pending_policy = (agent, onnx, announcement.version)
            self.progressed.set()

    def _install_pending_policy(self) -> None:
        if self._pending_policy is not None:
            agent, onnx, version = self._pending_policy
            self.rollout.set_policy(agent, version, onnx)
            report_forward(self.rollout)
            self.has_learner_weights = True
            metrics.WEIGHTS_LOADED.inc()
            log.debug("policy version %d installed", version)
        self._pending_policy = None
        metrics.POLICY_VERSION.set(self.rollout.policy_version)
        metrics.POLICY_LAG.set(max(0, self.latest_announced - self.rollout.policy_version))

    # The step loop.
    async def run(self, stop: asyncio.Event) -> None:
        subject = subjects.trajectory_subject(self.settings.run, self.settings.instance)
        await self.wait_for_learner()
        while not stop.is_set():
            await self._wait_for_training()
            self._install_pending_policy()
            trajectory = self.rollout.new_trajectory()
            for t in range(self.rollout.num_steps):
                start = time.perf_counter()
                now = time.monotonic()
                lookup = self.bias.lookup(now, self.tick, self.keys, self.exact_keys)
                lookup = self.options.compose(lookup, self.rollout.obs, self.keys, now, self.tick)
                lookup.mute(self.outcomes.unreached(lookup.reach, lookup.advisors))
                self.outcomes.record_step(lookup.advisors)
                if self.settings.judge_rate:
                    judge(self.adapter, self.rollout, lookup, self.settings.judge_rate, self.judge_rng)
                applied = None if self.settings.advice_mode == "distill" else lookup.bias
                self.rollout.step(trajectory, t, applied, advice=self._to_distil(lookup), advised=self._advised(lookup))
                metrics.STEP_SECONDS.observe(time.perf_counter() - start)
                metrics.FORWARD_SECONDS.observe(self.rollout.forward_seconds)
                metrics.ENV_STEPS.inc(self.rollout.num_bots)
                metrics.ACTIVE_BIASES.set(int(lookup.bias.any(axis=1).sum()))
                metrics.BIASED_STEPS.labels("state").inc(int(lookup.from_state.sum()))
                metrics.BIASED_STEPS.labels("bot").inc(int(lookup.from_bot.sum()))
                await self._after_step()
                await asyncio.sleep(0)  # let bias and weights callbacks run between steps
            self.rollout.finish(trajectory)
            chunk_seq, self.next_chunk_seq = self.next_chunk_seq, self.next_chunk_seq + 1
            chunk = to_chunk(trajectory, self.settings.run, self.settings.instance, chunk_seq)
            msg_id = subjects.trajectory_msg_id(self.settings.run, self.settings.instance, chunk_seq)
            await self._enqueue((subject, encode(chunk), msg_id))

    def _to_distil(self, lookup: BiasLookup) -> np.ndarray | None:
        """The advice recorded for the learner to distil (advice modes distill and both): only where its reach, the
        router's trust in its advisor, is at least `distill_min_reach`. Distilling advice still on probation at the
        initial trust taught always-wrong advice as readily as the expert's."""
        if self.settings.advice_mode == "bias":
            return None
        return lookup.bias * (lookup.reach >= self.settings.distill_min_reach)[:, None]

    def _advised(self, lookup: BiasLookup) -> np.ndarray:
        """bool [N]: bots whose step advice touched, whatever its value (the learner's advised floor follows it):
        advice in force after the control group and reach are muted; in mode distill, only where it is recorded
        to distil, since there it touches nothing else."""
        if self.settings.advice_mode == "distill":
            return lookup.in_force & (lookup.reach >= self.settings.distill_min_reach)
        return lookup.in_force

    def chunks_ahead(self) -> int:
        """This actor's chunks not yet trained on: waiting to be stored, or stored and not settled."""
        return self.unacked_chunks + len(self.shipped_seqs)

    def _weights_in_flight(self) -> bool:
        """A download worth waiting for (milliseconds). A model build is not: the version it builds counts as
        installed, and the bots sample on with the one they have until it is ready."""
        if self._building:
            return False
        return self._wanted is not None or (self._fetch is not None and not self._fetch.done())

    async def wait_for_learner(self) -> None:
        """At start, wait up to `flow_timeout_s` for a learner's first weights: chunks sampled by this actor's own
        random initialisation teach the learner little and spend env steps. No learner: sampling starts anyway."""
        if self.settings.max_chunks_ahead == 0 or self.flow_active:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.progressed.wait(), self.settings.flow_timeout_s)
        if not self.flow_active:
            log.warning(
                "no learner weights within %.0fs: sampling with this actor's own policy", self.settings.flow_timeout_s
            )

    async def _wait_for_training(self) -> None:
        """Flow control (see the module docstring)."""
        limit = self.settings.max_chunks_ahead * self.learner_ranks
        if not self.flow_active or limit == 0:
            return
        start = time.perf_counter()
        deadline = start + self.settings.flow_timeout_s
        while self.chunks_ahead() > limit or self._weights_in_flight():
            self._install_pending_policy()  # between chunks: a version built while waiting goes in now
            self.progressed.clear()
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                metrics.FLOW_TIMEOUTS.inc()
                self._flow_log.warning(
                    "no training progress for %.0fs (%d chunks ahead): sampling on",
                    self.settings.flow_timeout_s,
                    self.chunks_ahead(),
                )
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progressed.wait(), remaining)
        metrics.FLOW_WAIT_SECONDS.inc(time.perf_counter() - start)

    @property
    def tick(self) -> int:
        """Steps each bot has taken: the clock of step-based expiry."""
        return self.rollout.env_steps // self.rollout.num_bots

    def state_keys(self) -> list[str]:
        return state_keys(self.adapter, self.rollout, self.settings.state_key)

    def exact_state_keys(self) -> list[str]:
        """Every bot's exact-state key while advice about exact states may be live (else none, at no cost)."""
        if not self.bias.may_have_exact_advice(time.monotonic()):
            return []
        return exact_state_keys(self.adapter, self.rollout)

    async def _after_step(self) -> None:
        for episode in self.rollout.finished:
            self.outcomes.end_episode(episode.bot, episode.episode_return)
            self.recent_returns.append(episode.episode_return)
            metrics.EPISODES.return_.observe(episode.episode_return)
            metrics.EPISODES.length.observe(episode.length)
        if self.rollout.finished:
            metrics.MEAN_RETURN.set(self.mean_return())
            self.bias.end_episodes([episode.bot for episode in self.rollout.finished])
        self.rollout.finished.clear()
        self.keys = self.state_keys()
        self.exact_keys = self.exact_state_keys()
        if not self.settings.digests_enabled:
            return
        reading = self.advisors.reading()
        metrics.ADVISORS_READING.set(-1 if reading is None else reading)
        if reading == 0:  # every advisor heard reads what these digests lack (CartPole has no text), or is gone
            self.requested_digests.clear()
            return
        requested, self.requested_digests = self.requested_digests, set()
        every = self.settings.digest_every_steps
        now, tick = time.monotonic(), self.tick
        limited_before = self.asker.limited
        # While exact-state advice is about, a state is asked about by its exact key: the bots that alias one
        # observation are in different states to such an advisor. Advice about either key means "advised".
        ask_keys, observation_of = self.keys, {}
        if self.exact_keys:
            ask_keys = [exact or key for exact, key in zip(self.exact_keys, self.keys, strict=True)]
            observation_of = dict(zip(ask_keys, self.keys, strict=True))

        def advised(key: str) -> bool:
            if self.bias.has_state_advice(key, now, tick) or self.options.advised(key, now, tick):
                return True
            return key in observation_of and self.bias.has_state_advice(observation_of[key], now, tick)

        chosen = self.asker.choose(
            ask_keys,
            advised,
            requested,
            periodic=bool(every) and tick % every == 0,
        )
        metrics.DIGESTS_LIMITED.inc(self.asker.limited - limited_before)
        for bot, reason in chosen:
            await self._publish_digest(bot, reason)

    def mean_return(self) -> float:
        return float(np.mean(self.recent_returns)) if self.recent_returns else float("nan")

    def progress(self) -> str:
        """The actor's console line (every few seconds, see `ala.progress`)."""
        return (
            f"steps {self.rollout.env_steps:,}  {self.step_rate.per_second(self.rollout.env_steps):,.0f}/s  "
            f"policy v{self.rollout.policy_version}  return {self.mean_return():.3f} (last 100)  "
            f"advised states {self.bias.live_states(time.monotonic(), self.tick)}, "
            f"bots {self.bias.active(time.monotonic(), self.tick)}"
            + (f"  option steps {self.options.option_steps:,}" if self.options.declared else "")
        )

    async def _publish_digest(self, bot: int, reason: Reason) -> None:
        s = self.settings
        digest = make_digest(
            s.run, s.instance, self.adapter, self.rollout, self.spec, bot, self.keys[bot], s.digest_full_state
        )
        if await self.bus.publish(subjects.digest_subject(self.settings.run, self.settings.instance), digest, "digest"):
            metrics.DIGESTS.labels(reason).inc()

    async def _enqueue(self, item: tuple[str, bytes, str]) -> None:
        self.unacked_chunks += 1
        if self.outbox.full():
            start = time.perf_counter()
            await self.outbox.put(item)
            metrics.BACKPRESSURE_SECONDS.inc(time.perf_counter() - start)
        else:
            self.outbox.put_nowait(item)
        metrics.RETRY_BUFFER.set(self.outbox.qsize())

    async def ship(self) -> None:
        """Publish chunks in order, each retried with its own `Nats-Msg-Id` until JetStream acknowledges it."""
        while True:
            subject, payload, msg_id = await self.outbox.get()
            for attempt in itertools.count():
                start = time.perf_counter()
                try:
                    ack = await self.bus.publish_durable(subject, payload, msg_id, kind="trajectory")
                    break
                except PublishError as exc:
                    metrics.CHUNK_RETRIES.inc()
                    self._reject_log.warning("chunk %s not acknowledged, retrying: %s", msg_id, exc)
                    await asyncio.sleep(RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)])
            metrics.SHIP_SECONDS.observe(time.perf_counter() - start)
            metrics.CHUNKS_SHIPPED.inc()
            self.unacked_chunks -= 1
            if ack.seq > self.settled_stream_seq:
                self.shipped_seqs.append(ack.seq)
            self.progressed.set()
            self.outbox.task_done()
            metrics.RETRY_BUFFER.set(self.outbox.qsize())

    async def report_outcomes(self) -> None:
        """Episode outcomes with and without advice, to the router's trust, every `outcome_interval_s`."""
        subject = subjects.outcome_subject(self.settings.run, self.settings.instance)
        while True:
            await asyncio.sleep(self.settings.outcome_interval_s)
            outcome = self.outcomes.take(self.settings.run, self.settings.instance)
            if outcome is not None:
                await self.bus.publish(subject, outcome, kind="outcome")

    async def latest_weights(self) -> None:
        """At start, the newest announcement kept by the weights stream (if the learner published any)."""
        try:
            msg = await self.bus.js.get_last_msg(
                subjects.WEIGHTS_ANNOUNCEMENTS.name, subjects.weights_subject(self.settings.run)
            )
        except NotFoundError:
            return
        try:
            announcement = decode(msg.data or b"", WeightsAnnouncement)
        except WireError as exc:
            self._undecodable_weights(msg.subject, exc)  # the next announcement will do
            return
        self.announce(announcement)


async def serve(settings: ActorSettings, stop: asyncio.Event) -> None:
    torch.set_num_threads(settings.torch_threads)
    torch.manual_seed(settings.rollout_seed)
    log.info("actor %s: seed %d", settings.instance, settings.rollout_seed)
    adapter = adapter_for(settings.env_id)
    envs = adapter.make_vector(settings.num_bots)
    spec = adapter.policy_spec(envs.envs[0], settings.hidden)
    metrics.EPISODES.rebucket(adapter.return_buckets(), adapter.length_buckets())
    rollout = Rollout(envs, Agent(spec), settings.num_steps, settings.rollout_seed, settings.device)
    onnx_options = await start_onnx(settings, rollout) if settings.backend == "onnx" else None
    report_forward(rollout)
    bias = BiasTable(
        settings.num_bots, spec.n_actions, settings.max_abs_bias, settings.state_table_size, settings.max_ttl_s
    )
    action_space = ActionSpace(n=spec.n_actions, names=spec.action_names, options=spec.option_names)
    async with (
        ServiceRuntime(
            settings,
            metrics.SERVICE,
            metrics.REGISTRY,
            action_space=action_space,
            num_bots=settings.num_bots,
            policy=spec,
            policy_backend=settings.backend,
        ) as runtime,
        ServiceTasks() as tasks,
    ):
        actor = Actor(settings, runtime.bus, rollout, bias, adapter, tasks, onnx_options)
        runtime.env_steps = lambda: rollout.env_steps
        chunk_bytes = len(encode(to_chunk(rollout.new_trajectory(), settings.run, settings.instance, 0)))
        if chunk_bytes > runtime.bus.nc.max_payload:
            raise ValueError(
                f"a chunk of {settings.num_steps} steps x {settings.num_bots} bots is {chunk_bytes} bytes, over the "
                f"broker's max_payload of {runtime.bus.nc.max_payload}: lower ALA_ACTOR_NUM_STEPS or raise "
                "ALA_BROKER_MAX_PAYLOAD_BYTES"
            )
        run = settings.run
        await runtime.bus.subscribe(subjects.bias_subject(run, settings.instance), actor.on_bias)
        await runtime.bus.subscribe(subjects.bias_subject(run, subjects.BROADCAST), actor.on_bias)
        await runtime.bus.subscribe(subjects.weights_subject(run), actor.on_weights)
        await runtime.bus.subscribe(subjects.heartbeat_wildcard(run, "router"), actor.on_router_heartbeat)
        await runtime.bus.subscribe(subjects.heartbeat_wildcard(run, "advisor"), actor.on_advisor_heartbeat)
        await runtime.bus.subscribe(subjects.digest_request_subject(run, settings.instance), actor.on_digest_request)
        await actor.latest_weights()
        tasks.start(actor.ship(), name="ship-chunks")
        tasks.start(actor.report_outcomes(), name="report-outcomes")
        stepping = tasks.start(actor.run(stop), name="step-loop")
        tasks.start(report_progress("actor", actor.progress, settings.progress_interval_s), name="progress")
        await stop.wait()
        grace = settings.nats.publish_timeout_s * 5
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stepping, grace)  # finish and enqueue the current chunk
            await asyncio.wait_for(actor.outbox.join(), grace)
        if actor.outbox.qsize():
            log.error("%d chunks not acknowledged at shutdown", actor.outbox.qsize())
        await tasks.stop_all()
    rollout.envs.close()


async def start_onnx(settings: ActorSettings, rollout: Rollout) -> OnnxOptions:
    """Backend onnx: this actor's own initial policy, exported and checked here on the providers configured, runs
    until the learner's first version; a provider that cannot reproduce the torch output stops the actor at start
    rather than at its first swap."""
    try:
        options = OnnxOptions(
            providers=select_providers(settings.onnx_providers),
            threads=settings.onnx_threads,
            max_batch=settings.num_bots,
            atol=settings.onnx_atol,
            trt_cache_dir=settings.onnx_trt_cache_dir,
        )
        onnx = await asyncio.to_thread(export_verified, rollout.agent, options)
    except ValueError as exc:  # no provider asked for is here; or the model is refused (Rejected is a ValueError)
        raise ValueError(f"ALA_ACTOR_BACKEND=onnx: {exc} (see ALA_ACTOR_ONNX_PROVIDERS, ALA_ACTOR_ONNX_ATOL)") from exc
    rollout.set_policy(rollout.agent, rollout.policy_version, onnx)
    log.info(
        "policy forward: ONNX Runtime on %s (asked for %s, this build has %s of them)",
        onnx.provider,
        settings.onnx_providers,
        list(options.providers),
    )
    return options


def report_forward(rollout: Rollout) -> None:
    metrics.POLICY_FORWARD.clear()
    if rollout.onnx is not None:
        metrics.POLICY_FORWARD.labels("onnx", rollout.onnx.provider).set(1)
    else:
        metrics.POLICY_FORWARD.labels("torch", str(rollout.device)).set(1)


def main() -> None:
    run_until_signalled(serve, ActorSettings())
