"""The policy through ONNX Runtime: the export computes what the torch policy computes, and a model that does not
(corrupted, truncated, for another network) is refused with a reason before anyone samples with it."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import onnx
import pytest
import torch

from ala.rejection import Rejected
from ala.rl.onnx_policy import (
    OPSET,
    PROBE_ROWS,
    OnnxOptions,
    OnnxPolicy,
    ProbeOutput,
    export,
    load_verified,
    probe_batch,
    probe_output,
    provider_options,
    select_providers,
)
from ala.rl.policy import Agent
from protos import Array, OnnxExport
from tests.support import spec

CARTPOLE = "CartPole-v1"


def _agent(seed: int, env_id: str = "MiniGrid-DoorKey-5x5-v0") -> Agent:
    """A policy with trained-looking parameters: biases and a last layer that a fresh one has at (almost) zero, so an
    export that lost either would show."""
    torch.manual_seed(seed)
    agent = Agent(spec(env_id))
    with torch.no_grad():
        for module in (agent.actor, agent.critic):
            for layer in module:
                if isinstance(layer, torch.nn.Linear):
                    layer.bias.normal_(0.0, 0.5)
        agent.actor[-1].weight.mul_(300.0)  # logits of a few units, as after training
    return agent


def _observations(agent: Agent, bots: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if agent.spec.onehot_classes:
        return rng.integers(0, agent.spec.onehot_classes, (bots, agent.spec.obs_dim)).astype(np.float32)
    return rng.normal(0.0, 2.0, (bots, agent.spec.obs_dim)).astype(np.float32)


@pytest.mark.parametrize("env_id", ["MiniGrid-DoorKey-5x5-v0", CARTPOLE])
def test_onnx_runtime_computes_the_torch_policys_logits_and_values(env_id: str) -> None:
    agent = _agent(seed=1, env_id=env_id)
    policy = OnnxPolicy.load(export(agent), agent.spec)
    assert policy.provider == "CPUExecutionProvider"
    for bots, seed in ((1, 0), (16, 1), (20, 2), (64, 3)):  # one model, every batch size
        obs = _observations(agent, bots, seed)
        logits, values = policy.run(obs)
        with torch.inference_mode():
            expected_logits, expected_values = agent.logits_and_value(torch.from_numpy(obs))
        assert logits.shape == (bots, agent.spec.n_actions) and values.shape == (bots,)
        assert np.abs(expected_logits.numpy()).max() > 1.0  # trained-looking logits, not ~0
        np.testing.assert_allclose(logits, expected_logits.numpy(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(values, expected_values.numpy(), rtol=0, atol=1e-5)


def test_the_export_pins_its_opset_and_leaves_the_batch_dynamic() -> None:
    model = onnx.load_from_string(export(_agent(seed=2)))
    onnx.checker.check_model(model)
    assert [opset.version for opset in model.opset_import if opset.domain in ("", "ai.onnx")] == [OPSET]
    [obs] = model.graph.input
    batch, width = obs.type.tensor_type.shape.dim
    assert batch.dim_param and width.dim_value == 147
    assert [output.name for output in model.graph.output] == ["logits", "value"]
    assert "OneHot" not in {node.op_type for node in model.graph.node}  # the slow kernel the graph avoids


def test_the_probe_batch_is_fixed_by_the_spec_alone() -> None:
    """Learner and actors derive it separately (different machines, numpy builds): it must never change, or every
    model would be refused. These values pin it."""
    batch = probe_batch(spec())
    assert batch.shape == (PROBE_ROWS, 147) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[0, :8], [6, 10, 3, 4, 3, 6, 0, 8])
    assert set(np.unique(batch)) == set(range(11))  # every class is probed
    assert len({row.tobytes() for row in batch}) == PROBE_ROWS
    raw = probe_batch(spec(CARTPOLE))
    assert raw.shape == (PROBE_ROWS, 4) and -1 <= raw.min() < 0 < raw.max() <= 1
    np.testing.assert_array_equal(probe_batch(spec()), batch)


def test_a_model_with_corrupted_weights_is_refused_as_a_mismatch() -> None:
    agent = _agent(seed=3)
    data = bytearray(export(agent))
    at = data.find(agent.critic[2].weight.detach().numpy().tobytes()[:64])
    assert at > 0, "the critic's second layer is stored as raw float32 in the model"
    data[at : at + 64] = bytes(64)  # 16 weights zeroed: still a valid model
    policy = OnnxPolicy.load(bytes(data), agent.spec)
    with pytest.raises(Rejected) as refused:
        policy.verify(probe_output(agent))
    assert refused.value.reason == "onnx_mismatch"
    # The same model uncorrupted passes, with an error far inside the tolerance.
    assert OnnxPolicy.load(export(agent), agent.spec).verify(probe_output(agent)) < 1e-5


def test_another_policys_model_is_a_mismatch_and_nan_never_passes() -> None:
    agent = _agent(seed=4)
    other = OnnxPolicy.load(export(_agent(seed=5)), agent.spec)
    with pytest.raises(Rejected, match="onnx_mismatch"):
        other.verify(probe_output(agent))
    expected = probe_output(agent)
    expected.logits[0, 0] = np.nan
    with pytest.raises(Rejected, match="onnx_mismatch"):
        load_verified(export(agent), agent.spec, expected, OnnxOptions())


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_bytes_that_are_no_model_are_refused_as_invalid(damage: str) -> None:
    agent = _agent(seed=6)
    data = export(agent)
    broken = {"garbage": b"not an onnx model" * 100, "truncated": data[: len(data) // 2], "empty": b""}[damage]
    with pytest.raises(Rejected) as refused:
        load_verified(broken, agent.spec, probe_output(agent), OnnxOptions())
    assert refused.value.reason == "onnx_invalid"


def test_a_model_for_another_network_is_refused_as_invalid() -> None:
    """A CartPole model offered to a DoorKey actor: it loads, but cannot run on DoorKey's observations."""
    doorkey = _agent(seed=7)
    with pytest.raises(Rejected) as refused:
        load_verified(export(_agent(seed=7, env_id=CARTPOLE)), doorkey.spec, probe_output(doorkey), OnnxOptions())
    assert refused.value.reason == "onnx_invalid"


