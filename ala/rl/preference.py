"""A reward model learned from an advisor's preferences between states, turned into bounded shaping (issue 31).

Motif (Klissarov et al., ICLR'24, arXiv 2310.00166) and ONI (Zheng et al., arXiv 2410.23022) ask an LLM which of two
observations shows more progress, fit a reward model r(s) to the answers with the Bradley-Terry loss,
`P(second preferred) = sigmoid(r(second) - r(first))`, and add it to the environment's reward; ONI does so online and
asynchronously, as here: rankings arrive from the advisor (`protos.Preference`) while the learner trains, and the
model takes `steps` minibatch steps on the rankings it holds before every update.

The shaping is potential-based (Ng, Harada & Russell 1999): `F = gamma * Phi(s') - Phi(s)` with the bounded
potential `Phi(s) = scale * tanh(r(s))`, so |F| <= 2 * scale and, whatever the ranker says, the optimal policy of the
task is unchanged. Motif adds r(s) itself; on DoorKey a positive per-step reward for a 'good' state pays a policy to
stand there for the rest of a 640-step episode instead of finishing, which a potential cannot pay. A step that ends
its episode has potential 0 after it (`F = -Phi(s)`). Two steps get no shaping, because the chunk lacks their next
observation: a truncated step's (its final observation stays at the actor) and the chunk's last step (its next
observation opens the next chunk); the telescoping sum misses one bounded term per chunk there.

A small L2 term on r keeps the model's outputs near 0, where tanh is not saturated (Bradley-Terry fixes r only up
to a constant). The rankings are kept in a ring of `capacity` pairs; the model lives in the learner and starts again
after a restart (the rankings are not data the run must keep).

Motif fits its reward model before RL starts, on a dataset of play, and keeps it fixed. `save` and `load` carry a
model fit that way (`ala preference fit`, on a dataset the stack stored) into the learner; a loaded model shapes from
the first chunk, and stays as fit unless rankings arrive online.
"""

from __future__ import annotations

import json
import pickle
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ala.rl.policy import one_hot_codes
from ala.rl.trajectory import Trajectory
from protos import PolicySpec

CENTRE_WEIGHT = 1e-3
"""Weight of the L2 term that keeps r(s) near 0."""


