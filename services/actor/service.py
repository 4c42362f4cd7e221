"""The actor process: the rollout wired to NATS; each job in its own module, this one the wiring and the step loop.

- Bias updates (own subject and broadcast) land in the bias tables from a callback; the step loop reads them
  between steps and never waits for the advisor or router. State-scoped advice reaches every bot whose observation
  has the advised key (`bias.py`); option advice runs through skills (`options.py`); digests ask about states with
  no advice yet, at a bounded rate (`asking.py`, `digests.py`); episode outcomes go to the router's trust
  (`outcomes.py`).
- Chunks go to JetStream through a bounded retry buffer (`shipper.py`): nothing produced is dropped.
- Flow control (`flow.py`): sample about one policy version behind the learner, not racing ahead of it.
- New weights are fetched and verified off the step loop and installed between chunks (`follower.py`), so every
  chunk is sampled by exactly one policy version; with `backend=onnx`, ONNX Runtime runs the forward, each
  version's model checked against the torch output the learner announced, and a model build never pauses the bots.
- The step loop, the chunk shipper and weight fetches run in one task group: if any of them fails, the process
  logs the traceback and exits non-zero instead of heartbeating on with a dead loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

import numpy as np
import torch
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from ala.bus import Bus
from ala.envs import EnvAdapter, adapter_for
from ala.progress import Rate, report_progress
from ala.ratelimit import RateLimitedLog
from ala.rl.onnx_policy import OnnxOptions, export_verified, select_providers
from ala.rl.policy import Agent
from ala.rl.rollout import Rollout
from ala.rl.trajectory import to_chunk
from ala.service import ServiceRuntime, ServiceTasks, run_until_signalled
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
from services.actor.flow import FlowControl
from services.actor.follower import WeightsFollower, report_forward
from services.actor.options import OptionExecutor
from services.actor.outcomes import OutcomeLedger
from services.actor.settings import ActorSettings
from services.actor.shipper import ChunkShipper
from services.actor.states import exact_state_keys, judge, state_keys

log = logging.getLogger(__name__)


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
        self.bus = bus
        self.rollout = rollout
        self.bias = bias
        self.adapter = adapter
        self.spec = rollout.agent.spec
        self.tasks = tasks
        self.flow = FlowControl(settings.max_chunks_ahead, settings.flow_timeout_s)
        self.shipper = ChunkShipper(bus, settings.retry_buffer_chunks, self.flow)
        self.weights = WeightsFollower(
            bus, rollout, tasks, settings.weights_fetch_timeout_s, onnx_options, self.flow.progressed.set
        )
        # Unique across restarts of this actor, so the learner never mistakes a new chunk for a redelivery.
        self.next_chunk_seq = time.time_ns() // 1000
        self._reject_log = RateLimitedLog(log)
        self._decode_log = RateLimitedLog(log)
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
        if announcement.run != self.settings.run:
            return
        self.flow.heard(announcement)
        self.weights.want(announcement)

    # The step loop.
    async def run(self, stop: asyncio.Event) -> None:
        subject = subjects.trajectory_subject(self.settings.run, self.settings.instance)
        await self.flow.wait_for_learner()
        while not stop.is_set():
            await self.flow.wait_for_training(self.weights.downloading, self.weights.install_pending)
            self.weights.install_pending()
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
            await self.shipper.enqueue((subject, encode(chunk), msg_id))

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
        tasks.start(actor.shipper.ship(), name="ship-chunks")
        tasks.start(actor.report_outcomes(), name="report-outcomes")
        stepping = tasks.start(actor.run(stop), name="step-loop")
        tasks.start(report_progress("actor", actor.progress, settings.progress_interval_s), name="progress")
        await stop.wait()
        grace = settings.nats.publish_timeout_s * 5
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stepping, grace)  # finish and enqueue the current chunk
            await asyncio.wait_for(actor.shipper.outbox.join(), grace)
        if actor.shipper.outbox.qsize():
            log.error("%d chunks not acknowledged at shutdown", actor.shipper.outbox.qsize())
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


def main() -> None:
    run_until_signalled(serve, ActorSettings())
