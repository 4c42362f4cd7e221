"""A preference reward model fit before the run (Motif): ranked by the planner on a stored dataset's full states, it
orders held-out states as the planner does, travels to the learner as a file, and shapes from the first chunk; bad
datasets, files and settings are refused clearly."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import numpy as np
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from ala.bus import Bus
from ala.cli import app
from ala.config import NatsSettings
from ala.envs import adapter_for
from ala.rl.offline import Transitions
from ala.rl.preference import PreferenceReward
from benchmarks.preference_quality import collect_states
from services.learner import metrics
from services.learner.service import serve
from tests.learner.test_learner_service import (
    _announcements,
    _chunk,
    _publish,
    _settings,
    _start_training,
    _zero_lag_trajectory,
)
from tests.support import ENV_ID, running, spec, wait_until


def _planner_dataset(episodes: int = 30, random_share: float = 0.5, seed: int = 0) -> Transitions:
    """Real DoorKey-5x5 episodes played by the planner with random steps mixed in (the preference benchmark's states),
    each step with its full state, as a run's actors record them with `chunk_full_states`."""
    states = collect_states(ENV_ID, episodes, random_share, seed)
    observations = [state.digest.observation.to_numpy().astype(np.float32) for state in states]
    full_states = []
    for state in states:
        assert state.digest.full_state is not None  # MiniGrid's adapter always has one
        full_states.append(state.digest.full_state.to_numpy())
    rows, n_actions = len(observations), spec().n_actions
    return Transitions(
        observations=np.stack(observations),
        actions=np.zeros(rows, dtype=np.int64),
        rewards=np.zeros(rows, dtype=np.float32),
        next_observations=np.stack(observations),
        terminal=np.zeros(rows, dtype=bool),
        prior=np.zeros((rows, n_actions), dtype=np.float32),
        advised=np.zeros(rows, dtype=bool),
        full_states=np.stack(full_states).astype(np.uint8),
    )


def _fit(tmp_path: Path, data: Transitions, *extra: str) -> tuple[int, str]:
    data.save(tmp_path / "data.npz")
    (tmp_path / "data.json").write_text(json.dumps({"run": "lab", "env_steps": len(data)}))
    args = ["preference", "fit", str(tmp_path / "model.pt"), "--dataset", str(tmp_path / "data.npz")]
    result = CliRunner().invoke(app, [*args, "--env-id", ENV_ID, "--states", "1500", "--pairs", "1500", *extra])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("fit")
    code, output = _fit(tmp_path, _planner_dataset(), "--steps", "1500")
    assert code == 0, output
    return tmp_path / "model.pt"


def test_a_model_fit_on_planner_ranked_dataset_states_orders_held_out_states_as_the_planner(fitted: Path) -> None:
    about = json.loads(fitted.with_suffix(".json").read_text())
    assert about["held_out_agreement"] > 0.75  # chance is 0.5; the untrained model is checked below
    assert about["pairs"] == 1500 and about["dataset_provenance"]["run"] == "lab"  # the dataset's own provenance
    untrained = PreferenceReward(spec(), scale=1.0, gamma=1.0)
    loaded = PreferenceReward(spec(), scale=1.0, gamma=1.0)
    assert loaded.load(fitted) == about
    held_out = _planner_dataset(episodes=10, seed=1000)  # other layouts
    steps = np.array([adapter_for(ENV_ID).steps_to_goal(s) for s in held_out.full_states])  # type: ignore[union-attr]
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, len(steps), (2, 2000))
    differ = steps[i] != steps[j]
    i, j = i[differ], j[differ]

    def agreement(model: PreferenceReward) -> float:
        phi = model.potential(held_out.observations)
        return float(((phi[j] > phi[i]) == (steps[j] < steps[i])).mean())

    assert agreement(loaded) > 0.75 and agreement(loaded) > agreement(untrained) + 0.15


def test_a_loaded_model_shapes_before_any_ranking_arrives(fitted: Path) -> None:
    trajectory = _zero_lag_trajectory(_settings(NatsSettings(), Path(".")))
    untrained = PreferenceReward(spec(), scale=0.2, gamma=0.99)
    assert untrained.shape(trajectory) == 0.0  # nothing before the first ranking
    loaded = PreferenceReward(spec(), scale=0.2, gamma=0.99)
    loaded.load(fitted)
    before = trajectory.rewards.copy()
    assert loaded.shape(trajectory) > 0 and not np.array_equal(trajectory.rewards, before)
    assert np.abs(trajectory.rewards - before).max() <= 2 * 0.2


def test_a_dataset_without_full_states_is_refused_with_what_to_record(tmp_path: Path) -> None:
    data = _planner_dataset(episodes=3)
    data.full_states = None
    code, output = _fit(tmp_path, data)
    assert code == 2 and "chunk_full_states" in output
    assert not (tmp_path / "model.pt").exists()


def test_a_file_that_is_not_a_model_for_this_policy_is_refused(fitted: Path, tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a preference reward model"):
        PreferenceReward(spec(), scale=0.1, gamma=0.99).load(tmp_path / "junk.pt")
    other = msgspec.structs.replace(spec(), obs_dim=spec().obs_dim + 1)
    with pytest.raises(ValueError, match="reads observations of"):
        PreferenceReward(other, scale=0.1, gamma=0.99).load(fitted)


def test_a_model_without_a_scale_or_without_a_file_is_a_settings_error(fitted: Path, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="preference_model needs preference_reward > 0"):
        _settings(NatsSettings(), tmp_path, preference_model=fitted)
    with pytest.raises(ValidationError, match="preference_model"):
        _settings(NatsSettings(), tmp_path, preference_reward=0.1, preference_model=tmp_path / "missing.pt")


async def test_the_learner_shapes_its_first_chunk_with_a_model_fit_before_the_run(
    bus: Bus, nats_settings: NatsSettings, tmp_path: Path, fitted: Path
) -> None:
    settings = _settings(nats_settings, tmp_path, preference_reward=0.1, preference_model=fitted, preference_steps=0)
    shaping = metrics.PREFERENCE_SHAPING._value
    before = shaping.get()
    announcements = await _announcements(bus)
    async with running(serve, settings):
        await _start_training(bus, announcements)
        await _publish(bus, _chunk(_zero_lag_trajectory(settings), 0), "test.0")
        await wait_until(lambda: shaping.get() > before)  # no ranker runs: only the loaded model can shape
