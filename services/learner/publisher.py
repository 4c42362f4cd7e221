"""The learner's weights publisher: each version to the JetStream Object Store (torch weights, and an ONNX model for
actors that run ONNX), then its announcement on the weights stream; old versions deleted; progress re-announced.

Only the parameter service publishes (the only learner, or rank 0 of several). Actors fetch a version by the
announcement's name and check it against its sha256 and, for ONNX, against the torch output announced with it.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
import torch
from nats.errors import Error as NatsError

from ala.bus import Bus, PublishError
from ala.metrics import timed
from ala.rejection import Rejected
from ala.rl.onnx_policy import OPSET, OnnxOptions, ProbeOutput, export, load_verified, probe_output
from ala.rl.policy import Agent, sha256, weights_to_bytes
from protos import Array, OnnxExport, WeightsAnnouncement, encode, subjects
from services.learner import metrics
from services.learner.steps import EnvStepLedger

log = logging.getLogger(__name__)
KEEP_WEIGHT_VERSIONS = 5
"""Versions kept in the object store: actors a few versions behind can still fetch theirs."""


class WeightsPublisher:
    def __init__(self, bus: Bus, run: str) -> None:
        self.bus = bus
        self.run = run
        self.announced: WeightsAnnouncement | None = None
        """The newest announcement, re-sent with a newer settled position by `announce_progress`."""

    async def publish(
        self,
        agent: Agent,
        version: int,
        settled_stream_seq: int,
        env_steps: EnvStepLedger,
        learner_ranks: int,
        with_onnx: bool,
    ) -> None:
        data = weights_to_bytes(agent)
        # Off the event loop (~20 ms), as the update is; nothing trains the agent until this returns.
        exported = await asyncio.to_thread(export_onnx, agent, version) if with_onnx else None
        store = await self.bus.js.object_store(subjects.WEIGHTS_BUCKET)
        name = subjects.weights_object_name(self.run, version)
        await store.put(name, data)
        onnx = None
        if exported is not None:
            model, expected = exported
            onnx = OnnxExport(
                name=subjects.onnx_object_name(self.run, version),
                sha256=sha256(model),
                size=len(model),
                opset=OPSET,
                probe_logits=Array.from_numpy(expected.logits),
                probe_values=Array.from_numpy(expected.values),
            )
            await store.put(onnx.name, model)
        self.announced = WeightsAnnouncement(
            run=self.run,
            version=version,
            bucket=subjects.WEIGHTS_BUCKET,
            name=name,
            sha256=sha256(data),
            size=len(data),
            created_at=time.time(),
            policy=agent.spec,
            settled_stream_seq=settled_stream_seq,
            env_steps=env_steps.total,
            env_steps_by_actor=env_steps.by_actor(),
            onnx=onnx,
            learner_ranks=learner_ranks,
        )
        await self._announce(self.announced)
        metrics.WEIGHTS_PUBLISHED.inc()
        metrics.POLICY_VERSION.set(version)
        if version > KEEP_WEIGHT_VERSIONS:
            old = version - KEEP_WEIGHT_VERSIONS
            for old_name in (subjects.weights_object_name(self.run, old), subjects.onnx_object_name(self.run, old)):
                try:
                    await store.delete(old_name)
                except Exception as exc:
                    log.debug("old weights %s not deleted: %s", old_name, exc)

    async def announce_progress(self, settled_stream_seq: int) -> None:
        """Chunks were settled without an update (stale, duplicate, rejected): say so with the same weights, or
        actors waiting for training to catch up would wait for nothing."""
        if self.announced is None or self.announced.settled_stream_seq >= settled_stream_seq:
            return
        self.announced = msgspec.structs.replace(
            self.announced, settled_stream_seq=settled_stream_seq, created_at=time.time()
        )
        try:
            await self._announce(self.announced)
        except (PublishError, NatsError, TimeoutError) as exc:
            log.warning("progress announcement not published: %s", exc)

    async def _announce(self, announcement: WeightsAnnouncement) -> None:
        # One id per announcement (a retry of the same one is stored once); a resumed learner's re-announcement of
        # the same version is a new announcement.
        msg_id = f"{self.run}.weights.{announcement.version}.{announcement.created_at:.6f}"
        await self.bus.publish_durable(subjects.weights_subject(self.run), encode(announcement), msg_id, "weights")


def export_onnx(agent: Agent, version: int) -> tuple[bytes, ProbeOutput] | None:
    """This version as an ONNX model and the torch output on the probe batch that it reproduces (checked here with
    ONNX Runtime on the CPU); None, counted and logged, when it does not: the version goes out without it."""
    with timed(metrics.ONNX_EXPORT_SECONDS):
        try:
            model = export(agent)
            expected = probe_output(agent)
            load_verified(model, agent.spec, expected, OnnxOptions())
        except (Rejected, torch.onnx.OnnxExporterError, RuntimeError) as exc:
            metrics.ONNX_EXPORT_FAILURES.inc()
            log.error("policy v%d published without its ONNX model: %s", version, exc)
            return None
    return model, expected
