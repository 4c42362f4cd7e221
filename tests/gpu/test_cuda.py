"""The CUDA paths (`device=auto` picks CUDA on a lab learner, router or Jetson): run with `make test-cuda` on a machine
with a GPU. `pytest -m cuda` selects them; the default run deselects them (pyproject's addopts), so a CPU machine
neither runs nor skips them. What CPU tests cannot show: tensors that stay on the GPU where numpy or the wire needs
them on the host, and results that differ between devices by more than float rounding."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from ala.bus import Bus
from ala.config import NatsSettings
from ala.envs import adapter_for
from ala.rl import onnx_policy
from ala.rl.learner import Learner
from ala.rl.policy import Agent, load_weights, weights_to_bytes
from ala.rl.rollout import Rollout
from tests.learner.test_learner_service import _settings, _weights_after_one_update, _zero_lag_trajectory
from tests.support import biased_trajectory, fresh_agent, ppo_settings, spec

pytestmark = pytest.mark.cuda

CUDA = torch.device("cuda")


def _flat(agent: Agent) -> torch.Tensor:
    return torch.cat([p.detach().flatten().cpu() for p in agent.parameters()])


def test_cuda_is_what_auto_picks() -> None:
    assert torch.cuda.is_available(), "the cuda tests need a GPU: run them with `make test-cuda` on one"
    learner = Learner(spec(), ppo_settings(), device="auto")
    assert next(learner.agent.parameters()).device.type == "cuda"


def test_an_update_on_cuda_equals_the_update_on_cpu() -> None:
    trajectory = biased_trajectory(fresh_agent())
    on_cpu, on_cuda = Learner(spec(), ppo_settings(), "cpu"), Learner(spec(), ppo_settings(), "cuda")
    torch.testing.assert_close(_flat(on_cpu.agent), _flat(on_cuda.agent), atol=0, rtol=0)
    cpu_stats, cuda_stats = on_cpu.train([trajectory]), on_cuda.train([trajectory])
    torch.testing.assert_close(_flat(on_cuda.agent), _flat(on_cpu.agent), atol=1e-5, rtol=1e-4)
    for name, value in cpu_stats.items():
        assert cuda_stats[name] == pytest.approx(value, rel=1e-3, abs=1e-5), name


def test_a_cuda_checkpoint_resumes_on_the_cpu_and_back() -> None:
    trajectory = biased_trajectory(fresh_agent())
    trained = Learner(spec(), ppo_settings(), "cuda")
    trained.train([trajectory])
    on_cpu = Learner(spec(), ppo_settings(seed=99), "cpu")
    on_cpu.restore(trained.checkpoint())
    torch.testing.assert_close(_flat(on_cpu.agent), _flat(trained.agent), atol=0, rtol=0)
    back = Learner(spec(), ppo_settings(seed=98), "cuda")
    back.restore(on_cpu.checkpoint())
    assert back.version == 1
    assert all(p.device.type == "cuda" for p in back.agent.parameters())
    assert all(
        value.device.type == "cuda"
        for state in back.optimizer.state.values()
        for key, value in state.items()
        if key != "step" and torch.is_tensor(value)
    )
    back.train([trajectory])  # the optimizer's moments moved with the parameters


def test_published_weights_of_a_cuda_learner_load_on_a_cpu_actor() -> None:
    learner = Learner(spec(), ppo_settings(), "cuda")
    learner.train([biased_trajectory(fresh_agent())])
    actor_side = Agent(spec())
    load_weights(actor_side, weights_to_bytes(learner.agent))
    torch.testing.assert_close(_flat(actor_side), _flat(learner.agent), atol=0, rtol=0)
    assert torch.load(io.BytesIO(weights_to_bytes(learner.agent)), map_location="cpu", weights_only=True)


def test_a_rollout_on_cuda_records_the_behaviour_logprob_the_cpu_recomputes() -> None:
    agent = fresh_agent()
    envs = adapter_for(agent.spec.env_id).make_vector(4)
    rng = np.random.default_rng(0)
    source = Rollout(envs, agent, 16, seed=0, device="cuda")
    trajectory = source.collect(lambda: rng.uniform(-2, 2, (4, agent.spec.n_actions)).astype(np.float32))
    on_cpu = agent.to("cpu")
    obs = torch.as_tensor(trajectory.observations.reshape(-1, *trajectory.observations.shape[2:]))
    with torch.no_grad():
        logits, _ = on_cpu.logits_and_value(obs)
    biased = logits + torch.as_tensor(trajectory.bias.reshape(logits.shape))
    taken = torch.as_tensor(trajectory.actions.reshape(-1, 1)).long()
    recomputed = torch.log_softmax(biased, -1).gather(-1, taken).squeeze(-1)
    torch.testing.assert_close(recomputed, torch.as_tensor(trajectory.behaviour_logprob.reshape(-1)), atol=1e-5, rtol=0)


def test_the_onnx_export_of_a_cuda_learner_verifies_and_leaves_it_on_cuda() -> None:
    learner = Learner(spec(), ppo_settings(), "cuda")
    learner.train([biased_trajectory(fresh_agent())])
    model = onnx_policy.export(learner.agent)
    expected = onnx_policy.probe_output(learner.agent)
    onnx_policy.load_verified(model, spec(), expected, onnx_policy.OnnxOptions())
    assert all(p.device.type == "cuda" for p in learner.agent.parameters())


async def test_the_learner_service_on_cuda_publishes_the_cpu_update(
    bus: Bus, nats_settings: NatsSettings, tmp_path: Path
) -> None:
    settings = _settings(nats_settings, tmp_path, device="cuda")
    trajectory = _zero_lag_trajectory(settings)
    local = Learner(spec(), settings, "cpu")
    local.train([trajectory])
    weights = await _weights_after_one_update(bus, settings, trajectory)
    torch.testing.assert_close(weights, _flat(local.agent), atol=1e-5, rtol=1e-4)
