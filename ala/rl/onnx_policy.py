"""The policy as an ONNX graph, for the actor's per-step forward (`ALA_ACTOR_BACKEND=onnx`): the learner exports
every version it publishes, and every side checks a model on a probe batch before using it.

- `export(agent)`: ONNX bytes (opset `OPSET`) of `InferenceGraph(agent)`: `obs` float32 (B, obs_dim) to `logits`
  float32 (B, n_actions) and `value` float32 (B,), with B dynamic. The actor records values as well as logits,
  so the graph computes both and torch leaves the step loop.
- `probe_batch(spec)`: `PROBE_ROWS` observations fixed by the `PolicySpec` alone, so the learner only announces
  what the torch policy outputs on them (`probe_output`), and an actor can check any model against that.
- `OnnxPolicy.load(data, spec, options)`: an ONNX Runtime session on the first available provider of
  `options.providers` (TensorRT, CUDA, CPU: the same code on a Jetson, a GPU box and a laptop);
  `OnnxPolicy.verify(expected, atol)`: the model's output on the probe batch within `atol` of the torch policy's.

Refusals raise `ala.rejection.Rejected` with reason `onnx_invalid` (not a model ONNX Runtime can load and run with
this spec's shapes) or `onnx_mismatch` (it runs, but computes another function).
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
from torch import nn

from ala.rejection import Rejected
from ala.rl.policy import Agent
from protos import OnnxExport, PolicySpec

OPSET = 17
"""Pinned: TensorRT 8.6+ and every ONNX Runtime since 1.12 read it; what the graph uses (Gather, Gemm, Tanh, Clip,
Slice, Squeeze) needs nothing newer."""
PROBE_ROWS = 16
PROBE_SEED = 0x9E3779B9
PROBE_ATOL = 1e-5
"""Default tolerance of `verify`, on logits and values (the learner checks its own export with it)."""
INPUT = "obs"
OUTPUTS = ["logits", "value"]
ORT_ERRORS = (
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidProtobuf,
    ort_state.InvalidGraph,
    ort_state.NotImplemented,
    ort_state.RuntimeException,
    ort_state.EPFail,
)
"""What ONNX Runtime raises for a model it cannot load or run (its exceptions derive from Exception alone)."""


class InferenceGraph(nn.Module):
    """`Agent.logits_and_value`, written for inference: the one-hot encoding is a row lookup in an identity matrix
    (ONNX Runtime's OneHot kernel alone cost more than the rest of the network), and the actor's and the critic's
    first layers are one matrix product. The same function as the Agent's, which `verify` checks."""

    def __init__(self, agent: Agent) -> None:
        super().__init__()
        spec = agent.spec
        self.hidden = spec.hidden
        self.classes = spec.onehot_classes
        # Copies: a learner that trains on `agent` next cannot change the graph under the exporter.
        self.register_buffer("eye", torch.eye(max(self.classes, 1)))
        self.register_buffer("weight", torch.cat([agent.actor[0].weight, agent.critic[0].weight]).detach().clone())
        self.register_buffer("bias", torch.cat([agent.actor[0].bias, agent.critic[0].bias]).detach().clone())
        self.actor = copy.deepcopy(agent.actor[1:])
        self.critic = copy.deepcopy(agent.critic[1:])

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.classes:
            # Clamped before the cast where Agent.encode clamps after it: the same codes for every finite input, and a
            # float Clip is what TensorRT takes.
            codes = obs.clamp(0, self.classes - 1).long()
            obs = self.eye[codes].flatten(1)
        hidden = nn.functional.linear(obs, self.weight, self.bias)
        return self.actor(hidden[:, : self.hidden]), self.critic(hidden[:, self.hidden :]).squeeze(-1)


def export(agent: Agent) -> bytes:
    """`agent` as an ONNX model: `InferenceGraph`, opset `OPSET`, dynamic batch."""
    graph = InferenceGraph(agent).cpu().eval()
    example = torch.from_numpy(probe_batch(agent.spec))
    buffer = io.BytesIO()
    batch = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript-based exporter (dynamo=False): deprecated since torch 2.9 but in the pinned 2.13, and it
        # takes ~20 ms per version on one core here against 0.7-2 s for the torch.export-based one (which also
        # needs onnxscript). The learner exports every version it publishes.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            graph,
            (example,),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT],
            output_names=OUTPUTS,
            dynamic_axes={INPUT: batch, OUTPUTS[0]: batch, OUTPUTS[1]: batch},
        )
    return buffer.getvalue()


