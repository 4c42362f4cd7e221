"""The learner process: `Learner` wired to NATS.

One durable pull consumer reads trajectory chunks. Exactly once across a crash: a trained chunk is acknowledged
only after a checkpoint that includes its update (weights, optimizer, trained chunk ids, stream position, policy
spec; written atomically every `checkpoint_every` updates, restored at start). A crash before the checkpoint
leaves its chunks unacknowledged: they come back and the restored learner trains them; a crash between the
checkpoint and the acknowledgement brings back chunks the checkpoint lists as trained: skipped. Weights are
published every update; after a crash, actors may hold versions the restored learner never reached: their chunks
are trained like any other (their behaviour log-probabilities are recorded), up to `max_policy_lag` versions
ahead. Bad chunks are terminated (never redelivered) and counted; chunks older than `max_policy_lag` are dropped
and counted. Weights go to the JetStream Object Store, then an announcement to the weights stream; each version
also goes there as an ONNX model (`ala.rl.onnx_policy`), checked with ONNX Runtime against the torch output it
announces, for actors that run ONNX.

With `world_size` > 1 this process is one of several learner ranks on `torch.distributed` (`ala.rl.distributed`):
all share the one durable consumer (JetStream hands each chunk to one rank), agree once per update to go on, average
gradients (`sync`) or parameters (`merge`), and checkpoint together, each checkpoint listing every rank's trained
chunks. Rank 0 is the parameter service: it alone publishes weights and announcements.

The network's shape comes from the wire: a fresh learner waits for the first actor heartbeat that carries a
`PolicySpec` (a restored one takes the spec from its checkpoint) and repeats it in every weights announcement.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import torch
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ala.bus import Bus, PublishError
from ala.metrics import timed
from ala.progress import Rate, report_progress
from ala.ratelimit import RateLimitedLog
from ala.rl.distributed import Ranks, join, leave
from ala.rl.exploration import TransitionCounts
from ala.rl.learner import Learner
from ala.rl.policy import resolve_device
from ala.rl.trajectory import Trajectory
from ala.service import ServiceRuntime, ServiceTasks, run_until_signalled, unless_stopped
from ala.tensorboard import Scalars
from protos import (
    Heartbeat,
    ImplicitReward,
    PolicySpec,
    WireError,
    decode,
    subjects,
)
from services.learner import metrics
from services.learner.admission import Admission, Refused
from services.learner.checkpoint import (
    PERSISTED_CHUNK_IDS,
    Checkpoint,
    TrainedChunks,
    checkpoint_path,
    read_checkpoint,
)
from services.learner.implicit import ImplicitRewards
from services.learner.publisher import WeightsPublisher
from services.learner.settings import LearnerSettings
from services.learner.steps import EnvStepLedger

log = logging.getLogger(__name__)
Batched = tuple[Msg, str, Trajectory]
"""A fetched chunk that will be trained: its message (to acknowledge), its id, its data."""
FETCH_RETRY_S = 0.5
ONNX_INTEREST_S = 30.0
"""With `onnx_export=auto`: how long after the last heartbeat of an actor running ONNX the learner keeps exporting."""
STOP_GRACE_S = 30.0
"""How long a stopping learner waits for the update in progress."""


class LearnerWorker:
    def __init__(self, settings: LearnerSettings, bus: Bus, learner: Learner, ranks: Ranks | None = None) -> None:
        self.settings = settings
        self.bus = bus
        self.learner = learner
        self.ranks = ranks
        """None: the only learner."""
        self.trained = TrainedChunks()
        self.last_stream_seq = 0
        self.checkpoint_path = checkpoint_path(settings)
        self.implicit = ImplicitRewards(settings.max_implicit_reward)
        self.env_steps = EnvStepLedger()
        exploration = None
        if settings.exploration_bonus > 0:
            exploration = TransitionCounts(settings.exploration_bonus, settings.exploration_alpha)
        self.admission = Admission(
            settings.run,
            settings.max_policy_lag,
            learner,
            self.trained,
            self.env_steps,
            self.implicit,
            exploration,
        )
        self.unsettled: list[tuple[Msg, str]] = []
        """Chunks trained on but not yet acknowledged, with their ids: they wait for the checkpoint that includes their
        update."""
        self.last_stats: dict[str, float] = {}
        self.publisher = WeightsPublisher(bus, settings.run)
        self.sample_rate = Rate()
        rank = f"-rank{settings.rank}" if settings.world_size > 1 else ""
        self.scalars = Scalars(settings.tensorboard_dir, settings.run, f"learner-{settings.instance}{rank}")
        self._scalars_rate = Rate()
        self._spec_log = RateLimitedLog(log)
        self._onnx_heard_at = -float("inf")
        self._fetch_log = RateLimitedLog(log)
        self._decode_log = RateLimitedLog(log)

    @property
    def spec(self) -> PolicySpec:
        return self.learner.agent.spec

    async def on_heartbeat(self, msg: Msg) -> None:
        try:
            heartbeat = decode(msg.data, Heartbeat)
        except WireError as exc:
            undecodable("heartbeat", msg, exc, self._decode_log)
            return
        self.hear(heartbeat)

    def hear(self, heartbeat: Heartbeat) -> None:
        """An actor's heartbeat: note whether it runs ONNX (`exports_onnx`); one that runs another policy than this
        learner trains would have every chunk refused: say so."""
        if heartbeat.policy_backend == "onnx":
            self._onnx_heard_at = time.monotonic()
        if heartbeat.policy is not None and heartbeat.policy != self.spec:
            metrics.ACTORS_MISMATCHED.inc()
            self._spec_log.error(
                "actor %s runs %s but this learner trains %s: its chunks will be refused",
                heartbeat.instance,
                heartbeat.policy,
                self.spec,
            )

    def progress(self) -> str:
        """The learner's console line (every few seconds, see `ala.progress`)."""
        s = self.last_stats
        line = (
            f"policy v{self.learner.version}  samples {self.learner.samples_trained:,}  "
            f"{self.sample_rate.per_second(self.learner.samples_trained):,.0f}/s"
        )
        if s:
            line += (
                f"  entropy {s['losses/entropy']:.3f}  kl {s['losses/approx_kl']:.4f}  "
                f"clipfrac {s['losses/clipfrac']:.2f}  explained var {s['losses/explained_variance']:.2f}  "
                f"lag {s['lag/version_diff_avg']:.1f}"
            )
        return line

    async def on_implicit_reward(self, msg: Msg) -> None:
        try:
            reward = decode(msg.data, ImplicitReward)
        except WireError as exc:
            undecodable("implicit_reward", msg, exc, self._decode_log)
            return
        self.implicit.add(reward)

    async def _settle(self, msg: Msg, terminate: bool = False) -> None:
        """Acknowledge a chunk trained on or dropped (terminate one that must never come back); actors learn how far
        training has come from the highest stream sequence settled."""
        await (msg.term() if terminate else msg.ack())
        self.last_stream_seq = max(self.last_stream_seq, msg.metadata.sequence.stream)

    async def train(self, batch: list[Batched]) -> None:
        with timed(metrics.UPDATE_SECONDS):
            # Off the event loop, so heartbeats and acks keep flowing during a long update.
            stats = await asyncio.to_thread(self._update, [trajectory for _, _, trajectory in batch])
        for msg, chunk_id, _ in batch:
            self.unsettled.append((msg, chunk_id))
            self.trained.add(chunk_id)
            # Training has come this far (actors' flow control reads it); the acknowledgement waits for the checkpoint.
            self.last_stream_seq = max(self.last_stream_seq, msg.metadata.sequence.stream)
        metrics.CHUNKS_TRAINED.inc(len(batch))
        metrics.POLICY_VERSION.set(self.learner.version)  # every rank's, published or not
        metrics.SAMPLES.inc(stats["samples"])
        for name, value in stats.items():
            metrics.TRAINING.labels(name).set(value)
        self.last_stats = stats
        charts = {
            "charts/policy_version": self.learner.version,
            "charts/samples_per_s": self._scalars_rate.per_second(self.learner.samples_trained),
        }
        self.scalars.add(stats | charts, self.learner.samples_trained, prefix="train")
        if self.settings.stats_path is not None:
            record = {"version": self.learner.version, "samples_trained": self.learner.samples_trained} | stats
            with self.settings.stats_path.open("a") as log_file:
                log_file.write(json.dumps(record) + "\n")
        if self.learner.version % self.settings.checkpoint_every == 0:
            await self.checkpoint_and_settle()
        if self.learner.version % self.settings.publish_every == 0 and self.publishes:
            try:
                await self.publish_weights()
            except (PublishError, NatsError, TimeoutError) as exc:
                # The broker is away: training goes on and the next update publishes newer weights.
                metrics.WEIGHTS_PUBLISH_FAILURES.inc()
                log.warning("weights v%d not published: %s", self.learner.version, exc)

    def exports_onnx(self) -> bool:
        """`onnx_export`: always, never, or (auto) while an actor running ONNX was heard within `ONNX_INTEREST_S`."""
        if self.settings.onnx_export == "auto":
            return time.monotonic() - self._onnx_heard_at < ONNX_INTEREST_S
        return self.settings.onnx_export == "always"

    @property
    def publishes(self) -> bool:
        return self.ranks is None or self.ranks.is_parameter_service

    def _update(self, trajectories: list[Trajectory]) -> dict[str, float]:
        stats = self.learner.train(trajectories)
        if self.ranks is not None and self.ranks.merge_parameters(self.learner.agent, self.learner.version):
            metrics.MERGES.inc()
        return stats

    async def checkpoint_and_settle(self) -> None:
        """Write the checkpoint, then acknowledge every chunk it covers (the order that makes it exactly once)."""
        if self.ranks is not None:  # every rank's checkpoint lists the chunks every rank trained
            ids = [chunk_id for _, chunk_id in self.unsettled]
            for chunk_id in await asyncio.to_thread(self.ranks.gather_ids, ids):
                self.trained.add(chunk_id)
        await asyncio.to_thread(self.save_checkpoint)
        unsettled, self.unsettled = self.unsettled, []
        for msg, _ in unsettled:
            await self._settle(msg)

    async def publish_weights(self) -> None:
        await self.publisher.publish(
            self.learner.agent,
            self.learner.version,
            self.last_stream_seq,
            self.env_steps,
            learner_ranks=1 if self.ranks is None else self.ranks.world_size,
            with_onnx=self.exports_onnx(),
        )

    def save_checkpoint(self) -> None:
        Checkpoint(
            learner=self.learner.checkpoint(),
            trained_ids=self.trained.newest(PERSISTED_CHUNK_IDS),
            last_stream_seq=self.last_stream_seq,
            env_steps_by_actor=self.env_steps.state(),
            policy=self.spec,
        ).write(self.checkpoint_path)

    def restore_checkpoint(self, state: dict[str, Any]) -> None:
        self.learner.restore(state["learner"])
        for chunk_id in state["trained_ids"]:
            self.trained.add(chunk_id)
        self.last_stream_seq = int(state["last_stream_seq"])
        self.env_steps.restore(state.get("env_steps_by_actor", {}))  # absent from checkpoints before it was kept
        log.info("resumed at version %d from %s", self.learner.version, self.checkpoint_path)

    async def run(self, stop: asyncio.Event) -> None:
        consumer = await self.bus.js.pull_subscribe(
            subjects.trajectory_wildcard(self.settings.run),
            durable=f"learner-{self.settings.run}",
            stream=subjects.TRAJECTORIES.name,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.settings.ack_wait_s,
                deliver_policy=DeliverPolicy.ALL,
                # Trained chunks wait for their checkpoint unacknowledged: room for them, and for a batch more.
                max_ack_pending=max(1024, (self.settings.checkpoint_every + 4) * self.settings.chunks_per_batch),
            ),
        )
        try:
            await self._consume(consumer, stop)
            # A clean stop: checkpoint what was trained, so nothing comes back to train again (ranks all do: it is a
            # collective).
            if self.unsettled or self.ranks is not None:
                await self.checkpoint_and_settle()
        finally:
            await consumer.unsubscribe()  # a pending fetch would otherwise hold up the connection's drain
        # Unacknowledged chunks are redelivered to the next learner after ack_wait: nothing is lost.

    async def _consume(self, consumer: JetStreamContext.PullSubscription, stop: asyncio.Event) -> None:
        pending: list[Batched] = []
        while not stop.is_set() or self.ranks is not None:
            if not stop.is_set():
                pending += await self._fetch(consumer, self.settings.chunks_per_batch - len(pending))
            ready = len(pending) >= self.settings.chunks_per_batch
            if self.ranks is not None and (ready or stop.is_set()) and not await self._all_go_on(stop.is_set()):
                for msg, _, _ in pending:  # back to the stream at once, for whichever learner comes next
                    await msg.nak()
                return
            if ready:
                await self.train(pending)
                pending = []
                self.admission.pending.clear()
            await self.publisher.announce_progress(self.last_stream_seq)

    async def _fetch(self, consumer: JetStreamContext.PullSubscription, wanted: int) -> list[Batched]:
        """Up to `wanted` admitted chunks; none when the broker has none in time or is away for a moment."""
        try:
            msgs = await consumer.fetch(wanted, timeout=self.settings.fetch_timeout_s)
        except (TimeoutError, NatsTimeoutError):
            return []
        except NatsError as exc:  # JetStream unavailable for a moment (503, broker restart): try again
            metrics.FETCH_FAILURES.inc()
            self._fetch_log.warning("chunk fetch failed, retrying: %s", exc)
            await asyncio.sleep(FETCH_RETRY_S)
            return []
        admitted = []
        for msg in msgs:
            verdict = self.admission.check(msg.data)
            if isinstance(verdict, Refused):
                await self._settle(msg, terminate=verdict.terminate)
            else:
                admitted.append((msg, verdict.chunk_id, verdict.trajectory))
        return admitted

    async def _all_go_on(self, stopping: bool) -> bool:
        """Learner ranks, once per update: every rank has its batch and none is stopping. Blocks (off the event loop)
        until every rank asks; it also shares how far the group has settled the stream, for rank 0's announcements."""
        assert self.ranks is not None
        with timed(metrics.RANK_WAIT_SECONDS):
            any_stopping, settled = await asyncio.to_thread(self.ranks.agree, stopping, self.last_stream_seq)
            self.env_steps.group = await asyncio.to_thread(self.ranks.sum_counts, self.env_steps.state())
        self.last_stream_seq = max(self.last_stream_seq, settled)
        return not any_stopping


