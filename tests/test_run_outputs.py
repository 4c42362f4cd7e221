"""What a run leaves its user: TensorBoard scalars (one setting away: the learner's losses and the evaluator's
returns on an env-step axis), the best evaluated and the latest policy, and `ala export` of either to torch and ONNX."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ala.config import NatsSettings
from ala.rl.onnx_policy import probe_batch
from ala.rl.saved import load_policy
from ala.tensorboard import Scalars
from tests.support import wait_until


def scalars_in(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag in the event files under `directory`, as (step, value) points."""
    if not directory.is_dir():
        return {}
    events = EventAccumulator(str(directory))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_scalars_are_written_under_the_run_and_nothing_is_written_when_off(tmp_path: Path) -> None:
    Scalars(None, "off", "learner-a").add({"losses/entropy": 1.0}, 1)  # no directory: a no-op, no file
    scalars = Scalars(tmp_path, "r1", "learner-a")
    scalars.add({"losses/entropy": 1.5, "samples": 64.0}, 128, prefix="train")
    scalars.add({"losses/entropy": 1.25, "samples": 64.0}, 256, prefix="train")
    scalars.close()
    assert [path.name for path in tmp_path.iterdir()] == ["r1"]
    points = scalars_in(tmp_path / "r1" / "learner-a")
    assert points == {"losses/entropy": [(128, 1.5), (256, 1.25)], "train/samples": [(128, 64.0), (256, 64.0)]}


def test_a_run_through_ala_up_leaves_tensorboard_scalars_and_policies_that_export_to_onnx(
    tmp_path: Path, nats_settings: NatsSettings
) -> None:
    logdir = tmp_path / "tensorboard"
    env = dict(
        os.environ,
        ALA_RUN="tensorboard",
        ALA_NATS_URL=nats_settings.url,
        ALA_TENSORBOARD_DIR=str(logdir),  # the one setting
        ALA_ENV_ID="MiniGrid-Empty-5x5-v0",
        ALA_ACTOR_NUM_BOTS="4",
        ALA_ACTOR_METRICS_PORT="0",
        ALA_LEARNER_METRICS_PORT="0",
        ALA_LEARNER_CHECKPOINT_DIR=str(tmp_path / "checkpoints"),
        ALA_EVALUATOR_BEST_DIR=str(tmp_path / "checkpoints"),
        ALA_EVALUATOR_METRICS_PORT="0",
        ALA_EVALUATOR_EPISODES="2",
    )
    services = ["--service", "actor", "--service", "learner", "--service", "evaluator"]
    up = subprocess.Popen(
        [sys.executable, "-m", "ala", "up", "--no-broker", *services], env=env, stderr=subprocess.PIPE, text=True
    )

    root = logdir / "tensorboard"
    sizes = [-1]

    def learner_and_evaluator_written() -> bool:
        size = sum(path.stat().st_size for path in root.glob("*/events.out.tfevents.*"))
        if size == sizes[0]:
            return False  # nothing new to read
        sizes[0] = size
        learner = [scalars_in(path) for path in root.glob("learner-*")]
        evaluator = [scalars_in(path) for path in root.glob("evaluator-*")]
        trained = any(len(s.get("losses/entropy", [])) >= 2 for s in learner)
        return trained and any(s.get("eval/mean_return") for s in evaluator)

    try:
        asyncio.run(wait_until(learner_and_evaluator_written, 120))
    finally:
        up.send_signal(signal.SIGINT)
        _, stderr = up.communicate(timeout=60)
    assert up.returncode == 0, stderr
    (learner_dir,) = root.glob("learner-*")
    (evaluator_dir,) = root.glob("evaluator-*")
    learner, evaluator = scalars_in(learner_dir), scalars_in(evaluator_dir)
    for tag in ("losses/entropy", "losses/approx_kl", "losses/value_loss", "charts/samples_per_s", "train/samples"):
        assert tag in learner, sorted(learner)
    steps = [step for step, _ in learner["losses/entropy"]]
    assert steps == sorted(steps) and steps[0] > 0  # the env-step axis: samples trained, growing
    for tag in ("eval/mean_return", "eval/success_rate", "eval/greedy_return", "eval/policy_version"):
        assert tag in evaluator, sorted(evaluator)
    assert all(0.0 <= value <= 1.0 for _, value in evaluator["eval/success_rate"])

    for which in ("best", "latest"):
        out = tmp_path / which
        exported = subprocess.run(
            [sys.executable, "-m", "ala", "export", which, "--out", str(out)], env=env, capture_output=True, text=True
        )
        assert exported.returncode == 0, exported.stderr
        policy = load_policy(out / "policy.pt")
        assert policy.spec.env_id == "MiniGrid-Empty-5x5-v0"
        if which == "best":  # the first version evaluated at the highest return (version 0 when none beat it)
            best = max(value for _, value in evaluator["eval/mean_return"])
            assert policy.evaluation["mean_return"] == best
            scored = zip(evaluator["eval/policy_version"], evaluator["eval/mean_return"], strict=True)
            assert policy.version == min(int(v) for (_, v), (_, r) in scored if r == best)
        else:  # the learner's checkpoint at stop: trained
            assert policy.version >= 2 and policy.env_steps > 0 and not policy.evaluation
        obs = probe_batch(policy.spec)
        session = onnxruntime.InferenceSession(str(out / "policy.onnx"), providers=["CPUExecutionProvider"])
        onnx_logits, onnx_values = session.run(None, {session.get_inputs()[0].name: obs})
        with torch.inference_mode():
            logits, values = policy.agent.logits_and_value(torch.as_tensor(obs))
        np.testing.assert_allclose(onnx_logits, logits.numpy(), atol=1e-4)
        np.testing.assert_allclose(onnx_values, values.numpy(), atol=1e-4)


def test_a_policy_file_that_is_not_one_is_refused_with_its_reason(tmp_path: Path) -> None:
    garbage = tmp_path / "best.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="is not an ALA policy or learner checkpoint"):
        load_policy(garbage)
    env = dict(
        os.environ, ALA_RUN="nothing", ALA_LEARNER_CHECKPOINT_DIR=str(tmp_path), ALA_EVALUATOR_BEST_DIR=str(tmp_path)
    )
    missing = subprocess.run([sys.executable, "-m", "ala", "export", "best"], env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and "the evaluator writes best.pt" in missing.stderr
