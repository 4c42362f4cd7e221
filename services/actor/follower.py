"""The actor's weights follower: each announced version fetched and verified off the step loop, installed between
chunks, so every chunk is sampled by exactly one policy version.

A fetch checks size, sha256, policy spec and shapes (`ala.weights`); with backend onnx it also loads the version's
ONNX model and checks it on the probe batch against the torch output the learner announced, in a worker thread. A
model being built (a TensorRT engine: seconds) does not hold the bots: the version in use goes on until the new one
is ready. A fetch that failed for the broker's sake is retried with backoff until a newer announcement replaces it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ala.bus import Bus
from ala.rejection import Rejected
from ala.rl.onnx_policy import OnnxOptions, OnnxPolicy
from ala.rl.policy import Agent
from ala.rl.rollout import Rollout
from ala.service import ServiceTasks
from ala.weights import NewestVersion, fetch_onnx_policy, fetch_policy
from protos import WeightsAnnouncement
from services.actor import metrics

log = logging.getLogger(__name__)
WEIGHTS_RETRY_S = 0.5
MAX_WEIGHTS_RETRY_S = 5.0
"""Backoff of a weights fetch that failed for the broker's sake (a newer announcement replaces it at once)."""


class WeightsFollower:
    def __init__(
        self,
        bus: Bus,
        rollout: Rollout,
        tasks: ServiceTasks,
        fetch_timeout_s: float,
        onnx_options: OnnxOptions | None,
        on_ready: Callable[[], None],
    ) -> None:
        self.bus = bus
        self.rollout = rollout
        self.spec = rollout.agent.spec
        self.tasks = tasks
        self.fetch_timeout_s = fetch_timeout_s
        self.onnx_options = onnx_options
        """With backend onnx: how each version's ONNX model is loaded and checked."""
        self.on_ready = on_ready
        """Called when a version is ready to install, or a model build starts (flow control wakes up to see it)."""
        self.latest_announced = 0
        self.has_learner_weights = False
        """Until the first weights arrive, the actor samples with its own random initialisation (as version 0)."""
        self.building = False
        """An ONNX model (a TensorRT engine) is being built and verified in a worker thread."""
        self._pending: tuple[Agent, OnnxPolicy | None, int] | None = None
        self._fetch: asyncio.Task[None] | None = None
        self._wanted = NewestVersion()

    def want(self, announcement: WeightsAnnouncement) -> None:
        """Fetch this version (any but the one in use: a learner restarted without its checkpoint starts from 0)."""
        if self.has_learner_weights and announcement.version == self.rollout.policy_version:
            return
        self.latest_announced = announcement.version
        self._wanted.offer(announcement)
        if self._fetch is None or self._fetch.done():
            self._fetch = self.tasks.start(self._fetch_weights(), name="fetch-weights")

    def downloading(self) -> bool:
        """A download worth waiting for (milliseconds). A model build is not: the version it builds counts as
        installed, and the bots sample on with the one they have until it is ready."""
        if self.building:
            return False
        return self._wanted.wanted is not None or (self._fetch is not None and not self._fetch.done())

    def install_pending(self) -> None:
        """Between chunks: the version fetched and verified since the last chunk, if any."""
        if self._pending is not None:
            agent, onnx, version = self._pending
            self.rollout.set_policy(agent, version, onnx)
            report_forward(self.rollout)
            self.has_learner_weights = True
            metrics.WEIGHTS_LOADED.inc()
            log.debug("policy version %d installed", version)
        self._pending = None
        metrics.POLICY_VERSION.set(self.rollout.policy_version)
        metrics.POLICY_LAG.set(max(0, self.latest_announced - self.rollout.policy_version))

    async def _fetch_weights(self) -> None:
        """Fetch the newest wanted weights. A fetch that failed for the broker's sake (missing, timeout: a restart)
        is retried with backoff until it succeeds or a newer announcement replaces it: an actor left on old
        weights ships only stale chunks, which the learner cannot train on, so nothing else would unstick it."""
        retry_s = WEIGHTS_RETRY_S
        while (announcement := self._wanted.take()) is not None:
            try:
                agent = await fetch_policy(self.bus, announcement, self.spec, self.rollout.device, self.fetch_timeout_s)
                onnx = None
                if self.onnx_options is not None:
                    self.building = True  # seconds on TensorRT: flow control counts it as installed meanwhile
                    self.on_ready()  # and wakes up to see it
                    try:
                        onnx = await fetch_onnx_policy(
                            self.bus, announcement, agent, self.onnx_options, self.fetch_timeout_s
                        )
                    finally:
                        self.building = False
            except Rejected as exc:
                metrics.WEIGHTS_REJECTED.labels(exc.reason).inc()
                log.warning("weights rejected (%s): %s", exc.reason, exc)
                if exc.reason in ("missing", "timeout") and self._wanted.wanted is None:
                    await asyncio.sleep(retry_s)
                    retry_s = min(2 * retry_s, MAX_WEIGHTS_RETRY_S)
                    if self._wanted.wanted is None:  # unless a newer announcement came meanwhile
                        self._wanted.offer(announcement)
                continue
            retry_s = WEIGHTS_RETRY_S
            self._pending = (agent, onnx, announcement.version)
            self.on_ready()


def report_forward(rollout: Rollout) -> None:
    """Which forward the policy runs on (ONNX Runtime's provider, or torch's device), as a labelled gauge."""
    metrics.POLICY_FORWARD.clear()
    if rollout.onnx is not None:
        metrics.POLICY_FORWARD.labels("onnx", rollout.onnx.provider).set(1)
    else:
        metrics.POLICY_FORWARD.labels("torch", str(rollout.device)).set(1)