class PreferenceReward:
    def __init__(
        self,
        spec: PolicySpec,
        scale: float,
        gamma: float,
        capacity: int = 4096,
        steps: int = 8,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        seed: int = 0,
    ) -> None:
        if scale <= 0 or capacity < 1 or steps < 0 or batch_size < 1:
            raise ValueError(f"need scale > 0, capacity >= 1, steps >= 0, batch_size >= 1; got {scale}, {capacity}")
        self.spec, self.scale, self.gamma = spec, scale, gamma
        self.steps, self.batch_size = steps, batch_size
        generator = torch.Generator().manual_seed(seed)
        inputs = spec.obs_dim * spec.onehot_classes if spec.onehot_classes else spec.obs_dim
        self.net = nn.Sequential(nn.Linear(inputs, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
        # From its own generator: the model's start depends on `seed`, not on torch's global state.
        with torch.no_grad():
            for parameter in self.net.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=learning_rate)
        self.first = np.zeros((capacity, spec.obs_dim), dtype=np.float32)
        self.second = np.zeros((capacity, spec.obs_dim), dtype=np.float32)
        self.second_preferred = np.zeros(capacity, dtype=np.float32)
        self.size = self.next = 0
        self.prefit = False
        """The model was fit before the run (`load`): it shapes before any ranking arrives."""
        self.rng = np.random.default_rng(seed)
        self.lock = threading.Lock()
        """Rankings arrive and chunks are shaped on the event loop while `fit` runs in the update's thread."""

    def add(self, first: np.ndarray, second: np.ndarray, preferred: int) -> None:
        """One ranking: `preferred` 0 if `first` shows more progress, 1 if `second` does. Raises ValueError for
        observations that do not fit the policy's spec or are not finite."""
        for observation in (first, second):
            if observation.shape != (self.spec.obs_dim,) or not np.isfinite(observation).all():
                raise ValueError(f"a ranked observation must be {self.spec.obs_dim} finite numbers")
        if preferred not in (0, 1):
            raise ValueError(f"preferred must be 0 or 1, got {preferred}")
        with self.lock:
            slot = self.next
            self.first[slot], self.second[slot], self.second_preferred[slot] = first, second, float(preferred)
            self.next = (slot + 1) % len(self.first)
            self.size = min(self.size + 1, len(self.first))

    def _encode(self, observations: np.ndarray) -> torch.Tensor:
        obs = torch.as_tensor(observations, dtype=torch.float32)
        return one_hot_codes(obs, self.spec.onehot_classes) if self.spec.onehot_classes else obs

    def fit(self) -> float | None:
        """`steps` Bradley-Terry minibatch steps on the rankings held; the mean loss, or None with no ranking yet."""
        with self.lock:
            if self.size == 0 or self.steps == 0:
                return None
            losses = []
            for _ in range(self.steps):
                rows = self.rng.integers(0, self.size, min(self.batch_size, self.size))
                first = self.net(self._encode(self.first[rows])).squeeze(-1)
                second = self.net(self._encode(self.second[rows])).squeeze(-1)
                target = torch.as_tensor(self.second_preferred[rows])
                loss = nn.functional.binary_cross_entropy_with_logits(second - first, target)
                loss = loss + CENTRE_WEIGHT * (first.pow(2).mean() + second.pow(2).mean())
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                losses.append(float(loss.detach()))
            return float(np.mean(losses))

    def potential(self, observations: np.ndarray) -> np.ndarray:
        """Phi(s) = scale * tanh(r(s)) for observations [..., obs_dim]."""
        flat = observations.reshape(-1, self.spec.obs_dim)
        with self.lock, torch.no_grad():
            rewards = self.net(self._encode(flat)).squeeze(-1).numpy()
        return (self.scale * np.tanh(rewards)).reshape(observations.shape[:-1])

    @classmethod
    def fit_on(
        cls, spec: PolicySpec, first: np.ndarray, second: np.ndarray, preferred: np.ndarray, steps: int, seed: int
    ) -> PreferenceReward:
        """A model (potential scale 1) fit once with `steps` minibatch steps on every ranked pair given, in order, as
        Motif fits before RL starts; `first`/`second` are [M, obs_dim] observations, `preferred` 1 where the second
        shows more progress."""
        model = cls(spec, scale=1.0, gamma=1.0, capacity=len(first), steps=steps, seed=seed)
        for a, b, label in zip(first, second, preferred, strict=True):
            model.add(a, b, int(label))
        model.fit()
        return model

    def agrees(self, first: np.ndarray, second: np.ndarray, second_preferred: np.ndarray) -> np.ndarray:
        """bool per pair: the potential orders it as the ranker did (higher for the preferred state)."""
        return (self.potential(second) > self.potential(first)) == np.asarray(second_preferred, dtype=bool)

    def save(self, path: Path, about: dict[str, Any]) -> None:
        """The model's weights, the spec it reads, and `about` (how it was fit), for `load`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            state = {name: tensor.clone() for name, tensor in self.net.state_dict().items()}
        torch.save(
            {
                "state_dict": state,
                "obs_dim": self.spec.obs_dim,
                "onehot_classes": self.spec.onehot_classes,
                "about": json.dumps(about),
            },
            path,
        )

    def load(self, path: Path) -> dict[str, Any]:
        """Start from a model fit before the run; returns how it was fit. Raises ValueError for a file that is not
        such a model or reads other observations than this policy's."""
        try:
            saved = torch.load(path, weights_only=True)
            shape = (int(saved["obs_dim"]), int(saved["onehot_classes"]))
            state, about = saved["state_dict"], json.loads(saved["about"])
        except (OSError, RuntimeError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as exc:
            detail = f"{path} is not a preference reward model (`ala preference fit` writes one): {exc}"
            raise ValueError(detail) from exc
        if shape != (self.spec.obs_dim, self.spec.onehot_classes):
            raise ValueError(
                f"{path} reads observations of {shape[0]} values ({shape[1]} classes); this policy's have"
                f" {self.spec.obs_dim} ({self.spec.onehot_classes})"
            )
        with self.lock:
            self.net.load_state_dict(state)
            self.prefit = True
        return about

    def shape(self, trajectory: Trajectory) -> float:
        """Add `gamma * Phi(s') - Phi(s)` to `trajectory.rewards` in place, where the chunk holds s' (see the module's
        docstring); returns the sum of |F| added. Nothing before the first ranking unless the model was fit before the
        run (untrained, it would shape noise)."""
        if self.size == 0 and not self.prefit:
            return 0.0
        phi = self.potential(trajectory.observations)
        following = np.concatenate([phi[1:], np.zeros_like(phi[:1])])
        following = np.where(trajectory.terminated, 0.0, following)
        shaping = self.gamma * following - phi
        shaping = np.where(trajectory.next_state_known(), shaping, 0.0).astype(np.float32)
        trajectory.rewards += shaping
        return float(np.abs(shaping).sum())
