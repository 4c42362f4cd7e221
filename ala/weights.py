"""Fetching announced policy weights from the JetStream Object Store, verified, into a fresh network: what actors
and the evaluator both do with a `WeightsAnnouncement`; and, for actors that run ONNX, the version's ONNX model,
verified against the torch output the learner announced with it. `NewestVersion` is the one-slot mailbox both
followers keep announcements in."""

from __future__ import annotations

import asyncio
import hashlib

import torch
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from ala.bus import Bus
from ala.rejection import Rejected
from ala.rl.onnx_policy import OnnxOptions, OnnxPolicy, ProbeOutput, export_verified, load_verified
from ala.rl.policy import Agent, load_weights
from protos import PolicySpec, WeightsAnnouncement


async def fetch_policy(
    bus: Bus, announcement: WeightsAnnouncement, spec: PolicySpec, device: torch.device, timeout_s: float = 10.0
) -> Agent:
    """The announced weights in a new `Agent`; raises `Rejected` with reason missing, timeout, spec, sha256 or
    shape."""
    if announcement.policy is not None and announcement.policy != spec:
        raise Rejected("spec", f"weights {announcement.name} are for {announcement.policy}, not {spec}")
    data = await fetch_object(
        bus, announcement.bucket, announcement.name, announcement.size, announcement.sha256, timeout_s
    )
    agent = Agent(spec).to(device)
    try:
        load_weights(agent, data)
    except ValueError as exc:
        raise Rejected("shape", f"weights {announcement.name}: {exc}") from exc
    return agent


async def fetch_onnx_policy(
    bus: Bus, announcement: WeightsAnnouncement, agent: Agent, options: OnnxOptions, timeout_s: float = 10.0
) -> OnnxPolicy:
    """The announced ONNX model of `agent`'s version, loaded and verified against the probe output announced with
    it; raises `Rejected` with reason missing, timeout, sha256, onnx_invalid or onnx_mismatch. An announcement
    without a model (a learner that does not export): `agent` exported here, verified against its own output.
    Loading and verifying run off the event loop: a TensorRT engine build takes seconds."""
    announced = announcement.onnx
    if announced is None:
        return await asyncio.to_thread(export_verified, agent, options)
    expected = ProbeOutput.from_wire(announced, agent.spec)
    data = await fetch_object(bus, announcement.bucket, announced.name, announced.size, announced.sha256, timeout_s)
    return await asyncio.to_thread(load_verified, data, agent.spec, expected, options)


async def fetch_object(bus: Bus, bucket: str, name: str, size: int, sha256: str, timeout_s: float) -> bytes:
    """One object's bytes, checked against the size and sha256 announced for it; raises `Rejected` with reason
    missing, timeout or sha256. Bounded by `timeout_s`: an Object Store read cut by a broker restart can otherwise
    never return."""

    async def read() -> bytes:
        store = await bus.js.object_store(bucket)
        return (await store.get(name)).data or b""

    try:
        data = await asyncio.wait_for(read(), timeout_s)
    except TimeoutError as exc:
        raise Rejected("timeout", f"{name} not fetched within {timeout_s} s") from exc
    except (NotFoundError, NatsError) as exc:  # a connection that is closing ends here too
        raise Rejected("missing", f"{name} not fetched: {exc}") from exc
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
        raise Rejected("sha256", f"{name} fails its size/sha256 check")
    return data


class NewestVersion:
    """The announcement still to be handled, for a follower that handles one at a time (the actor's weights follower
    fetches it, the evaluator scores it): the latest one offered replaces one not yet taken. Which announcements are
    worth offering is the follower's rule (the evaluator's: newer ones; the actor's: any but the version in use, since
    a learner restarted without its checkpoint starts again from 0)."""

    def __init__(self) -> None:
        self.wanted: WeightsAnnouncement | None = None
        self._ready = asyncio.Event()

    def offer(self, announcement: WeightsAnnouncement) -> bool:
        """Keep `announcement` to handle next; True when it replaced one not taken yet (the follower was busy)."""
        replaced = self.wanted is not None
        self.wanted = announcement
        self._ready.set()
        return replaced

    def take(self) -> WeightsAnnouncement | None:
        """The announcement to handle now, if any (it is then no longer wanted)."""
        wanted, self.wanted = self.wanted, None
        self._ready.clear()
        return wanted

    async def next(self) -> WeightsAnnouncement:
        """Wait for an announcement to handle, and take it."""
        while self.wanted is None:
            await self._ready.wait()
        announcement = self.take()
        assert announcement is not None
        return announcement