def undecodable(kind: str, msg: Msg, exc: WireError, decode_log: RateLimitedLog) -> None:
    """A message that is not what its subject carries: dropped (the next heartbeat or reward will do), but counted
    and logged, since it means a peer speaks another wire version or something else publishes here."""
    metrics.UNDECODABLE.labels(kind).inc()
    decode_log.warning("undecodable %s on %s dropped: %s", kind, msg.subject, exc)


async def first_actor_heartbeat(bus: Bus, run: str) -> Heartbeat:
    """Wait for an actor's heartbeat that carries its policy spec."""
    found: asyncio.Future[Heartbeat] = asyncio.get_running_loop().create_future()
    decode_log = RateLimitedLog(log)

    async def on_heartbeat(msg: Msg) -> None:
        try:
            heartbeat = decode(msg.data, Heartbeat)
        except WireError as exc:
            undecodable("heartbeat", msg, exc, decode_log)
            return
        if heartbeat.policy is not None and not found.done():
            found.set_result(heartbeat)

    subscription = await bus.subscribe(subjects.heartbeat_wildcard(run), on_heartbeat)
    log.info("waiting for an actor to announce its policy spec (run %s)", run)
    try:
        return await found
    finally:
        await subscription.unsubscribe()


async def serve(settings: LearnerSettings, stop: asyncio.Event) -> None:
    torch.set_num_threads(settings.torch_threads)
    async with ServiceRuntime(settings, metrics.SERVICE, metrics.REGISTRY) as runtime:
        saved = read_checkpoint(checkpoint_path(settings))
        first: Heartbeat | None = None
        if saved is None:  # a fresh learner trains the network the first actor announces
            first = await unless_stopped(first_actor_heartbeat(runtime.bus, settings.run), stop)
        spec = saved[1] if saved is not None else first.policy if first is not None else None
        if spec is None:
            return
        log.info("training %s", spec)
        ranks = await join_ranks(settings, stop)
        if settings.world_size > 1 and ranks is None:
            return
        try:
            await train_until_stopped(settings, runtime.bus, spec, saved, first, ranks, stop)
        finally:
            leave()


