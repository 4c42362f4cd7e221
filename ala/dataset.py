"""A run's trajectories, read back from JetStream into an offline dataset (`ala dataset export`).

The actors' chunks stay in the `ALA_TRAJECTORIES` stream after the learner has trained on them (limits retention,
24 h), so any run of the stack leaves a dataset behind: every step with the advice that was in force. This reads one
run's chunks in stream order through an ephemeral consumer (nothing is acknowledged, so the learner's own consumer is
untouched), checks each as the learner does (`from_chunk`), and writes the transitions (`ala.rl.offline`) with a
provenance file that says exactly which data they are.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import CollectorRegistry

from ala import __version__
from ala.bus import Bus
from ala.config import NatsSettings
from ala.envs import adapter_for
from ala.metrics import bus_metrics
from ala.rl.offline import Transitions
from ala.rl.trajectory import BadChunk, from_chunk
from protos import PolicySpec, TrajectoryChunk, WireError, decode, subjects

log = logging.getLogger(__name__)

FETCH_BATCH = 64
FETCH_TIMEOUT_S = 5.0
"""A fetch that gets nothing for this long, while the consumer says messages are pending, is an error."""


@dataclass
class Provenance:
    run: str
    env_id: str
    stream: str
    first_sequence: int = 0
    last_sequence: int = 0
    chunks: int = 0
    chunks_refused: int = 0
    env_steps: int = 0
    transitions: int = 0
    advised_transitions: int = 0
    full_states: bool = False
    """Every transition carries its full state (the actors recorded them: `chunk_full_states`)."""
    policy_versions: tuple[int, int] = (0, 0)
    actors: list[str] = field(default_factory=list)
    exported_at: str = ""
    ala_version: str = __version__

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")


async def export_run(
    js: JetStreamContext, run: str, spec: PolicySpec, max_env_steps: int = 0
) -> tuple[Transitions, Provenance]:
    """Every stored chunk of `run` (or the first ones, up to `max_env_steps`) as transitions."""
    consumer = await js.pull_subscribe(
        subjects.trajectory_wildcard(run),
        stream=subjects.TRAJECTORIES.name,
        config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=60.0),
    )
    provenance = Provenance(run=run, env_id=spec.env_id, stream=subjects.TRAJECTORIES.name)
    parts: list[Transitions] = []
    versions: list[int] = []
    actors: set[str] = set()
    try:
        pending = (await consumer.consumer_info()).num_pending
        while pending > 0 and not (max_env_steps and provenance.env_steps >= max_env_steps):
            msgs = await consumer.fetch(min(FETCH_BATCH, pending), timeout=FETCH_TIMEOUT_S)
            for msg in msgs:
                pending = msg.metadata.num_pending
                sequence = msg.metadata.sequence.stream
                provenance.first_sequence = provenance.first_sequence or sequence
                provenance.last_sequence = sequence
                try:
                    chunk = decode(msg.data, TrajectoryChunk)
                    trajectory = from_chunk(chunk, spec)
                except (WireError, BadChunk) as exc:
                    provenance.chunks_refused += 1
                    log.warning("stream sequence %d refused: %s", sequence, exc)
                    continue
                parts.append(Transitions.from_trajectory(trajectory))
                provenance.chunks += 1
                provenance.env_steps += trajectory.num_steps
                versions.append(chunk.policy_version)
                actors.add(chunk.actor)
                if max_env_steps and provenance.env_steps >= max_env_steps:
                    break
    finally:
        await consumer.unsubscribe()
    if not parts:
        raise ValueError(f"run {run!r} has no trajectory chunk in {subjects.TRAJECTORIES.name} that fits {spec.env_id}")
    data = Transitions.concatenate(parts)
    provenance.transitions = len(data)
    provenance.advised_transitions = int(data.advised.sum())
    provenance.full_states = data.full_states is not None
    provenance.policy_versions = (min(versions), max(versions))
    provenance.actors = sorted(actors)
    provenance.exported_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return data, provenance


def save(data: Transitions, provenance: Provenance, path: Path) -> tuple[Path, Path]:
    """`<path>.npz` and `<path>.json` (the provenance)."""
    arrays, about = path.with_suffix(".npz"), path.with_suffix(".json")
    data.save(arrays)
    provenance.save(about)
    return arrays, about


async def export_to(
    nats: NatsSettings, run: str, env_id: str, out: Path, max_env_steps: int = 0, hidden: int = 64
) -> tuple[Path, Path, Provenance]:
    """Connect, export `run` for `env_id`'s policy spec, and save it next to `out`."""
    spec = adapter_for(env_id).probe_spec(hidden)
    bus = await Bus.connect(nats, "ala-dataset", bus_metrics("dataset", CollectorRegistry()))
    try:
        data, provenance = await export_run(bus.js, run, spec, max_env_steps)
    finally:
        await bus.drain()
    arrays, about = save(data, provenance, out)
    return arrays, about, provenance
