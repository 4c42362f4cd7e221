"""The actor's per-step policy forward: torch against ONNX Runtime, in the same run.

For 1, 16, 20 and 64 bots, what the actor computes at each step (logits and value of every bot's observation,
real DoorKey-8x8 observations):
- torch: `Agent.logits_and_value`, what the actor runs with ALA_ACTOR_BACKEND=torch;
- torch, export graph: the graph the learner exports (`ala.rl.onnx_policy.InferenceGraph`) run by torch, and
  ONNX Runtime CPU, plain export: `Agent.logits_and_value` exported as it is (one-hot by ONNX's OneHot operator),
  which together tell the graph's share of the gain from the runtime's;
- ONNX Runtime on each of the CPU, CUDA and TensorRT execution providers that this onnxruntime build has and that
  starts here, on the learner's export; the others are named as not measured, never estimated.
Each repeat times every backend in turn (interleaved, so that a busy neighbour slows all alike): the report gives
the median time per call over repeats with its spread (min-max), and each backend's ratio of medians to torch's.
One thread for torch and ONNX Runtime, the actor's defaults. Then one whole policy part of an actor step at 20
bots (forward, `sample_action`, log-probabilities), torch against ONNX Runtime on the CPU.

    python -m benchmarks.actor_inference [--repeats 15] [--seconds 0.05] [--out benchmarks/results/actor-inference.md]
"""

from __future__ import annotations

import io
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np
import onnxruntime as ort
import torch
import typer
from torch import nn

from ala.rl.onnx_policy import OPSET, InferenceGraph, OnnxOptions, OnnxPolicy, export, probe_output
from ala.rl.policy import Agent, sample_action
from benchmarks.report import command_line, provenance, write_report
from tests.support import fresh_agent, rollout

ENV_ID = "MiniGrid-DoorKey-8x8-v0"
BOTS = (1, 16, 20, 64)
GOAL_BOTS, GOAL_RATIO = 20, 0.5
PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider")
SHORT = {"CPUExecutionProvider": "CPU", "CUDAExecutionProvider": "CUDA", "TensorrtExecutionProvider": "TensorRT"}
Forward = Callable[[np.ndarray], object]


class PlainGraph(nn.Module):
    """`Agent.logits_and_value` as it is: what a plain export of the Agent gives, for comparison."""

    def __init__(self, agent: Agent) -> None:
        super().__init__()
        self.agent = agent

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.agent.logits_and_value(obs)


def plain_export(agent: Agent) -> bytes:
    """`PlainGraph` with the same exporter and options as `ala.rl.onnx_policy.export`."""
    buffer, batch = io.BytesIO(), {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            PlainGraph(agent).eval(),
            (torch.zeros(1, agent.spec.obs_dim),),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=["obs"],
            output_names=["logits", "value"],
            dynamic_axes={"obs": batch, "logits": batch, "value": batch},
        )
    return buffer.getvalue()


def per_call_s(call: Callable[[], object], seconds: float) -> float:
    """Mean seconds per call over a loop of about `seconds` (its count from one timed call)."""
    start = time.perf_counter()
    call()
    count = max(10, int(seconds / max(time.perf_counter() - start, 1e-7)))
    start = time.perf_counter()
    for _ in range(count):
        call()
    return (time.perf_counter() - start) / count


def measure(backends: dict[str, Forward], obs: np.ndarray, repeats: int, seconds: float) -> dict[str, list[float]]:
    """Microseconds per call of each backend on `obs`, one sample per repeat, the backends interleaved."""
    for forward in backends.values():  # warm-up: allocations, TensorRT's engine, caches
        for _ in range(50):
            forward(obs)
    samples: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(repeats):
        for name, forward in backends.items():
            samples[name].append(per_call_s(lambda f=forward: f(obs), seconds) * 1e6)
    return samples


def cell(values: list[float]) -> str:
    return f"{statistics.median(values):,.1f} [{min(values):,.1f}–{max(values):,.1f}]"


