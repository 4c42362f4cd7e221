"""The actor-critic every ALA component shares: the actor samples with it, the learner trains it, and
`ala train --local` does both. Weights travel as bytes (`weights_to_bytes` / `load_weights`).

`get_action_and_value(obs, bias)` samples from `softmax(logits + bias)` and returns both log-probabilities of the
sampled action: `behaviour_logprob` (with the bias: what was really sampled from) and `policy_logprob` (without).
`sample_action(logits, value, bias)` is that maths alone, for logits computed elsewhere (`ala.rl.onnx_policy`).
"""

from __future__ import annotations

import hashlib
import io
import pickle
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from protos import PolicySpec


def layer_init(layer: nn.Linear, std: float = float(np.sqrt(2)), bias_const: float = 0.0) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias_const)
    return layer


def one_hot_codes(obs: torch.Tensor, classes: int) -> torch.Tensor:
    """Small non-negative integer codes [B, obs_dim] (MiniGrid's), one-hot and flattened: [B, obs_dim * classes]."""
    codes = obs.long().clamp(0, classes - 1)
    return nn.functional.one_hot(codes, classes).flatten(1).float()


class ActionSample(NamedTuple):
    action: torch.Tensor
    behaviour_logprob: torch.Tensor
    """log softmax(logits + bias)[action]: the distribution the action was sampled from."""
    policy_logprob: torch.Tensor
    """log softmax(logits)[action]: the policy alone."""
    entropy: torch.Tensor
    """Entropy of the policy alone."""
    value: torch.Tensor
    logprobs: torch.Tensor
    """log softmax(logits) of every action [B, n_actions]: the policy alone (for distillation)."""


class Agent(nn.Module):
    """CleanRL's actor-critic: two tanh MLPs, shaped by the `PolicySpec` that travels on the wire."""

    def __init__(self, spec: PolicySpec) -> None:
        super().__init__()
        self.spec = spec
        input_dim = spec.obs_dim * spec.onehot_classes if spec.onehot_classes else spec.obs_dim
        self.critic = nn.Sequential(
            layer_init(nn.Linear(input_dim, spec.hidden)),
            nn.Tanh(),
            layer_init(nn.Linear(spec.hidden, spec.hidden)),
            nn.Tanh(),
            layer_init(nn.Linear(spec.hidden, 1), std=1.0),
        )
        self.actor = nn.Sequential(
            layer_init(nn.Linear(input_dim, spec.hidden)),
            nn.Tanh(),
            layer_init(nn.Linear(spec.hidden, spec.hidden)),
            nn.Tanh(),
            layer_init(nn.Linear(spec.hidden, spec.n_actions), std=0.01),
        )
        # Observation normalisation (`normalize_obs`): statistics the learner keeps and the weights carry, so every
        # actor applies exactly what the policy was trained on. Until the learner observes anything they are the
        # identity (mean 0, std 1, no clip).
        self.register_buffer("obs_mean", torch.zeros(spec.obs_dim))
        self.register_buffer("obs_std", torch.ones(spec.obs_dim))
        self.register_buffer("obs_clip", torch.tensor(float("inf")))
        self.obs_moments = (0.0, np.zeros(spec.obs_dim), np.ones(spec.obs_dim))
        """(count, mean, var) of every observation observed, in float64 (the buffers are their float32 copies)."""

    def observe(self, observations: np.ndarray, clip: float = 10.0) -> None:
        """Fold a batch of raw observations [B, obs_dim] into the running statistics (ignored for one-hot codes)."""
        if self.spec.onehot_classes or len(observations) == 0:
            return
        count, mean, var = self.obs_moments
        values = np.asarray(observations, dtype=np.float64)
        batch_count, batch_mean, batch_var = len(values), values.mean(0), values.var(0)
        total = count + batch_count
        delta = batch_mean - mean
        mean = mean + delta * batch_count / total
        var = (var * count + batch_var * batch_count + delta**2 * count * batch_count / total) / total
        self.obs_moments = (total, mean, var)
        with torch.no_grad():
            self.obs_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
            self.obs_std.copy_(torch.as_tensor(np.sqrt(var + 1e-8), dtype=torch.float32))
            self.obs_clip.fill_(clip)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        if not self.spec.onehot_classes:
            normalised = (obs - self.obs_mean) / self.obs_std
            return torch.minimum(torch.maximum(normalised, -self.obs_clip), self.obs_clip)
        return one_hot_codes(obs, self.spec.onehot_classes)

    def get_value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(self.encode(obs)).squeeze(-1)

    def logits_and_value(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.encode(obs)
        return self.actor(x), self.critic(x).squeeze(-1)

    @torch.inference_mode()
    def act(
        self, observations: np.ndarray, greedy: bool = True, generator: torch.Generator | None = None
    ) -> np.ndarray:
        """Actions for a batch of observations [B, obs_dim] as the adapter's envs give them (`make`, `make_vector`):
        the most likely ones, or (greedy=False) sampled from the policy. No bias: the policy alone."""
        logits, _ = self.logits_and_value(torch.as_tensor(np.asarray(observations, dtype=np.float32)))
        if greedy:
            return logits.argmax(-1).numpy()
        return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1).numpy()

    def get_action_and_value(
        self,
        obs: torch.Tensor,
        bias: torch.Tensor | None = None,
        action: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> ActionSample:
        """Sample from softmax(logits + bias) (or score `action`): `sample_action` on this network's output."""
        logits, value = self.logits_and_value(obs)
        return sample_action(logits, value, bias, action, generator)


def sample_action(
    logits: torch.Tensor,
    value: torch.Tensor,
    bias: torch.Tensor | None = None,
    action: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> ActionSample:
    """Sample from softmax(logits + bias) (or score `action`), with the log-probabilities of exactly these logits:
    whoever computed them (torch, or ONNX Runtime in the actor). Log-softmax by hand, as Categorical's argument
    checks cost more than the network on the actor's small batches."""
    policy_logprobs = torch.log_softmax(logits, -1)
    behaviour_logprobs = policy_logprobs if bias is None else torch.log_softmax(logits + bias, -1)
    if action is None:
        action = torch.multinomial(behaviour_logprobs.exp(), 1, generator=generator).squeeze(-1)
    taken = action.unsqueeze(-1)
    return ActionSample(
        action=action,
        behaviour_logprob=behaviour_logprobs.gather(-1, taken).squeeze(-1),
        policy_logprob=policy_logprobs.gather(-1, taken).squeeze(-1),
        entropy=-(policy_logprobs.exp() * policy_logprobs).sum(-1),
        value=value,
        logprobs=policy_logprobs,
    )


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when this machine has it; asking for CUDA where torch has none fails with a sentence (a
    Jetson's PyPI torch is CPU-only: with `backend=onnx` the forward runs in ONNX Runtime anyway, so say `auto`)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r} asked for, but this torch ({torch.__version__}) has no CUDA device: install a CUDA"
            " build of torch (on a Jetson, NVIDIA's wheel for its JetPack) or set the device to auto or cpu"
        )
    return device


def weights_to_bytes(agent: Agent) -> bytes:
    buffer = io.BytesIO()
    torch.save(agent.state_dict(), buffer)
    return buffer.getvalue()


def load_weights(agent: Agent, data: bytes) -> None:
    """Load weights produced by `weights_to_bytes`; raises ValueError if they do not fit this network."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        agent.load_state_dict(state)
    except (
        RuntimeError,
        KeyError,
        EOFError,
        OSError,
        pickle.UnpicklingError,
    ) as exc:  # torch's errors for corrupt or mismatched state
        raise ValueError(f"weights do not fit this policy: {exc}") from exc


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