def probe_batch(spec: PolicySpec) -> np.ndarray:
    """`PROBE_ROWS` observations, float32 (PROBE_ROWS, obs_dim), fixed by the spec alone: codes in
    [0, onehot_classes) for one-hot specs, values in [-1, 1] otherwise. Integer hashing rather than a seeded
    generator, whose stream the numpy on a Jetson need not share with the learner's."""
    mask = np.uint64(0xFFFFFFFF)
    x = np.arange(PROBE_ROWS * spec.obs_dim, dtype=np.uint64).reshape(PROBE_ROWS, spec.obs_dim) + np.uint64(PROBE_SEED)
    # lowbias32 (C. Wellons), a 32-bit integer hash: each cell its own well-mixed number.
    x = ((x ^ (x >> np.uint64(16))) * np.uint64(0x7FEB352D)) & mask
    x = ((x ^ (x >> np.uint64(15))) * np.uint64(0x846CA68B)) & mask
    x = x ^ (x >> np.uint64(16))
    if spec.onehot_classes:
        return (x % np.uint64(spec.onehot_classes)).astype(np.float32)
    return (x % np.uint64(2001)).astype(np.float32) / 1000 - 1


@dataclass(frozen=True)
class ProbeOutput:
    """A policy's output on `probe_batch(spec)`."""

    logits: np.ndarray
    """float32 (PROBE_ROWS, n_actions)."""
    values: np.ndarray
    """float32 (PROBE_ROWS,)."""

    @classmethod
    def from_wire(cls, announced: OnnxExport, spec: PolicySpec) -> ProbeOutput:
        """The announced probe output; raises Rejected("onnx_invalid") when its shapes or dtypes do not fit `spec`."""
        logits, values = announced.probe_logits.to_numpy(), announced.probe_values.to_numpy()
        if (
            logits.shape != (PROBE_ROWS, spec.n_actions)
            or values.shape != (PROBE_ROWS,)
            or logits.dtype != np.float32
            or values.dtype != np.float32
        ):
            raise Rejected(
                "onnx_invalid",
                f"probe output {logits.dtype}{logits.shape}, {values.dtype}{values.shape} does not fit {spec}",
            )
        return cls(logits, values)


def probe_output(agent: Agent) -> ProbeOutput:
    """What the torch policy computes on the probe batch: what the learner announces with each export."""
    device = next(agent.parameters()).device
    with torch.inference_mode():
        logits, values = agent.logits_and_value(torch.from_numpy(probe_batch(agent.spec)).to(device))
    return ProbeOutput(logits.cpu().numpy(), values.cpu().numpy())


@dataclass(frozen=True)
class OnnxOptions:
    """How an actor runs its models (`ALA_ACTOR_ONNX_*`)."""

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    """Execution providers in order of preference, all available in this onnxruntime build (`select_providers`)."""
    threads: int = 1
    """Intra-op threads of the CPU provider."""
    max_batch: int = PROBE_ROWS
    """Largest batch that TensorRT builds its engine for: the actor's bots (and the probe's rows)."""
    atol: float = PROBE_ATOL
    trt_cache_dir: str = ""
    """TensorRT's engine and timing caches on disk, here (empty: none). The timing cache carries over between
    versions (same layers, new weights) and shortens each build; the engine cache spares a restarted actor rebuilding
    the version it had."""


def select_providers(wanted: Sequence[str]) -> tuple[str, ...]:
    """Those of `wanted` this onnxruntime build has, in the order given; ValueError when it has none of them."""
    available = ort.get_available_providers()
    chosen = tuple(provider for provider in wanted if provider in available)
    if not chosen:
        raise ValueError(f"none of the ONNX Runtime providers {list(wanted)} is in this build (it has {available})")
    return chosen


