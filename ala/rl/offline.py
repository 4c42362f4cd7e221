"""Offline RL from the chunks ALA stored: behaviour cloning, conservative Q-learning (CQL), and CQL-Prior (issue 31).

The cache-efficient posterior sampling seed (arXiv 2505.07274) trains offline with CQL plus a term that pulls the
Q-function's softmax policy towards an LLM's action prior. Here the data are ALA's own `TrajectoryChunk`s, read back
from JetStream (`ala.dataset`), and the prior is what the advisors said while the stack ran: the advice recorded with
each step (`advice` where the actor distilled it, else the bias it applied), on the steps some advisor advised.

- `bc`: cross-entropy of the network's outputs (as logits) on the dataset's actions.
- `cql`: discrete CQL(H) (Kumar et al. 2020, "Conservative Q-Learning for Offline Reinforcement Learning", the
  discrete form of its eq. 4, as d3rlpy's `DiscreteCQL` and CORL write it): a double-DQN Huber TD loss towards a
  Polyak-averaged target network, plus `cql_alpha * (logsumexp_a Q(s, a) - Q(s, a_data))`, which pushes down the
  actions the data never took.
- `cql-prior`: `cql`, plus `prior_coef * KL(prior || softmax(Q(s, .)))` on the advised steps (the seed's KL towards
  the LLM's prior; the prior is `softmax` of the recorded advice bias).

Written here rather than taken from d3rlpy: d3rlpy pins its own Gym/Gymnasium stack and trainer loop, while ALA's
data are small, discrete and already tensors; the losses are a dozen lines (CORL's single-file CQL was the reference
for the structure). The network is ALA's own `Agent` (its actor head gives the Q-values or the logits), so a trained
result is evaluated by `ala.rl.evaluate` as any policy is, and saved as any policy is.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from ala.rl.policy import Agent
from ala.rl.trajectory import Trajectory
from protos import PolicySpec

Method = Literal["bc", "cql", "cql-prior"]
METHODS: tuple[Method, ...] = ("bc", "cql", "cql-prior")


@dataclass
class Transitions:
    """One row per usable step: (s, a, r, s', terminal) and the advisors' prior at s."""

    observations: np.ndarray
    """float32 [M, obs_dim], exactly as the policy saw them."""
    actions: np.ndarray
    """int64 [M]"""
    rewards: np.ndarray
    """float32 [M]"""
    next_observations: np.ndarray
    """float32 [M, obs_dim]; the row's own observation where `terminal` (never read there)."""
    terminal: np.ndarray
    """bool [M]: the episode terminated at this step (no bootstrap)."""
    prior: np.ndarray
    """float32 [M, n_actions]: the advice recorded at this step, as logits (0 where none)."""
    advised: np.ndarray
    """bool [M]: some advisor advised this step."""
    full_states: np.ndarray | None = None
    """uint8 [M, *state_shape]: the privileged full state at s, where the run's actors recorded it
    (`[actor.experimental] chunk_full_states`); what a planner ranks a dataset's states by (`ala preference fit`)."""

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    @classmethod
    def from_trajectory(cls, trajectory: Trajectory) -> Transitions:
        """The chunk's steps whose successor it knows (`Trajectory.next_state_known`): every step but the last of each
        bot and those truncated without terminating. A step that ended an episode is never bootstrapped, so the reset
        observation that follows it is never read as s'."""
        obs = trajectory.observations
        following = np.concatenate([obs[1:], obs[-1:]])
        keep = trajectory.next_state_known()
        terminal = trajectory.terminated
        next_obs = np.where(terminal[..., None], obs, following)
        prior = trajectory.advice if trajectory.advice is not None else trajectory.bias
        advised = trajectory.advised if trajectory.advised is not None else (prior != 0).any(-1)
        return cls(
            observations=obs[keep],
            actions=trajectory.actions[keep],
            rewards=trajectory.rewards[keep],
            next_observations=next_obs[keep],
            terminal=terminal[keep],
            prior=prior[keep],
            advised=advised[keep],
            full_states=None if trajectory.full_states is None else trajectory.full_states[keep],
        )

    @classmethod
    def concatenate(cls, parts: Iterable[Transitions]) -> Transitions:
        parts = list(parts)
        if not parts:
            raise ValueError("no transitions: the dataset is empty")
        arrays = {}
        for f in fields(cls):
            values = [getattr(p, f.name) for p in parts]
            # An optional array is kept only where every part has it: rows without it would misalign the rest.
            arrays[f.name] = None if any(v is None for v in values) else np.concatenate(values)
        return cls(**arrays)

    def save(self, path: Path) -> None:
        """`.npz`, observations as uint8 where that is lossless (MiniGrid's codes), as on the wire."""
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        for name in ("observations", "next_observations"):
            values = arrays[name]
            if values.size and values.min() >= 0 and values.max() <= 255 and np.all(values == np.round(values)):
                arrays[name] = values.astype(np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> Transitions:
        with np.load(path) as data:
            arrays = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        for name in ("observations", "next_observations"):
            arrays[name] = arrays[name].astype(np.float32)
        return cls(**arrays)


@dataclass(frozen=True)
class OfflineSettings:
    method: Method = "cql"
    steps: int = 20_000
    """Gradient steps."""
    batch_size: int = 256
    learning_rate: float = 3e-4
    gamma: float = 0.99
    cql_alpha: float = 1.0
    """Weight of the conservative term (CQL's alpha; d3rlpy's default)."""
    prior_coef: float = 1.0
    """Weight of KL(prior || softmax Q) on advised steps (`cql-prior` only)."""
    target_tau: float = 0.005
    """Polyak rate of the target network."""
    seed: int = 0


@dataclass(frozen=True)
class Checkpoint:
    step: int
    seconds: float
    """Training seconds so far (evaluation excluded)."""
    losses: dict[str, float]


def train(
    data: Transitions,
    spec: PolicySpec,
    settings: OfflineSettings,
    every: int = 0,
    on_checkpoint: Callable[[Agent, Checkpoint], None] | None = None,
    device: torch.device | str = "cpu",
) -> Agent:
    """Train one method on `data`; every `every` steps (and at the end) hand the network to `on_checkpoint`."""
    if settings.method not in METHODS:
        raise ValueError(f"unknown offline method {settings.method!r}; choose from {METHODS}")
    if len(data) == 0:
        raise ValueError("no transitions to train on")
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    agent = Agent(spec)
    agent.observe(data.observations)
    agent.to(device)
    target = copy.deepcopy(agent).requires_grad_(False)
    optimizer = torch.optim.Adam(agent.actor.parameters(), lr=settings.learning_rate)
    # Full states are for ranking a dataset (`ala preference fit`), never trained on.
    trained = [f.name for f in fields(data) if f.name != "full_states"]
    tensors = {name: torch.as_tensor(getattr(data, name), device=device) for name in trained}
    prior_log = torch.log_softmax(tensors["prior"], -1)
    trained_s, started = 0.0, time.perf_counter()
    for step in range(1, settings.steps + 1):
        rows = torch.randint(len(data), (settings.batch_size,), generator=generator).to(device)
        outputs = agent.actor(agent.encode(tensors["observations"][rows]))
        actions = tensors["actions"][rows]
        if settings.method == "bc":
            loss = nn.functional.cross_entropy(outputs, actions)
            losses = {"bc": loss}
        else:
            losses = _cql_losses(agent, target, outputs, rows, tensors, prior_log, settings)
            loss = sum(losses.values(), torch.zeros((), device=device))
            with torch.no_grad():
                for online, averaged in zip(agent.actor.parameters(), target.actor.parameters(), strict=True):
                    averaged.lerp_(online, settings.target_tau)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if on_checkpoint is not None and ((every and step % every == 0) or step == settings.steps):
            trained_s += time.perf_counter() - started
            agent.eval()
            on_checkpoint(agent, Checkpoint(step, trained_s, {k: float(v.detach()) for k, v in losses.items()}))
            agent.train()
            started = time.perf_counter()
    return agent


def _cql_losses(
    agent: Agent,
    target: Agent,
    q: torch.Tensor,
    rows: torch.Tensor,
    tensors: dict[str, torch.Tensor],
    prior_log: torch.Tensor,
    settings: OfflineSettings,
) -> dict[str, torch.Tensor]:
    actions = tensors["actions"][rows]
    q_taken = q.gather(1, actions[:, None]).squeeze(1)
    with torch.no_grad():
        next_obs = tensors["next_observations"][rows]
        next_action = agent.actor(agent.encode(next_obs)).argmax(-1, keepdim=True)  # double DQN
        next_q = target.actor(target.encode(next_obs)).gather(1, next_action).squeeze(1)
        alive = (~tensors["terminal"][rows]).float()
        td_target = tensors["rewards"][rows] + settings.gamma * alive * next_q
    losses = {
        "td": nn.functional.smooth_l1_loss(q_taken, td_target),
        "conservative": settings.cql_alpha * (torch.logsumexp(q, -1) - q_taken).mean(),
    }
    if settings.method == "cql-prior":
        advised = tensors["advised"][rows]
        prior = prior_log[rows][advised]
        kl = (prior.exp() * (prior - torch.log_softmax(q[advised], -1))).sum(-1)
        losses["prior"] = settings.prior_coef * (kl.mean() if len(kl) else q.sum() * 0)
    return losses
