"""The learner's worker: fetch chunks, admit them, train, checkpoint, acknowledge, publish weights: one idea, the
exactly-once training loop described in services/learner/service.py, with the NATS calls it needs (`LearnerWorker`).
Admission, the checkpoint, the publisher and rank coordination are each their own module."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ala.bus import Bus, PublishError
from ala.metrics import timed
from ala.progress import Rate
from ala.ratelimit import RateLimitedLog
from ala.rl.distributed import Ranks
from ala.rl.exploration import TransitionCounts
from ala.rl.learner import Learner
from ala.rl.preference import PreferenceReward
from ala.rl.trajectory import Trajectory
from ala.tensorboard import Scalars
from protos import (
    Heartbeat,
    ImplicitReward,
    PolicySpec,
    Preference,
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
)
from services.learner.implicit import ImplicitRewards
from services.learner.publisher import WeightsPublisher
from services.learner.ranks import all_go_on
from services.learner.settings import LearnerSettings
from services.learner.spec_source import undecodable
from services.learner.steps import EnvStepLedger

log = logging.getLogger(__name__)
Batched = tuple[Msg, str, Trajectory]
"""A fetched chunk that will be trained: its message (to acknowledge), its id, its data."""
FETCH_RETRY_S = 0.5
ONNX_INTEREST_S = 30.0
"""With `onnx_export=auto`: how long after the last heartbeat of an actor running ONNX the learner keeps exporting."""


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
        self.preferences = None
        if settings.preference_reward > 0:
            self.preferences = PreferenceReward(
                learner.agent.spec,
                settings.preference_reward,
                settings.gamma,
                settings.preference_capacity,
                settings.preference_steps,
                seed=settings.seed,
            )
            if settings.preference_model is not None:
                about = self.preferences.load(settings.preference_model)
                log.info(
                    "preference reward model fit before the run: %s (from %s, held-out agreement %s)",
                    settings.preference_model,
                    about.get("dataset"),
                    about.get("held_out_agreement"),
                )
        self.admission = Admission(
            settings.run,
            settings.max_policy_lag,
            learner,
            self.trained,
            self.env_steps,
            self.implicit,
            exploration,
            self.preferences,
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

    async def on_preference(self, msg: Msg) -> None:
        """An advisor's ranking of two states, for the reward model; one that does not fit the policy is counted."""
        assert self.preferences is not None
        try:
            ranking = decode(msg.data, Preference)
            self.preferences.add(ranking.first.to_numpy(), ranking.second.to_numpy(), ranking.preferred)
        except WireError as exc:
            undecodable("preference", msg, exc, self._decode_log)
            return
        except ValueError as exc:
            metrics.PREFERENCES.labels("refused").inc()
            self._decode_log.warning("ranking refused: %s", exc)
            return
        metrics.PREFERENCES.labels("kept").inc()

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
        preference_loss = self.preferences.fit() if self.preferences is not None else None
        stats = self.learner.train(trajectories)
        if preference_loss is not None:
            stats["losses/preference"] = preference_loss
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

    async def _all_go_on(self, stopping: bool) -> bool:
        assert self.ranks is not None
        go_on, settled = await all_go_on(self.ranks, stopping, self.last_stream_seq, self.env_steps)
        self.last_stream_seq = max(self.last_stream_seq, settled)
        return go_on

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
