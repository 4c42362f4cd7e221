"""Fetching announced policy weights from the JetStream Object Store, verified, into a fresh network: what actors
and the evaluator both do with a `WeightsAnnouncement`."""

from __future__ import annotations

import asyncio
import hashlib

import torch
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from ala.bus import Bus
from ala.rejection import Rejected
from ala.rl.policy import Agent, load_weights
from protos import PolicySpec, WeightsAnnouncement


async def fetch_policy(
    bus: Bus, announcement: WeightsAnnouncement, spec: PolicySpec, device: torch.device, timeout_s: float = 10.0
) -> Agent:
    """The announced weights in a new `Agent`; raises `Rejected` with reason missing, timeout, spec, sha256 or
    shape. Bounded by `timeout_s`: an Object Store read cut by a broker restart can otherwise never return."""
    if announcement.policy is not None and announcement.policy != spec:
        raise Rejected("spec", f"weights {announcement.name} are for {announcement.policy}, not {spec}")

    async def read() -> bytes:
        store = await bus.js.object_store(announcement.bucket)
        return (await store.get(announcement.name)).data or b""

    try:
        data = await asyncio.wait_for(read(), timeout_s)
    except TimeoutError as exc:
        raise Rejected("timeout", f"weights {announcement.name} not fetched within {timeout_s} s") from exc
    except (NotFoundError, NatsError) as exc:  # a connection that is closing ends here too
        raise Rejected("missing", f"weights {announcement.name} not fetched: {exc}") from exc
    if len(data) != announcement.size or hashlib.sha256(data).hexdigest() != announcement.sha256:
        raise Rejected("sha256", f"weights {announcement.name} fail their size/sha256 check")
    agent = Agent(spec).to(device)
    try:
        load_weights(agent, data)
    except ValueError as exc:
        raise Rejected("shape", f"weights {announcement.name}: {exc}") from exc
    return agent
