"""The actor's flow control: sample about one policy version behind the learner, not racing ahead of it.

The learner's weights announcements say how far training has come (`settled_stream_seq`). The actor starts a chunk
only while at most `max_chunks_ahead` of its chunks (times the learner ranks, which take one each per update) wait
to be trained and no weights download is in flight; a wait longer than `flow_timeout_s` is counted and logged, and
sampling goes on. Until the first announcement there is no learner to wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

from ala.ratelimit import RateLimitedLog
from protos import WeightsAnnouncement
from services.actor import metrics

log = logging.getLogger(__name__)
MAX_TRACKED_CHUNKS = 1024


class FlowControl:
    def __init__(self, max_chunks_ahead: int, flow_timeout_s: float) -> None:
        self.max_chunks_ahead = max_chunks_ahead
        self.flow_timeout_s = flow_timeout_s
        self.active = False
        """Flow control starts with the first announcement: without a learner there is nothing to wait for."""
        self.learner_ranks = 1
        self.settled_stream_seq = 0
        self.unacked_chunks = 0
        """Chunks enqueued and not yet stored by JetStream."""
        self.shipped_seqs: deque[int] = deque(maxlen=MAX_TRACKED_CHUNKS)
        """Stream sequences of this actor's stored chunks that the learner has not settled yet, ascending (one
        shipper stores them in order; announcements drop the settled ones from the left). Bounded: with no learner
        nothing settles them."""
        self.progressed = asyncio.Event()
        """Set whenever training may have caught up: an announcement, installed weights, a stored chunk."""
        self._log = RateLimitedLog(log)

    def heard(self, announcement: WeightsAnnouncement) -> None:
        self.active = True
        self.learner_ranks = announcement.learner_ranks
        self.settled_stream_seq = max(self.settled_stream_seq, announcement.settled_stream_seq)
        while self.shipped_seqs and self.shipped_seqs[0] <= self.settled_stream_seq:
            self.shipped_seqs.popleft()
        self.progressed.set()

    def enqueued(self) -> None:
        self.unacked_chunks += 1

    def stored(self, stream_seq: int) -> None:
        self.unacked_chunks -= 1
        if stream_seq > self.settled_stream_seq:
            self.shipped_seqs.append(stream_seq)
        self.progressed.set()

    def chunks_ahead(self) -> int:
        """This actor's chunks not yet trained on: waiting to be stored, or stored and not settled."""
        return self.unacked_chunks + len(self.shipped_seqs)

    async def wait_for_learner(self) -> None:
        """At start, wait up to `flow_timeout_s` for a learner's first weights: chunks sampled by this actor's own
        random initialisation teach the learner little and spend env steps. No learner: sampling starts anyway."""
        if self.max_chunks_ahead == 0 or self.active:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.progressed.wait(), self.flow_timeout_s)
        if not self.active:
            log.warning("no learner weights within %.0fs: sampling with this actor's own policy", self.flow_timeout_s)

    async def wait_for_training(self, downloading: Callable[[], bool], install: Callable[[], None]) -> None:
        """Before a chunk: wait while too many chunks are ahead or a download is in flight, installing a version
        that arrives meanwhile (`install`), up to `flow_timeout_s`."""
        limit = self.max_chunks_ahead * self.learner_ranks
        if not self.active or limit == 0:
            return
        start = time.perf_counter()
        deadline = start + self.flow_timeout_s
        while self.chunks_ahead() > limit or downloading():
            install()  # between chunks: a version built while waiting goes in now
            self.progressed.clear()
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                metrics.FLOW_TIMEOUTS.inc()
                self._log.warning(
                    "no training progress for %.0fs (%d chunks ahead): sampling on",
                    self.flow_timeout_s,
                    self.chunks_ahead(),
                )
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progressed.wait(), remaining)
        metrics.FLOW_WAIT_SECONDS.inc(time.perf_counter() - start)