def test_an_announced_probe_output_of_the_wrong_shape_is_invalid() -> None:
    agent = _agent(seed=8)
    expected = probe_output(agent)
    announced = OnnxExport(
        name="test/1.onnx",
        sha256="0" * 64,
        size=1,
        opset=OPSET,
        probe_logits=Array.from_numpy(expected.logits),
        probe_values=Array.from_numpy(expected.values),
    )
    decoded = ProbeOutput.from_wire(announced, agent.spec)
    np.testing.assert_array_equal(decoded.logits, expected.logits)
    for wrong in (
        {"probe_logits": Array.from_numpy(expected.logits[:, :3])},
        {"probe_values": Array.from_numpy(expected.values.astype(np.float64))},
    ):
        with pytest.raises(Rejected, match="onnx_invalid"):
            ProbeOutput.from_wire(msgspec.structs.replace(announced, **wrong), agent.spec)


def test_providers_are_tried_in_the_order_given_and_missing_ones_skipped() -> None:
    """This machine's onnxruntime has no CUDA or TensorRT: they are skipped, the CPU runs the model."""
    wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers(wanted) == ("CPUExecutionProvider",)
    agent = _agent(seed=9)
    policy = load_verified(export(agent), agent.spec, probe_output(agent), OnnxOptions(select_providers(wanted)))
    assert policy.provider == "CPUExecutionProvider"
    with pytest.raises(ValueError, match="TensorrtExecutionProvider"):
        select_providers(["TensorrtExecutionProvider"])


def test_tensorrt_keeps_its_engine_and_timing_caches_where_the_actor_says(tmp_path: Path) -> None:
    """A Jetson rebuilds no shape it has built: the TensorRT provider is given both caches (its documented option
    names); without a folder it gets none, and other providers never see them."""
    spec = _agent(seed=10).spec
    cache = str(tmp_path / "tensorrt")
    options = OnnxOptions(("TensorrtExecutionProvider", "CPUExecutionProvider"), trt_cache_dir=cache)
    tensorrt, cpu = provider_options(options, spec)
    assert tensorrt[1]["trt_engine_cache_enable"] == tensorrt[1]["trt_timing_cache_enable"] == "True"
    assert tensorrt[1]["trt_engine_cache_path"] == tensorrt[1]["trt_timing_cache_path"] == cache
    assert Path(cache).is_dir()
    assert cpu == ("CPUExecutionProvider", {})
    uncached, _ = provider_options(OnnxOptions(options.providers), spec)
    assert not any(key.startswith(("trt_engine_cache", "trt_timing_cache")) for key in uncached[1])