def provider_options(options: OnnxOptions, spec: PolicySpec) -> list[tuple[str, dict[str, Any]]]:
    batch = max(options.max_batch, PROBE_ROWS)
    settings: dict[str, dict[str, Any]] = {
        # TF32 (the CUDA provider's default on Ampere and later) rounds matmul inputs to 10 bits: far from 1e-5.
        "CUDAExecutionProvider": {"use_tf32": "0"},
        # One engine for every batch from 1 to `batch`: else TensorRT builds one per batch size it meets.
        "TensorrtExecutionProvider": {
            f"trt_profile_{bound}_shapes": f"{INPUT}:{rows}x{spec.obs_dim}"
            for bound, rows in (("min", 1), ("opt", batch), ("max", batch))
        },
    }
    if options.trt_cache_dir and "TensorrtExecutionProvider" in options.providers:
        # Option names: onnxruntime.ai/docs/execution-providers/TensorRT-ExecutionProvider.html
        os.makedirs(options.trt_cache_dir, exist_ok=True)
        settings["TensorrtExecutionProvider"] |= {
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": options.trt_cache_dir,
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": options.trt_cache_dir,
        }
    return [(provider, settings.get(provider, {})) for provider in options.providers]


class OnnxPolicy:
    """An ONNX Runtime session on an exported policy: `run(obs)` gives logits and values as numpy float32."""

    def __init__(self, session: ort.InferenceSession, spec: PolicySpec) -> None:
        self.session = session
        self.spec = spec
        self.provider: str = session.get_providers()[0]
        """The provider that runs the graph: the first of those asked for that started (ONNX Runtime goes on to the
        next when one fails to)."""

    @classmethod
    def load(cls, data: bytes, spec: PolicySpec, options: OnnxOptions = OnnxOptions()) -> OnnxPolicy:
        """A session on the model `data`; raises Rejected("onnx_invalid") when ONNX Runtime cannot load it or it
        does not have this module's input and outputs."""
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.threads
        session_options.inter_op_num_threads = 1
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(data, session_options, providers=provider_options(options, spec))
        except ORT_ERRORS as exc:
            raise Rejected("onnx_invalid", f"ONNX Runtime cannot load the model: {exc}") from exc
        inputs = [node.name for node in session.get_inputs()]
        outputs = [node.name for node in session.get_outputs()]
        if inputs != [INPUT] or outputs != OUTPUTS:
            raise Rejected("onnx_invalid", f"the model maps {inputs} to {outputs}, not {[INPUT]} to {OUTPUTS}")
        return cls(session, spec)

    def run(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits (B, n_actions) and values (B,) of observations (B, obs_dim), float32 C-contiguous."""
        logits, values = self.session.run(OUTPUTS, {INPUT: obs})
        return logits, values

    def probe_error(self, expected: ProbeOutput) -> float:
        """The largest |this model's output - `expected`| over the probe batch's logits and values (nan when either
        has a nan); raises Rejected("onnx_invalid") when the model cannot run on it or returns other shapes."""
        try:
            logits, values = self.run(probe_batch(self.spec))
        except ORT_ERRORS as exc:
            raise Rejected("onnx_invalid", f"the model does not run on {self.spec}'s observations: {exc}") from exc
        if logits.shape != expected.logits.shape or values.shape != expected.values.shape:
            raise Rejected("onnx_invalid", f"the model returns {logits.shape} and {values.shape} on the probe batch")
        return float(max(np.abs(logits - expected.logits).max(), np.abs(values - expected.values).max()))

    def verify(self, expected: ProbeOutput, atol: float = PROBE_ATOL) -> float:
        """The probe error; raises Rejected("onnx_mismatch") when it is above `atol` (or nan)."""
        error = self.probe_error(expected)
        if not error <= atol:
            raise Rejected(
                "onnx_mismatch",
                f"on the probe batch the model is {error:.2e} from the torch policy (tolerance {atol:g}, on "
                f"{self.provider})",
            )
        return error


def load_verified(data: bytes, spec: PolicySpec, expected: ProbeOutput, options: OnnxOptions) -> OnnxPolicy:
    """`OnnxPolicy.load` then `verify`: what an actor does with each model before installing it."""
    policy = OnnxPolicy.load(data, spec, options)
    policy.verify(expected, options.atol)
    return policy


def export_verified(agent: Agent, options: OnnxOptions) -> OnnxPolicy:
    """`agent` exported here and checked against its own torch output: an actor's policy before the learner's
    first version, or for a version announced without a model."""
    return load_verified(export(agent), agent.spec, probe_output(agent), options)
