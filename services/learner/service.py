"""The learner process: `Learner` wired to NATS.

One durable pull consumer reads trajectory chunks. A chunk is acknowledged only once it is in a trained batch;
bad chunks are terminated (never redelivered) and counted; chunks already trained (a redelivery after a lost ack
or a restart) are acknowledged and skipped; chunks older than `max_policy_lag` are dropped and counted. Weights go
to the JetStream Object Store, then an announcement to the weights stream. Checkpoints (weights, optimizer,
trained chunk ids, stream position) are written atomically and restored at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import time
from collections import deque

import torch
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ala.bus import Bus, PublishError
from ala.metrics import timed
from ala.policy import sha256, weights_to_bytes
from ala.service import ServiceRuntime, run_until_signalled
from ala.trajectory import BadChunk, Trajectory, from_chunk
from protos import ImplicitReward, TrajectoryChunk, WeightsAnnouncement, WireError, decode, encode, subjects
from services.actor.envs import policy_spec_of
from services.learner import metrics
from services.learner.implicit import ImplicitRewards
from services.learner.learner import Learner
from services.learner.settings import LearnerSettings

log = logging.getLogger(__name__)
KEEP_WEIGHT_VERSIONS = 5
REMEMBERED_CHUNKS = 100_000


class LearnerWorker:
    def __init__(self, settings: LearnerSettings, bus: Bus, learner: Learner) -> None:
        self.settings = settings
        self.bus = bus
        self.learner = learner
        self.trained_ids: deque[str] = deque(maxlen=REMEMBERED_CHUNKS)
        self._trained_set: set[str] = set()
        self.last_stream_seq = 0
        self.checkpoint_path = settings.checkpoint_dir / settings.run / "latest.pt"
        self.implicit = ImplicitRewards(settings.max_implicit_reward)
        self.pending_ids: set[str] = set()
        """Chunks fetched and waiting for their batch (a slow batch can see one redelivered)."""

    async def on_implicit_reward(self, msg: Msg) -> None:
        with contextlib.suppress(WireError):
            self.implicit.add(decode(msg.data, ImplicitReward))

    def chunk_id(self, chunk: TrajectoryChunk) -> str:
        return subjects.trajectory_msg_id(chunk.run, chunk.actor, chunk.chunk_seq)

    def _remember(self, chunk_id: str) -> None:
        if len(self.trained_ids) == self.trained_ids.maxlen:
            self._trained_set.discard(self.trained_ids[0])
        self.trained_ids.append(chunk_id)
        self._trained_set.add(chunk_id)

    async def admit(self, msg: Msg) -> tuple[str, Trajectory] | None:
        """Decode and check one message; settle the ones that will not be trained."""
        try:
            chunk = decode(msg.data, TrajectoryChunk)
            trajectory = from_chunk(chunk, self.learner.agent.spec)
        except (WireError, BadChunk) as exc:
            reason = exc.reason if isinstance(exc, BadChunk) else "decode"
            metrics.CHUNKS_REJECTED.labels(reason).inc()
            log.warning("chunk rejected (%s): %s", reason, exc)
            await msg.term()
            return None
        chunk_id = self.chunk_id(chunk)
        if chunk_id in self._trained_set or chunk_id in self.pending_ids:
            metrics.CHUNKS_DUPLICATE.inc()
            await msg.ack()
            return None
        if chunk.run != self.settings.run or chunk.policy_version > self.learner.version:
            metrics.CHUNKS_REJECTED.labels("unknown_version" if chunk.run == self.settings.run else "run").inc()
            await msg.term()
            return None
        metrics.POLICY_LAG.observe(self.learner.version - chunk.policy_version)
        if self.learner.is_stale(trajectory):
            metrics.CHUNKS_STALE.inc()
            await msg.ack()
            return None
        trajectory.rewards = trajectory.rewards.copy()  # decoded arrays are read-only views
        metrics.IMPLICIT_REWARDS_APPLIED.inc(self.implicit.apply(trajectory))
        return chunk_id, trajectory

    async def train(self, batch: list[tuple[Msg, str, Trajectory]]) -> None:
        with timed(metrics.UPDATE_SECONDS):
            # Off the event loop, so heartbeats and acks keep flowing during a long update.
            stats = await asyncio.to_thread(self.learner.train, [trajectory for _, _, trajectory in batch])
        for msg, chunk_id, _ in batch:
            await msg.ack()
            self._remember(chunk_id)
            self.last_stream_seq = max(self.last_stream_seq, msg.metadata.sequence.stream)
        metrics.CHUNKS_TRAINED.inc(len(batch))
        metrics.SAMPLES.inc(stats["samples"])
        for name, value in stats.items():
            metrics.TRAINING.labels(name).set(value)
        if self.learner.version % self.settings.publish_every == 0:
            try:
                await self.publish_weights()
            except (PublishError, NatsError, TimeoutError) as exc:
                # The broker is away: training goes on and the next update publishes newer weights.
                metrics.WEIGHTS_PUBLISH_FAILURES.inc()
                log.warning("weights v%d not published: %s", self.learner.version, exc)
        if self.learner.version % self.settings.checkpoint_every == 0:
            await asyncio.to_thread(self.save_checkpoint)

    async def publish_weights(self) -> None:
        version = self.learner.version
        data = weights_to_bytes(self.learner.agent)
        store = await self.bus.js.object_store(subjects.WEIGHTS_BUCKET)
        name = subjects.weights_object_name(self.settings.run, version)
        await store.put(name, data)
        announcement = WeightsAnnouncement(
            run=self.settings.run,
            version=version,
            bucket=subjects.WEIGHTS_BUCKET,
            name=name,
            sha256=sha256(data),
            size=len(data),
            created_at=time.time(),
        )
        msg_id = f"{self.settings.run}.weights.{version}"
        await self.bus.publish_durable(
            subjects.weights_subject(self.settings.run), encode(announcement), msg_id, "weights"
        )
        metrics.WEIGHTS_PUBLISHED.inc()
        metrics.POLICY_VERSION.set(version)
        if version > KEEP_WEIGHT_VERSIONS:
            try:
                await store.delete(subjects.weights_object_name(self.settings.run, version - KEEP_WEIGHT_VERSIONS))
            except Exception as exc:
                log.debug("old weights not deleted: %s", exc)

    def save_checkpoint(self) -> None:
        buffer = io.BytesIO()
        torch.save(
            {
                "learner": self.learner.checkpoint(),
                "trained_ids": list(self.trained_ids),
                "last_stream_seq": self.last_stream_seq,
            },
            buffer,
        )
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.checkpoint_path.with_suffix(".partial")
        partial.write_bytes(buffer.getvalue())
        os.replace(partial, self.checkpoint_path)  # atomic: a crash leaves the old checkpoint or the new one

    def restore_checkpoint(self) -> bool:
        if not self.checkpoint_path.exists():
            return False
        state = torch.load(io.BytesIO(self.checkpoint_path.read_bytes()), weights_only=True)
        self.learner.restore(state["learner"])
        for chunk_id in state["trained_ids"]:
            self._remember(chunk_id)
        self.last_stream_seq = int(state["last_stream_seq"])
        log.info("resumed at version %d from %s", self.learner.version, self.checkpoint_path)
        return True

    async def run(self, stop: asyncio.Event) -> None:
        consumer = await self.bus.js.pull_subscribe(
            subjects.trajectory_wildcard(self.settings.run),
            durable=f"learner-{self.settings.run}",
            stream=subjects.TRAJECTORIES.name,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.settings.ack_wait_s,
                deliver_policy=DeliverPolicy.ALL,
                max_ack_pending=max(1024, 4 * self.settings.chunks_per_batch),
            ),
        )
        try:
            await self._consume(consumer, stop)
        finally:
            await consumer.unsubscribe()  # a pending fetch would otherwise hold up the connection's drain
        # Unacknowledged chunks are redelivered to the next learner after ack_wait: nothing is lost.

    async def _consume(self, consumer: JetStreamContext.PullSubscription, stop: asyncio.Event) -> None:
        pending: list[tuple[Msg, str, Trajectory]] = []
        while not stop.is_set():
            wanted = self.settings.chunks_per_batch - len(pending)
            try:
                msgs = await consumer.fetch(wanted, timeout=self.settings.fetch_timeout_s)
            except (TimeoutError, NatsTimeoutError):
                continue
            for msg in msgs:
                admitted = await self.admit(msg)
                if admitted is not None:
                    pending.append((msg, *admitted))
                    self.pending_ids.add(admitted[0])
            if len(pending) >= self.settings.chunks_per_batch:
                await self.train(pending)
                pending = []
                self.pending_ids.clear()


async def serve(settings: LearnerSettings, stop: asyncio.Event) -> None:
    torch.set_num_threads(settings.torch_threads)
    learner = Learner(policy_spec_of(settings.env_id, settings.hidden), settings, device=settings.device)
    async with ServiceRuntime(settings, metrics.SERVICE, metrics.REGISTRY) as runtime:
        worker = LearnerWorker(settings, runtime.bus, learner)
        worker.restore_checkpoint()
        if settings.implicit_rewards:
            await runtime.bus.subscribe(subjects.implicit_reward_subject(settings.run), worker.on_implicit_reward)
        await worker.publish_weights()  # actors start from the learner's weights, not their own initialisation
        await worker.run(stop)
        await asyncio.to_thread(worker.save_checkpoint)


def main() -> None:
    run_until_signalled(serve, LearnerSettings())