async def join_ranks(settings: LearnerSettings, stop: asyncio.Event) -> Ranks | None:
    """With several ranks: this rank in its group, once all have joined (None if stopped first, or alone)."""
    if settings.world_size == 1:
        return None
    joining = asyncio.to_thread(
        join,
        settings.rank,
        settings.world_size,
        settings.master_addr,
        settings.master_port,
        settings.distributed,
        settings.merge_every,
        settings.distributed_timeout_s,
        resolve_device(settings.device),
    )
    return await unless_stopped(joining, stop)


async def train_until_stopped(
    settings: LearnerSettings,
    bus: Bus,
    spec: PolicySpec,
    saved: tuple[dict[str, Any], PolicySpec] | None,
    first: Heartbeat | None,
    ranks: Ranks | None,
    stop: asyncio.Event,
) -> None:
    # Sync ranks step together, so they also agree when an update stops early (target_kl); merge ranks train apart.
    synced = ranks is not None and ranks.scheme == "sync"
    learner = Learner(
        spec,
        settings,
        device=settings.device,
        sync_gradients=ranks.average_gradients if ranks is not None else None,
        agree_mean=ranks.mean if synced else None,
    )
    worker = LearnerWorker(settings, bus, learner, ranks)
    if saved is not None:
        worker.restore_checkpoint(saved[0])
    if first is not None:
        worker.hear(first)
    if ranks is not None:
        await asyncio.to_thread(ranks.broadcast_parameters, worker.learner.agent)
    await bus.subscribe(subjects.heartbeat_wildcard(settings.run), worker.on_heartbeat)
    if settings.implicit_rewards:
        await bus.subscribe(subjects.implicit_reward_subject(settings.run), worker.on_implicit_reward)
    if worker.publishes:
        await worker.publish_weights()  # actors start from the learner's weights, not their own initialisation
    async with ServiceTasks() as tasks:
        training = tasks.start(worker.run(stop), name="train-loop")
        tasks.start(report_progress("learner", worker.progress, settings.progress_interval_s), name="progress")
        await stop.wait()
        # The loop sees `stop` after its fetch or update: let it finish, so no update runs on while checkpointing.
        await asyncio.wait([training], timeout=settings.fetch_timeout_s + STOP_GRACE_S)
        await tasks.stop_all()
    try:
        await asyncio.to_thread(worker.save_checkpoint)
    finally:
        worker.scalars.close()


def main() -> None:
    run_until_signalled(serve, LearnerSettings())
