"""Learner ranks' coordination around `ala.rl.distributed`: joining the group, and agreeing once per update.

Every rank shares the one durable consumer, so each holds a different batch; before an update they agree that every
one has its batch and none is stopping, and share how far the group has settled the stream and how many env steps
each actor's chunks brought (rank 0 announces both).
"""

from __future__ import annotations

import asyncio

from ala.metrics import timed
from ala.rl.distributed import Ranks, join
from ala.rl.policy import resolve_device
from ala.service import unless_stopped
from services.learner import metrics
from services.learner.settings import LearnerSettings
from services.learner.steps import EnvStepLedger


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


async def all_go_on(ranks: Ranks, stopping: bool, last_stream_seq: int, env_steps: EnvStepLedger) -> tuple[bool, int]:
    """Once per update: whether every rank has its batch and none is stopping, and the stream sequence the group has
    settled. Blocks (off the event loop) until every rank asks; updates `env_steps.group` with the group's counts."""
    with timed(metrics.RANK_WAIT_SECONDS):
        any_stopping, settled = await asyncio.to_thread(ranks.agree, stopping, last_stream_seq)
        env_steps.group = await asyncio.to_thread(ranks.sum_counts, env_steps.state())
    return not any_stopping, settled
