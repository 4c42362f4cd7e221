"""Offline RL on stored chunks: transitions built right, a run read back from a real JetStream, and BC, CQL and
CQL-Prior each pulling the network where its loss says."""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from ala.broker import EmbeddedBroker
from ala.bus import Bus
from ala.cli import app
from ala.config import NatsSettings
from ala.dataset import export_run
from ala.metrics import bus_metrics
from ala.rl.offline import Checkpoint, OfflineSettings, Transitions, train
from ala.rl.trajectory import Trajectory, to_chunk
from protos import encode, subjects
from tests.support import ENV_ID, fresh_agent, rollout, spec


def _trajectory(seed: int = 0, bots: int = 4, steps: int = 16) -> Trajectory:
    """A real DoorKey-5x5 rollout whose episodes are truncated every 5 steps, so that chunks hold episode ends."""
    return rollout(fresh_agent(), bots=bots, steps=steps, seed=seed, max_steps=5).collect()


def test_each_step_is_paired_with_its_own_next_observation_and_unusable_steps_are_dropped() -> None:
    trajectory = _trajectory()
    trajectory.terminated = trajectory.terminated.copy()
    trajectory.truncated = trajectory.truncated.copy()
    trajectory.terminated[7, 1], trajectory.truncated[7, 1] = True, False  # one goal reached mid-chunk
    trajectory.terminated[-1, 2], trajectory.truncated[-1, 2] = True, False  # and one on the chunk's last step
    assert trajectory.truncated.any()
    data = Transitions.from_trajectory(trajectory)
    expected = []
    steps, bots = trajectory.actions.shape
    for t in range(steps):
        for n in range(bots):
            if trajectory.truncated[t, n] or (t == steps - 1 and not trajectory.terminated[t, n]):
                continue
            following = trajectory.observations[t if trajectory.terminated[t, n] else t + 1, n]
            expected.append((trajectory.observations[t, n], trajectory.actions[t, n], following))
    assert len(data) == len(expected) < trajectory.num_steps
    for row, (obs, action, following) in enumerate(expected):
        np.testing.assert_array_equal(data.observations[row], obs)
        assert data.actions[row] == action
        np.testing.assert_array_equal(data.next_observations[row], following)
    assert data.terminal.sum() == 2


def test_a_saved_dataset_loads_back_identical(tmp_path: Path) -> None:
    data = Transitions.from_trajectory(_trajectory())
    data.save(tmp_path / "d.npz")
    with np.load(tmp_path / "d.npz") as raw:
        assert raw["observations"].dtype == np.uint8  # MiniGrid's codes, stored losslessly narrow
    loaded = Transitions.load(tmp_path / "d.npz")
    for field in fields(Transitions):
        np.testing.assert_array_equal(getattr(loaded, field.name), getattr(data, field.name))
    assert loaded.observations.dtype == np.float32


async def test_a_runs_chunks_come_back_from_jetstream_in_order_checked_and_alone(bus: Bus) -> None:
    trajectories = [_trajectory(seed) for seed in range(3)]
    for seq, trajectory in enumerate(trajectories):
        trajectory.policy_version = seq + 4
        payload = encode(to_chunk(trajectory, "test", "actor-1", seq))
        await bus.publish_durable(subjects.trajectory_subject("test", "actor-1"), payload, f"test.{seq}", "chunk")
    other = encode(to_chunk(_trajectory(9), "other", "actor-1", 0))
    await bus.publish_durable(subjects.trajectory_subject("other", "actor-1"), other, "other.0", "chunk")
    await bus.publish_durable(subjects.trajectory_subject("test", "actor-2"), b"not a chunk", "test.bad", "chunk")

    data, provenance = await export_run(bus.js, "test", spec())

    expected = Transitions.concatenate(Transitions.from_trajectory(t) for t in trajectories)
    for field in fields(Transitions):
        np.testing.assert_array_equal(getattr(data, field.name), getattr(expected, field.name))
    assert (provenance.chunks, provenance.chunks_refused, provenance.actors) == (3, 1, ["actor-1"])
    assert provenance.env_steps == sum(t.num_steps for t in trajectories)
    assert provenance.policy_versions == (4, 6)
    assert (provenance.first_sequence, provenance.last_sequence) == (1, 5)
    first, _ = await export_run(bus.js, "test", spec(), max_env_steps=1)
    assert len(first) == len(Transitions.from_trajectory(trajectories[0]))
    with pytest.raises(ValueError, match="no trajectory chunk"):
        await export_run(bus.js, "nobody", spec())


