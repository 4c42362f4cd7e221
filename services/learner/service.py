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
import logging
from typing import Any

import torch

from ala.bus import Bus
from ala.progress import report_progress
from ala.rl.distributed import Ranks, leave
from ala.rl.learner import Learner
from ala.service import ServiceRuntime, ServiceTasks, run_until_signalled, unless_stopped
from protos import (
    Heartbeat,
    PolicySpec,
    subjects,
)
from services.learner import metrics
from services.learner.checkpoint import (
    checkpoint_path,
    read_checkpoint,
)
from services.learner.ranks import join_ranks
from services.learner.settings import LearnerSettings
from services.learner.spec_source import first_actor_heartbeat
from services.learner.worker import LearnerWorker

log = logging.getLogger(__name__)
STOP_GRACE_S = 30.0
"""How long a stopping learner waits for the update in progress."""


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
    if worker.preferences is not None:
        await bus.subscribe(subjects.preference_subject(settings.run), worker.on_preference)
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
