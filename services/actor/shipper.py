"""The actor's chunk shipper: trajectory chunks to JetStream in order, through a bounded retry buffer.

When the broker is away a chunk waits and is retried with the same `Nats-Msg-Id` (JetStream stores it once); when
the buffer is full, stepping waits (counted as backpressure). Nothing produced is dropped.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

from ala.bus import Bus, PublishError
from ala.ratelimit import RateLimitedLog
from services.actor import metrics
from services.actor.flow import FlowControl

log = logging.getLogger(__name__)
RETRY_BACKOFF_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
Outgoing = tuple[str, bytes, str]
"""(subject, encoded chunk, message id)."""


class ChunkShipper:
    def __init__(self, bus: Bus, capacity: int, flow: FlowControl) -> None:
        self.bus = bus
        self.flow = flow
        self.outbox: asyncio.Queue[Outgoing] = asyncio.Queue(capacity)
        self._log = RateLimitedLog(log)

    async def enqueue(self, item: Outgoing) -> None:
        self.flow.enqueued()
        if self.outbox.full():
            start = time.perf_counter()
            await self.outbox.put(item)
            metrics.BACKPRESSURE_SECONDS.inc(time.perf_counter() - start)
        else:
            self.outbox.put_nowait(item)
        metrics.RETRY_BUFFER.set(self.outbox.qsize())

    async def ship(self) -> None:
        """Publish chunks in order, each retried with its own `Nats-Msg-Id` until JetStream acknowledges it."""
        while True:
            subject, payload, msg_id = await self.outbox.get()
            for attempt in itertools.count():
                start = time.perf_counter()
                try:
                    ack = await self.bus.publish_durable(subject, payload, msg_id, kind="trajectory")
                    break
                except PublishError as exc:
                    metrics.CHUNK_RETRIES.inc()
                    self._log.warning("chunk %s not acknowledged, retrying: %s", msg_id, exc)
                    await asyncio.sleep(RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)])
            metrics.SHIP_SECONDS.observe(time.perf_counter() - start)
            metrics.CHUNKS_SHIPPED.inc()
            self.flow.stored(ack.seq)
            self.outbox.task_done()
            metrics.RETRY_BUFFER.set(self.outbox.qsize())
