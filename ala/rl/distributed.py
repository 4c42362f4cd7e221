"""Learner ranks on `torch.distributed`: what N learner processes say to each other. No NATS.

Two schemes (`LearnerSettings.distributed`), compared in `benchmarks/scale.py`:
- `sync`: synchronous data parallel. Every rank trains on its own chunks; after each minibatch's backward pass the
  ranks average their gradients (one all-reduce of the flattened gradients: what DDP does, without its buckets,
  because the actor-critic's sampling methods are not `forward`), so every rank takes the same optimizer step and
  the parameters stay equal.
- `merge`: periodic parameter averaging (the ACO design). Every rank runs whole PPO updates on its own chunks and
  every `merge_every` updates the ranks replace their parameters by the mean; in between they drift apart.

In both, the ranks agree once per update whether to go on (one small all-reduce): a rank that is stopping takes
the others with it instead of leaving them blocked in a collective. A rank that dies leaves the others blocked
until `timeout_s`, when they fail too: the whole group restarts from its checkpoints, as with torchrun.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)

Scheme = Literal["sync", "merge"]


@dataclass(frozen=True)
class Ranks:
    """This process's place in a group of learner ranks joined by `join`."""

    rank: int
    world_size: int
    scheme: Scheme
    merge_every: int
    device: torch.device

    @property
    def is_parameter_service(self) -> bool:
        """Rank 0 publishes the weights every actor and evaluator fetches."""
        return self.rank == 0

    def average_gradients(self, module: nn.Module) -> None:
        """Sync: replace every rank's gradients by their mean across ranks (after backward, before the step)."""
        if self.scheme != "sync":
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def mean(self, value: float) -> float:
        """The mean of `value` over the ranks, on every rank (so that they all decide alike, e.g. to stop an update)."""
        total = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return float(total) / self.world_size

    def merge_parameters(self, module: nn.Module, version: int) -> bool:
        """Merge: every `merge_every` versions, every rank takes the ranks' mean parameters. True if it merged."""
        if self.scheme != "merge" or version % self.merge_every != 0:
            return False
        flat = nn.utils.parameters_to_vector(module.parameters()).detach()
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        nn.utils.vector_to_parameters(flat / self.world_size, module.parameters())
        return True

    def broadcast_parameters(self, module: nn.Module) -> None:
        """Every rank starts from rank 0's parameters (a fresh group, or one restored from uneven checkpoints)."""
        flat = nn.utils.parameters_to_vector(module.parameters()).detach()
        dist.broadcast(flat, src=0)
        nn.utils.vector_to_parameters(flat, module.parameters())

    def agree(self, stopping: bool, settled_seq: int) -> tuple[bool, int]:
        """Once per update, collectively: (does any rank stop, the highest stream sequence any rank settled)."""
        state = torch.tensor([int(stopping), settled_seq], dtype=torch.int64, device=self.device)
        dist.all_reduce(state, op=dist.ReduceOp.MAX)
        return bool(state[0]), int(state[1])

    def sum_counts(self, counts: dict[str, int]) -> dict[str, int]:
        """Every rank's counts added up per key, on every rank (the env steps behind the group's weights)."""
        gathered: list[dict[str, int] | None] = [None] * self.world_size
        dist.all_gather_object(gathered, counts)
        total: dict[str, int] = {}
        for part in gathered:
            for key, value in (part or {}).items():
                total[key] = total.get(key, 0) + value
        return total

    def gather_ids(self, ids: list[str]) -> list[str]:
        """Every rank's `ids`, on every rank: each checkpoint then knows every chunk the group trained, so a chunk
        redelivered to another rank after a crash is still recognised."""
        gathered: list[list[str] | None] = [None] * self.world_size
        dist.all_gather_object(gathered, ids)
        return [chunk_id for part in gathered for chunk_id in part or []]


def join(
    rank: int,
    world_size: int,
    master_addr: str,
    master_port: int,
    scheme: Scheme,
    merge_every: int,
    timeout_s: float,
    device: torch.device,
) -> Ranks:
    """Join the group, blocking until every rank has joined: gloo for a learner on CPU, NCCL on CUDA (rank 0's
    `master_addr:master_port` hosts the rendezvous, as torchrun's MASTER_ADDR/MASTER_PORT)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's object collectives use the current device
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        init_method=f"tcp://{master_addr}:{master_port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    log.info("learner rank %d of %d joined (%s, %s)", rank, world_size, scheme, dist.get_backend())
    return Ranks(rank, world_size, scheme, merge_every, device)


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
