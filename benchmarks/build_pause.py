"""Does the actor pause for a model build? Steps/s and step p99 with a 5 s build per version against none.

On a Jetson, each policy version's ONNX model is built into a TensorRT engine: seconds. A real TensorRT cannot run
here, so the build is injected: `OnnxPolicy.load` (which builds the engine on TensorRT) sleeps `--build-s` in its
worker thread before loading, in the arm `build`; the arm `none` loads as is. Everything else is real and default:
`ala learner` as its own process (it exports each version's ONNX model while an ONNX actor is heard), the actor
service in this process with `backend=onnx` and flow control on, one embedded nats-server.

Per arm, over `--seconds` after the first learner version is installed: env steps/s, the step's p50/p99 (from
`ala_actor_step_seconds`), time flow control held the actor, versions installed and, in `build`, the steps taken
while a build was in progress. Goal (issue 29): steps/s with builds >= 0.95x without, no chunk held back by a build.

    python -m benchmarks.build_pause [--seconds 60] [--build-s 5]
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from ala.broker import EmbeddedBroker, free_port
from ala.config import NatsSettings
from ala.rl.onnx_policy import OnnxPolicy
from benchmarks.report import command_line, provenance, write_report
from services.actor import metrics
from services.actor.service import serve
from services.actor.settings import ActorSettings
from tests.support import broker_settings, running, wait_until

ENV_ID = "MiniGrid-DoorKey-5x5-v0"


def histogram_quantile(quantile: float, before: dict[float, float], after: dict[float, float]) -> float:
    """The bucket bound below which `quantile` of the observations between two readings fall."""
    bounds = sorted(after)
    counts = np.array([after[b] - before.get(b, 0.0) for b in bounds])
    if counts[-1] <= 0:
        return float("nan")
    return float(bounds[int(np.searchsorted(counts, quantile * counts[-1]))])


def step_buckets() -> dict[float, float]:
    """Cumulative counts of `ala_actor_step_seconds` by upper bound, read in this process."""
    (family,) = [f for f in metrics.REGISTRY.collect() if f.name == "ala_actor_step_seconds"]
    return {float(s.labels["le"]): s.value for s in family.samples if s.name.endswith("_bucket")}


async def one_arm(url: str, build_s: float, seconds: float) -> dict[str, float]:
    building = threading.Event()
    steps_while_building = 0.0
    real_load = OnnxPolicy.load

    def slow_load(cls: type[OnnxPolicy], *args: Any, **kwargs: Any) -> OnnxPolicy:
        building.set()
        time.sleep(build_s)  # the injected engine build, in the actor's worker thread as a real one is
        try:
            return real_load(*args, **kwargs)
        finally:
            building.clear()

    if build_s:
        OnnxPolicy.load = classmethod(slow_load)  # type: ignore[method-assign, assignment]
    settings = ActorSettings(
        run="bench",
        instance="a1",
        env_id=ENV_ID,
        backend="onnx",
        metrics_host="127.0.0.1",
        metrics_port=0,
        nats=NatsSettings(url=url),
    )
    try:
        async with running(serve, settings):
            await wait_until(lambda: metrics.WEIGHTS_LOADED._value.get() >= 1, 120)  # the learner's first version
            steps, waited = metrics.ENV_STEPS._value.get(), metrics.FLOW_WAIT_SECONDS._value.get()
            loaded, buckets = metrics.WEIGHTS_LOADED._value.get(), step_buckets()
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                before = metrics.ENV_STEPS._value.get()
                await asyncio.sleep(0.05)  # sampling the step counter
                if building.is_set():
                    steps_while_building += metrics.ENV_STEPS._value.get() - before
            elapsed = time.perf_counter() - start
            after = step_buckets()
            return {
                "steps_per_s": (metrics.ENV_STEPS._value.get() - steps) / elapsed,
                "step_p50_ms": histogram_quantile(0.5, buckets, after) * 1e3,
                "step_p99_ms": histogram_quantile(0.99, buckets, after) * 1e3,
                "flow_wait_s": metrics.FLOW_WAIT_SECONDS._value.get() - waited,
                "versions_installed": metrics.WEIGHTS_LOADED._value.get() - loaded,
                "steps_while_building": steps_while_building,
            }
    finally:
        OnnxPolicy.load = real_load  # type: ignore[method-assign]


def main(
    seconds: Annotated[float, typer.Option(help="Measured seconds per arm.")] = 60.0,
    build_s: Annotated[float, typer.Option(help="Injected build time per version, arm `build`.")] = 5.0,
    out: Annotated[Path, typer.Option(help="Markdown report.")] = Path("benchmarks/results/build-pause.md"),
) -> None:
    results = {}
    for arm, injected in (("none", 0.0), ("build", build_s)):
        with tempfile.TemporaryDirectory() as scratch, EmbeddedBroker(broker_settings(Path(scratch))) as broker:
            env = dict(
                os.environ,
                ALA_NATS_URL=broker.url,
                ALA_RUN="bench",
                ALA_LEARNER_METRICS_PORT=str(free_port()),
                ALA_LEARNER_CHECKPOINT_DIR=str(Path(scratch) / "checkpoints"),
            )
            learner = subprocess.Popen([sys.executable, "-m", "ala", "learner"], env=env)
            try:
                results[arm] = asyncio.run(one_arm(broker.url, injected, seconds))
            finally:
                learner.send_signal(signal.SIGTERM)
                learner.wait(30)
        print(arm, results[arm], flush=True)
    none, build = results["none"], results["build"]
    rows = [
        ("env steps/s", "steps_per_s", "{:,.0f}"),
        ("step p50 (ms, bucket bound)", "step_p50_ms", "{:.2f}"),
        ("step p99 (ms, bucket bound)", "step_p99_ms", "{:.2f}"),
        ("flow control held the actor (s)", "flow_wait_s", "{:.1f}"),
        ("versions installed", "versions_installed", "{:.0f}"),
        ("env steps taken while a build was in progress", "steps_while_building", "{:,.0f}"),
    ]
    lines = [
        "# The actor and model builds: steps with an injected build per version against none",
        "",
        provenance(command_line(), {"none": {}, "build": {"injected build (s)": f"{build_s:g}"}}),
        "",
        f"{ENV_ID}, one actor (`backend=onnx`, flow control on, defaults otherwise) in the benchmark's process, `ala"
        f" learner` as its own process; {seconds:g} s measured per arm after the first version is installed. The build"
        " is injected (a sleep in the worker thread before each model loads): no TensorRT runs here.",
        "",
        "| | no build | build per version | ratio |",
        "|---|---:|---:|---:|",
    ]
    for label, key, fmt in rows:
        ratio = build[key] / none[key] if none[key] else float("nan")
        lines.append(f"| {label} | {fmt.format(none[key])} | {fmt.format(build[key])} | {ratio:.2f} |")
    write_report("\n".join(lines) + "\n", out)


if __name__ == "__main__":
    typer.run(main)
