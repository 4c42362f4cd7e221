"""Flow control without NATS: the actor waits while too many of its chunks are untrained, and no longer than
`flow_timeout_s` (counted)."""

from __future__ import annotations

import asyncio

from protos import WeightsAnnouncement
from services.actor import metrics
from services.actor.flow import FlowControl


def announcement(settled: int, ranks: int = 1) -> WeightsAnnouncement:
    return WeightsAnnouncement(
        run="t", version=1, bucket="b", name="n", sha256="0" * 64, size=1, created_at=0.0,
        settled_stream_seq=settled, learner_ranks=ranks,
    )  # fmt: skip


async def test_a_chunk_waits_until_training_settles_the_chunks_ahead_of_it() -> None:
    flow = FlowControl(max_chunks_ahead=1, flow_timeout_s=30)
    flow.heard(announcement(settled=0))
    for seq in (10, 11):
        flow.enqueued()
        flow.stored(seq)
    assert flow.chunks_ahead() == 2
    installs: list[int] = []
    waiting = asyncio.create_task(flow.wait_for_training(lambda: False, lambda: installs.append(1)))
    done, _ = await asyncio.wait({waiting}, timeout=0.2)
    assert not done and installs  # held back, installing whatever arrives meanwhile
    flow.heard(announcement(settled=10))  # the learner trained chunk 10: one ahead, within the limit
    await asyncio.wait_for(waiting, 5)
    assert flow.chunks_ahead() == 1


async def test_learner_ranks_widen_the_limit_and_a_stalled_learner_holds_the_actor_only_until_the_timeout() -> None:
    flow = FlowControl(max_chunks_ahead=1, flow_timeout_s=0.1)
    flow.heard(announcement(settled=0, ranks=2))
    for seq in (10, 11):
        flow.enqueued()
        flow.stored(seq)
    await asyncio.wait_for(flow.wait_for_training(lambda: False, lambda: None), 1)  # 2 ahead, 2 ranks: no wait
    flow.enqueued()  # a third, not yet stored; the learner says nothing more
    timeouts = metrics.FLOW_TIMEOUTS._value.get()
    await asyncio.wait_for(flow.wait_for_training(lambda: False, lambda: None), 5)
    assert metrics.FLOW_TIMEOUTS._value.get() == timeouts + 1
