"""Where a fresh learner's network shape comes from: the first actor heartbeat that carries a `PolicySpec` (a
restored learner takes it from its checkpoint instead)."""

from __future__ import annotations

import asyncio
import logging

from nats.aio.msg import Msg

from ala.bus import Bus
from ala.ratelimit import RateLimitedLog
from protos import Heartbeat, WireError, decode, subjects
from services.learner import metrics

log = logging.getLogger(__name__)


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
