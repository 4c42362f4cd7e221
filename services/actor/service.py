"""The actor process: the rollout worker (`ala.rl.worker`) wired to NATS; each job in its own module.

- The advice client (`advice_client.py`) is the worker's advice source: bias updates, digests, outcomes, options.
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
from ala.rl.worker import collect_chunk
from ala.service import ServiceRuntime, ServiceTasks, run_until_signalled
from protos import ActionSpace, WeightsAnnouncement, WireError, decode, encode, subjects
from services.actor import metrics
from services.actor.advice_client import AdviceClient
from services.actor.bias import BiasTable
from services.actor.flow import FlowControl
from services.actor.follower import WeightsFollower, report_forward
from services.actor.settings import ActorSettings
from services.actor.shipper import ChunkShipper

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
        self.advice = AdviceClient(settings, bus, rollout, bias, adapter)
        self.flow = FlowControl(settings.max_chunks_ahead, settings.flow_timeout_s)
        self.shipper = ChunkShipper(bus, settings.retry_buffer_chunks, self.flow)
        self.weights = WeightsFollower(
            bus, rollout, tasks, settings.weights_fetch_timeout_s, onnx_options, self.flow.progressed.set
        )
        # Unique across restarts of this actor, so the learner never mistakes a new chunk for a redelivery.
        self.next_chunk_seq = time.time_ns() // 1000
        self._decode_log = RateLimitedLog(log)
        self.step_rate = Rate()

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

    # The step loop: a chunk at a time, each sampled by one policy version, shipped without waiting.
    async def run(self, stop: asyncio.Event) -> None:
        subject = subjects.trajectory_subject(self.settings.run, self.settings.instance)
        await self.flow.wait_for_learner()
        while not stop.is_set():
            await self.flow.wait_for_training(self.weights.downloading, self.weights.install_pending)
            self.weights.install_pending()
            trajectory = await collect_chunk(self.rollout, self.advice)
            chunk_seq, self.next_chunk_seq = self.next_chunk_seq, self.next_chunk_seq + 1
            chunk = to_chunk(trajectory, self.settings.run, self.settings.instance, chunk_seq)
            msg_id = subjects.trajectory_msg_id(self.settings.run, self.settings.instance, chunk_seq)
            await self.shipper.enqueue((subject, encode(chunk), msg_id))

    def progress(self) -> str:
        """The actor's console line (every few seconds, see `ala.progress`)."""
        return (
            f"steps {self.rollout.env_steps:,}  {self.step_rate.per_second(self.rollout.env_steps):,.0f}/s  "
            f"policy v{self.rollout.policy_version}  return {self.advice.mean_return():.3f} (last 100)  "
            + self.advice.progress()
        )

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
        await runtime.bus.subscribe(subjects.bias_subject(run, settings.instance), actor.advice.on_bias)
        await runtime.bus.subscribe(subjects.bias_subject(run, subjects.BROADCAST), actor.advice.on_bias)
        await runtime.bus.subscribe(subjects.weights_subject(run), actor.on_weights)
        await runtime.bus.subscribe(subjects.heartbeat_wildcard(run, "router"), actor.advice.on_router_heartbeat)
        await runtime.bus.subscribe(subjects.heartbeat_wildcard(run, "advisor"), actor.advice.on_advisor_heartbeat)
        await runtime.bus.subscribe(
            subjects.digest_request_subject(run, settings.instance), actor.advice.on_digest_request
        )
        await actor.latest_weights()
        tasks.start(actor.shipper.ship(), name="ship-chunks")
        tasks.start(actor.advice.report_outcomes(), name="report-outcomes")
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
