"""Environment adapters: chosen once from the env id, for every family ALA claims to run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from ala.envs import EnvAdapter, UnsupportedEnv, adapter_for, registered_adapters
from ala.envs.minigrid import MiniGridAdapter


@pytest.mark.parametrize(
    ("env_id", "family", "obs_dim", "n_actions", "onehot"),
    [
        ("MiniGrid-DoorKey-5x5-v0", "minigrid", 147, 7, 11),
        ("BabyAI-GoToRedBall-v0", "minigrid", 147, 7, 11),  # registered by minigrid without the MiniGrid- prefix
        ("MiniGrid-KeyCorridorS3R1-v0", "minigrid", 147, 7, 11),
        ("CartPole-v1", "gym", 4, 2, 0),
        ("Acrobot-v1", "gym", 6, 3, 0),
    ],
)
def test_each_family_gets_its_adapter_and_spec(
    env_id: str, family: str, obs_dim: int, n_actions: int, onehot: int
) -> None:
    adapter = adapter_for(env_id)
    assert adapter.family == family
    spec = adapter.probe_spec(hidden=32)
    assert (spec.obs_dim, spec.n_actions, spec.onehot_classes, spec.hidden) == (obs_dim, n_actions, onehot, 32)
    assert len(spec.action_names) == n_actions and spec.env_id == env_id
    env = adapter.make()
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == (obs_dim,)
    text = adapter.describe(env, obs)
    assert (text is not None) == adapter.has_text == (family == "minigrid")
    assert (adapter.full_state(env) is not None) == (family == "minigrid")
    env.close()


def test_minigrid_text_names_the_mission_and_what_is_seen() -> None:
    adapter = adapter_for("BabyAI-GoToRedBall-v0")
    env = adapter.make()
    obs, _ = env.reset(seed=1)
    text = adapter.describe(env, obs)
    assert text is not None and text.startswith("Mission: go to the red ball.")
    assert "You carry nothing." in text
    assert adapter.summarise(obs).startswith("facing ")


def test_envs_ala_cannot_train_on_get_a_clear_error() -> None:
    with pytest.raises(UnsupportedEnv, match="Box action space; ALA supports Discrete only"):
        adapter_for("Pendulum-v1").make()
    with pytest.raises(UnsupportedEnv, match="observes a Discrete"):
        adapter_for("FrozenLake-v1").make()


@pytest.mark.parametrize(
    ("env_id", "best_return"), [("CartPole-v1", 500.0), ("Acrobot-v1", -60.0), ("MiniGrid-DoorKey-5x5-v0", 0.97)]
)
def test_return_buckets_hold_every_return_of_the_family(env_id: str, best_return: float) -> None:
    adapter = adapter_for(env_id)
    buckets = adapter.return_buckets()
    assert buckets[0] <= min(best_return, 0.0) and buckets[-1] >= best_return
    registry = CollectorRegistry()
    histogram = Histogram("episode_return", "test", buckets=buckets, registry=registry)
    histogram.observe(best_return)
    exposed = generate_latest(registry).decode()
    # prometheus-client drops _sum once a bucket is negative: only families with negative returns pay that.
    assert ("episode_return_sum" in exposed) == (buckets[0] >= 0)
    assert adapter.length_buckets()[-1] >= 500 if env_id != "MiniGrid-DoorKey-5x5-v0" else True


class TaggedCartPole(EnvAdapter):
    """A user's adapter, registered below through a real entry point."""

    family = "tagged"

    @classmethod
    def matches(cls, env_id: str) -> bool:
        return env_id == "CartPole-v1"


def test_users_register_their_own_adapter_by_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    dist = tmp_path / "my_adapter-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-adapter\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[ala.envs]\ntagged = {__name__}:TaggedCartPole\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    adapter_for.cache_clear()  # adapters are looked up once per id: forget the ones chosen before this package
    request.addfinalizer(adapter_for.cache_clear)  # and those chosen with it
    assert registered_adapters()[0] is TaggedCartPole
    assert adapter_for("CartPole-v1").family == "tagged"
    assert isinstance(adapter_for("MiniGrid-DoorKey-5x5-v0"), MiniGridAdapter)  # the others are unaffected


def test_import_ala_envs_loads_no_minigrid_until_the_adapters_are_looked_up() -> None:
    """MiniGrid is a plug-in (the `ala.envs` entry point, as a user's family would be): importing ALA's envs and RL
    core imports no MiniGrid; looking up an adapter loads the registered plug-ins, MiniGrid's among them."""
    code = (
        "import sys, ala.envs, ala.rl.rollout, ala.rl.learner;"
        "assert 'minigrid' not in sys.modules, 'imported by ala';"
        "print(type(ala.envs.adapter_for('MiniGrid-DoorKey-5x5-v0')).__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "MiniGridAdapter"
