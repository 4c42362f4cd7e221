"""The learner's checkpoint: what makes training exactly once across a crash.

A checkpoint holds the learner's state (weights, optimizer, version, samples), the ids of the chunks trained
(`TrainedChunks`), how far the stream was settled, the env steps behind the weights, and the policy spec. It is
written atomically, and a trained chunk is acknowledged only after a checkpoint that includes its update: a crash
before it brings the chunk back to train, a crash after it brings back a chunk the checkpoint lists as trained.
"""

from __future__ import annotations

import io
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import torch

from ala.rl.saved import torch_save_atomically
from protos import PolicySpec
from services.learner.settings import LearnerSettings

REMEMBERED_CHUNKS = 100_000
PERSISTED_CHUNK_IDS = 8192
"""Trained chunk ids a checkpoint keeps: more than can be redelivered (unacknowledged, or acknowledged and lost
within `ack_wait_s`) at once, few enough to write a checkpoint every update."""


class TrainedChunks:
    """The ids of the newest trained chunks, in order, with a set for lookups: a redelivered one is skipped."""

    def __init__(self, capacity: int = REMEMBERED_CHUNKS) -> None:
        self._order: deque[str] = deque(maxlen=capacity)
        self._set: set[str] = set()

    def add(self, chunk_id: str) -> None:
        if chunk_id in self._set:
            return
        if len(self._order) == self._order.maxlen:
            self._set.discard(self._order[0])
        self._order.append(chunk_id)
        self._set.add(chunk_id)

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._set

    def newest(self, count: int) -> list[str]:
        return list(self._order)[-count:]


@dataclass
class Checkpoint:
    learner: bytes
    """`Learner.checkpoint()`."""
    trained_ids: list[str]
    last_stream_seq: int
    env_steps_by_actor: dict[str, int]
    policy: PolicySpec

    def write(self, path: Path) -> None:
        """Atomically: a crash leaves the old checkpoint or the new one."""
        state = {
            "learner": self.learner,
            "trained_ids": self.trained_ids,
            "last_stream_seq": self.last_stream_seq,
            "env_steps_by_actor": self.env_steps_by_actor,
            "policy": msgspec.to_builtins(self.policy),
        }
        torch_save_atomically(state, path)


def checkpoint_path(settings: LearnerSettings) -> Path:
    name = "latest.pt" if settings.rank == 0 else f"latest-rank{settings.rank}.pt"
    return settings.checkpoint_dir / settings.run / name


def read_checkpoint(path: Path) -> tuple[dict[str, Any], PolicySpec] | None:
    """The saved state and the spec of the policy it holds, or None when there is no checkpoint."""
    if not path.exists():
        return None
    state = torch.load(io.BytesIO(path.read_bytes()), weights_only=True)
    return state, msgspec.convert(state["policy"], PolicySpec)