def _uniform_data(action_of: int | None = None, prior_action: int | None = None) -> Transitions:
    """Real observations with no reward; actions uniformly random (or always `action_of`); the advisor's prior on
    every other step, favouring `prior_action` by 2 logits."""
    data = Transitions.concatenate(Transitions.from_trajectory(_trajectory(seed)) for seed in range(4))
    rng = np.random.default_rng(0)
    n_actions = spec().n_actions
    actions = rng.integers(0, n_actions, len(data)) if action_of is None else np.full(len(data), action_of)
    prior = np.zeros((len(data), n_actions), dtype=np.float32)
    advised = np.arange(len(data)) % 2 == 0
    if prior_action is not None:
        prior[advised, prior_action] = 2.0
    return replace(
        data,
        actions=actions.astype(np.int64),
        rewards=np.zeros(len(data), dtype=np.float32),
        prior=prior,
        advised=advised & (prior_action is not None),
    )


def _greedy_share(agent: torch.nn.Module, data: Transitions, action: int) -> float:
    with torch.no_grad():
        outputs = agent.actor(agent.encode(torch.as_tensor(data.observations)))  # type: ignore[operator]
    return float((outputs.argmax(-1).numpy() == action).mean())


@pytest.mark.parametrize("method", ["bc", "cql"])
def test_bc_and_cql_keep_to_the_actions_the_data_took(method: str) -> None:
    data = _uniform_data(action_of=2)
    agent = train(data, spec(), OfflineSettings(method=method, steps=150, learning_rate=1e-3))  # type: ignore[arg-type]
    assert _greedy_share(agent, data, 2) == 1.0


def test_the_prior_term_pulls_cql_towards_the_advisors_action_where_the_data_say_nothing() -> None:
    data = _uniform_data(prior_action=4)
    settings = OfflineSettings(method="cql-prior", steps=300, learning_rate=1e-3)
    with_prior = train(data, spec(), settings)
    without = train(data, spec(), replace(settings, method="cql"))
    advised = replace(data, observations=data.observations[data.advised])
    assert _greedy_share(with_prior, advised, 4) > 0.9
    assert _greedy_share(without, advised, 4) < 0.5


def test_checkpoints_come_every_n_steps_and_at_the_end_and_bad_requests_are_refused() -> None:
    data = _uniform_data(action_of=1)
    seen: list[Checkpoint] = []
    train(data, spec(), OfflineSettings(method="cql", steps=25), every=10, on_checkpoint=lambda _, c: seen.append(c))
    assert [c.step for c in seen] == [10, 20, 25]
    assert set(seen[-1].losses) == {"td", "conservative"}
    assert all(later.seconds >= earlier.seconds for earlier, later in itertools.pairwise(seen))
    with pytest.raises(ValueError, match="unknown offline method"):
        train(data, spec(), OfflineSettings(method="dqn"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no transitions"):
        train(replace(data, actions=data.actions[:0]), spec(), OfflineSettings())


def test_ala_dataset_export_writes_the_transitions_and_their_provenance(
    nats_server: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trajectory = _trajectory()

    async def store() -> None:
        settings = NatsSettings(url=nats_server.url)
        bus = await Bus.connect(settings, "test", bus_metrics("test", CollectorRegistry()))
        await bus.provision()
        payload = encode(to_chunk(trajectory, "lab", "actor-1", 0))
        await bus.publish_durable(subjects.trajectory_subject("lab", "actor-1"), payload, "lab.0", "chunk")
        await bus.drain()

    asyncio.run(store())
    monkeypatch.setenv("ALA_NATS_URL", nats_server.url)
    result = CliRunner().invoke(app, ["dataset", "export", str(tmp_path / "lab"), "--run", "lab", "--env-id", ENV_ID])
    assert result.exit_code == 0, result.output
    data = Transitions.load(tmp_path / "lab.npz")
    provenance = json.loads((tmp_path / "lab.json").read_text())
    assert len(data) == provenance["transitions"] == len(Transitions.from_trajectory(trajectory))
    assert (provenance["run"], provenance["chunks"], provenance["env_id"]) == ("lab", 1, ENV_ID)