def torch_forward(module: Callable[[torch.Tensor], object], device: torch.device) -> Forward:
    def forward(obs: np.ndarray) -> object:
        with torch.inference_mode():
            result = module(torch.from_numpy(obs).to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return result

    return forward


def main(
    repeats: Annotated[int, typer.Option(help="Timed loops per backend and batch size.")] = 15,
    seconds: Annotated[float, typer.Option(help="Length of one timed loop.")] = 0.05,
    out: Annotated[Path, typer.Option(help="Markdown report.")] = Path("benchmarks/results/actor-inference.md"),
) -> None:
    torch.set_num_threads(1)
    load = os.getloadavg()[0]  # other work on this machine skews every backend alike (they are interleaved)
    agent = fresh_agent(env_id=ENV_ID)
    spec = agent.spec
    observations = rollout(agent, bots=max(BOTS), steps=4).collect().observations[-1]  # (64, 147), real codes
    model = export(agent)
    expected = probe_output(agent)

    backends: dict[str, Forward] = {
        "torch": torch_forward(agent.logits_and_value, torch.device("cpu")),
        "torch, export graph": torch_forward(InferenceGraph(agent).eval(), torch.device("cpu")),
        "ONNX Runtime CPU, plain export": OnnxPolicy.load(plain_export(agent), spec).run,
    }
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        backends["torch CUDA"] = torch_forward(fresh_agent(env_id=ENV_ID).to(cuda).logits_and_value, cuda)
    not_measured: list[str] = []
    errors: dict[str, float] = {}
    available = ort.get_available_providers()
    for provider in PROVIDERS:
        if provider not in available:
            not_measured.append(f"{provider}: not in this onnxruntime build")
            continue
        policy = OnnxPolicy.load(model, spec, OnnxOptions(providers=(provider,), max_batch=max(BOTS)))
        if policy.provider != provider:
            not_measured.append(f"{provider}: did not start here (ONNX Runtime fell back to {policy.provider})")
            continue
        name = f"ONNX Runtime {SHORT[provider]}"
        backends[name] = policy.run
        errors[name] = policy.probe_error(expected)

    results = {bots: measure(backends, np.ascontiguousarray(observations[:bots]), repeats, seconds) for bots in BOTS}
    compared = [name for name in backends if name != "torch"]
    header = " | ".join(f"{name} (µs)" for name in backends)
    ratios = " | ".join(f"{name} / torch" for name in compared)
    rows = []
    for bots, samples in results.items():
        torch_median = statistics.median(samples["torch"])
        cells = " | ".join(cell(samples[name]) for name in backends)
        ratio_cells = " | ".join(f"{statistics.median(samples[name]) / torch_median:.2f}x" for name in compared)
        rows.append(f"| {bots} | {cells} | {ratio_cells} |")

    at_goal = {name: statistics.median(samples) for name, samples in results[GOAL_BOTS].items()}
    goal_ratio = at_goal["ONNX Runtime CPU"] / at_goal["torch"]
    step = step_rows(agent, OnnxPolicy.load(model, spec), observations[:GOAL_BOTS], repeats, seconds)
    lines = [
        "# Actor inference: torch against ONNX Runtime",
        "",
        provenance(command_line()),
        "",
        f"Processor: {platform.processor() or 'cpu'}; torch {torch.__version__}, onnxruntime {ort.__version__} "
        f"(providers in this build: {', '.join(available)}), one thread each, load average {load:.1f} at the "
        "start. Policy: "
        f"{ENV_ID}, {spec.obs_dim} codes one-hot in {spec.onehot_classes} classes, {spec.hidden} hidden units, "
        f"{spec.n_actions} actions; logits and value of every bot.",
        "",
        f"## Policy forward per step: µs per call, median of {repeats} repeats [min–max]",
        "",
        f"| bots | {header} | {ratios} |",
        "|---:|" + "---:|" * (len(backends) + len(compared)),
        *rows,
        "",
        f"**Goal: ONNX Runtime on the CPU at most {GOAL_RATIO}x torch's forward time for {GOAL_BOTS} bots: "
        f"{goal_ratio:.2f}x, {'met' if goal_ratio <= GOAL_RATIO else 'not met'}.**",
        "",
        "Not measured here: " + ("; ".join(not_measured) if not_measured else "none") + ".",
        "",
        "Largest |ONNX Runtime − torch| on the probe batch's logits and values (the actor's check, tolerance 1e-5): "
        + ", ".join(f"{name} {error:.1e}" for name, error in errors.items())
        + ".",
        "",
        f"## One actor step's policy part, {GOAL_BOTS} bots: forward, sampling and log-probabilities (µs per step)",
        "",
        "| backend | µs, median [min–max] | / torch |",
        "|---|---:|---:|",
        *step,
        "",
        f"Where the gain comes from, at {GOAL_BOTS} bots: the export graph (`InferenceGraph`: each one-hot code looked"
        " up in an identity matrix, the actor's and the critic's first layers in one matrix product) takes"
        f" {at_goal['ONNX Runtime CPU']:,.0f} µs in ONNX Runtime against"
        f" {at_goal['ONNX Runtime CPU, plain export']:,.0f} µs for the plain export (ONNX's OneHot operator), and"
        f" {at_goal['torch, export graph']:,.0f} µs in torch"
        f" against {at_goal['torch']:,.0f} µs for torch's own.",
    ]
    write_report("\n".join(lines) + "\n", out)


def step_rows(agent: Agent, policy: OnnxPolicy, obs: np.ndarray, repeats: int, seconds: float) -> list[str]:
    """What `Rollout.step` spends on the policy: forward, then `sample_action` with a bias, for both backends."""
    obs = np.ascontiguousarray(obs)
    bias = torch.from_numpy(np.random.default_rng(0).uniform(-2, 2, (len(obs), agent.spec.n_actions)).astype("f4"))
    generator = torch.Generator().manual_seed(0)

    def with_torch(batch: np.ndarray) -> object:
        with torch.inference_mode():
            logits, values = agent.logits_and_value(torch.from_numpy(batch))
            return sample_action(logits, values, bias, generator=generator)

    def with_onnx(batch: np.ndarray) -> object:
        logits, values = policy.run(batch)
        with torch.inference_mode():
            return sample_action(torch.from_numpy(logits), torch.from_numpy(values), bias, generator=generator)

    samples = measure({"torch": with_torch, "ONNX Runtime CPU": with_onnx}, obs, repeats, seconds)
    base = statistics.median(samples["torch"])
    return [
        f"| {name} | {cell(values)} | {statistics.median(values) / base:.2f}x |" for name, values in samples.items()
    ]


if __name__ == "__main__":
    typer.run(main)
