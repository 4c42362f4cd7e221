"""A trained policy in one self-describing file, as SB3's `model.zip`: the network's weights with the `PolicySpec`
that shapes it, the version, the env steps behind it and, for the best one, its evaluation.

Three places write or read one: the evaluator keeps the best evaluated version (`best.pt`, beside the learner's
`latest.pt` checkpoint), `ala export` turns either into `policy.pt` and a verified `policy.onnx`, and a user's own code
loads it (`load_policy`) to evaluate or act. A learner checkpoint is read too, so the latest version needs no copy.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import torch

from ala.rl.policy import Agent
from protos import PolicySpec

FORMAT = "ala-policy/1"
UNREADABLE = (OSError, EOFError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError, msgspec.ValidationError)
"""What torch.load and the checks raise for a file that is missing, truncated, or something else."""


@dataclass
class SavedPolicy:
    agent: Agent
    version: int
    env_steps: int
    """Env steps trained on behind this version."""
    evaluation: dict[str, float] = field(default_factory=dict)
    """The evaluator's scores of this version (mean_return, success_rate, ...); empty when never evaluated."""

    @property
    def spec(self) -> PolicySpec:
        return self.agent.spec


def save_policy(path: Path | str, policy: SavedPolicy) -> None:
    """Write `policy` to `path` atomically: a crash leaves the old file or the new one."""
    state = {
        "format": FORMAT,
        "policy": msgspec.to_builtins(policy.spec),
        "agent": policy.agent.state_dict(),
        "version": policy.version,
        "env_steps": policy.env_steps,
        "evaluation": dict(policy.evaluation),
    }
    torch_save_atomically(state, Path(path))


def torch_save_atomically(state: dict[str, Any], path: Path) -> None:
    """`torch.save` of `state` to `path`, written whole and then renamed: a crash leaves the old file or the new one
    (the learner's checkpoints and the policy files alike)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_bytes(buffer.getvalue())
    os.replace(partial, path)


def load_policy(path: Path | str) -> SavedPolicy:
    """A policy file (`save_policy`) or a learner checkpoint (`latest.pt`), on the CPU, in eval mode. Raises
    ValueError with the reason when the file is neither."""
    path = Path(path)
    try:
        state: dict[str, Any] = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
        spec = msgspec.convert(state["policy"], PolicySpec)
        if state.get("format") == FORMAT:
            weights, version, env_steps = state["agent"], state["version"], state["env_steps"]
            evaluation = state.get("evaluation", {})
        else:  # a learner checkpoint: the learner's own state, saved as bytes inside it
            learner = torch.load(io.BytesIO(state["learner"]), map_location="cpu", weights_only=True)
            weights, version, env_steps = learner["agent"], learner["version"], learner["samples_trained"]
            evaluation = {}
        agent = Agent(spec)
        agent.load_state_dict(weights)
    except (
        OSError,
        EOFError,
        KeyError,
        TypeError,
        RuntimeError,
        pickle.UnpicklingError,
        msgspec.ValidationError,
    ) as exc:
        raise ValueError(f"{path} is not an ALA policy or learner checkpoint: {exc}") from exc
    agent.eval()
    return SavedPolicy(agent, int(version), int(env_steps), {k: float(v) for k, v in evaluation.items()})


def export_policy(policy: SavedPolicy, out: Path) -> tuple[Path, Path]:
    """`policy` as `out/policy.pt` (this module's format) and `out/policy.onnx` (observations in; logits and value
    out, as the actor runs it), the ONNX model checked with ONNX Runtime against torch on the probe batch first."""
    from ala.rl.onnx_policy import OnnxOptions, export, load_verified, probe_output

    model = export(policy.agent)
    load_verified(model, policy.spec, probe_output(policy.agent), OnnxOptions())  # Rejected if ONNX Runtime disagrees
    torch_path, onnx_path = out / "policy.pt", out / "policy.onnx"
    save_policy(torch_path, policy)
    onnx_path.write_bytes(model)
    return torch_path, onnx_path
