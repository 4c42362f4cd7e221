"""`EnvAdapter`: everything ALA needs to know about one family of environments, in one place.

An adapter is chosen once from the env id (`ala.envs.adapter_for`). It builds the environments the bots run (flat
float32 observations, exactly what the policy reads), names the actions, derives the `PolicySpec` that travels on
the wire, and says what a digest can carry for an advisor: a text rendering of the state (None: the family has
none, and LLM advisors answer nothing for it) and a privileged full state for expert planners (None: none).
Its bucket sets size the episode-return and length histograms so that any return the family produces fits.

Only discrete action spaces are supported: advice becomes a bias on per-action logits.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from ala.envs.options import Situation
from protos import PolicySpec


def registered_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    """Gymnasium's registration of `env_id`, importing the module first for ids written `module:EnvName-v0` (as
    `gym.make` accepts them), so that users' own packages register their environments."""
    module, _, name = env_id.rpartition(":")
    if module:
        importlib.import_module(module)
    return gym.spec(name)


class UnsupportedEnv(ValueError):
    """An environment ALA cannot train on (a non-Discrete action space, an observation that cannot be flattened)."""


class EnvAdapter:
    """The generic adapter: any Gymnasium env with a `Discrete` action space and a `Box` observation.

    Subclass it for a family with more to say (see `MiniGridAdapter`), and register the subclass under the entry
    point group `ala.envs` so that `adapter_for` tries it before the built-in ones.
    """

    family: ClassVar[str] = "gym"
    has_text: ClassVar[bool] = False
    """Whether `describe` and `summarise` put states into words (LLM advisors and reviews need them)."""
    onehot_classes: ClassVar[int] = 0
    """>0: observations are small integer codes that the policy one-hot encodes into this many classes."""
    options: ClassVar[tuple[str, ...]] = ()
    """Named options an advisor may choose per situation (`ala.envs.options`); empty: per-step advice only."""

    def __init__(self, env_id: str) -> None:
        self.env_id = env_id

    @classmethod
    def matches(cls, env_id: str) -> bool:
        """Whether this adapter serves `env_id`; the generic adapter serves whatever no other one claims."""
        return True

    # Environments.
    def wrap(self, env: gym.Env) -> gym.Env:
        """Family-specific wrappers that come before flattening (MiniGrid keeps only the image)."""
        return env

    def make(self, **kwargs: Any) -> gym.Env:
        """One environment with a flat float32 observation, checked to be one ALA can train on."""
        env = self.wrap(gym.make(self.env_id, **kwargs))
        if not isinstance(env.action_space, gym.spaces.Discrete):
            env.close()
            raise UnsupportedEnv(
                f"{self.env_id} has a {type(env.action_space).__name__} action space; ALA supports Discrete only"
            )
        if not isinstance(env.observation_space, gym.spaces.Box):
            env.close()
            raise UnsupportedEnv(
                f"{self.env_id} observes a {type(env.observation_space).__name__}; the {self.family!r} adapter needs"
                " a Box (register an adapter of your own for this family: see docs/architecture.md, Environments)"
            )
        env = gym.wrappers.FlattenObservation(env)
        return gym.wrappers.TransformObservation(
            env,
            lambda obs: np.asarray(obs, dtype=np.float32),
            gym.spaces.Box(-np.inf, np.inf, env.observation_space.shape, np.float32),
        )

    def make_vector(self, num_bots: int, **kwargs: Any) -> gym.vector.SyncVectorEnv:
        """N bots in one process. SAME_STEP autoreset: every step is a real transition, and the final observation
        of a finished episode is in `info["final_obs"]` (needed to bootstrap truncated episodes)."""
        factories: list[Callable[[], gym.Env]] = [lambda: self.make(**kwargs) for _ in range(num_bots)]
        return gym.vector.SyncVectorEnv(factories, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)

    def policy_spec(self, env: gym.Env, hidden: int = 64) -> PolicySpec:
        """The spec of a policy for `env` (one made by `make`)."""
        shape = env.observation_space.shape
        assert shape is not None and len(shape) == 1, "make() flattens observations"
        n_actions = int(env.action_space.n)  # type: ignore[attr-defined]
        return PolicySpec(
            env_id=self.env_id,
            family=self.family,
            obs_dim=int(shape[0]),
            n_actions=n_actions,
            onehot_classes=self.onehot_classes,
            hidden=hidden,
            action_names=self.action_names(n_actions),
            option_names=list(self.options),
        )

    def probe_spec(self, hidden: int = 64) -> PolicySpec:
        """The spec, from one environment made and closed for the purpose (tests, `ala train --local`)."""
        env = self.make()
        try:
            return self.policy_spec(env, hidden)
        finally:
            env.close()

    def action_names(self, n_actions: int) -> list[str]:
        return [f"action_{i}" for i in range(n_actions)]

    # What a digest can carry for advisors.
    def describe(self, env: gym.Env, observation: np.ndarray) -> str | None:
        """The state in words for an LLM, or None when this family has no text rendering."""
        return None

    def summarise(self, observation: np.ndarray) -> str | None:
        """One short line about a past observation (no live env), for episode reviews; None: no text."""
        return None

    def full_state(self, env: gym.Env) -> np.ndarray | None:
        """Privileged full state for expert advisors, or None."""
        return None

    def expert_action(self, env: gym.Env) -> int | None:
        """The best action in the env's current state by a privileged planner, or None (no planner, no path): the
        judge of advice precision."""
        return None

    # Options (`ala.envs.options`): strategic advice per situation, executed by skills from the bot's own view.
    def situation(self, observation: np.ndarray) -> Situation | None:
        """The abstract situation of an observation, or None where the family declares no options."""
        return None

    def skill_action(self, option: int, observation: np.ndarray) -> int | None:
        """The action option `option`'s skill takes from `observation`, or None once it has terminated there."""
        return None

    def planner_option(self, env: gym.Env) -> int | None:
        """The right option in the env's current state by a privileged planner, or None: the upper bound of option
        advice, and the judge of option precision."""
        full_state = self.full_state(env)
        return self.option_for_state(full_state) if full_state is not None else None

    # Privileged planning from a full state (`full_state`) with no live env: what an expert advisor reads in a digest.
    def plan_ahead(self, full_state: np.ndarray, horizon: int) -> list[tuple[np.ndarray, int]]:
        """Up to `horizon` (state, action) steps of a privileged planner from `full_state`, the state each action is
        taken in; empty where the family has no planner or there is no path."""
        return []

    def option_for_state(self, full_state: np.ndarray) -> int | None:
        """The right option in `full_state` by a privileged planner, or None (no planner, no plan)."""
        return None

    def steps_to_goal(self, full_state: np.ndarray) -> int | None:
        """Steps of a privileged planner's shortest plan from `full_state` to the goal, or None (no planner, no
        path): what the planner ranks states by (`PreferenceQuery`)."""
        return None

    # Metrics.
    def return_buckets(self) -> tuple[float, ...]:
        """Histogram buckets of the episode return, wide enough for this env. The registered reward threshold hints
        at the sign: non-negative buckets keep the histogram's `_sum` (prometheus-client drops it as soon as a
        bucket is negative, as Acrobot's -500..0 returns need); the actor's mean-return gauge covers either case."""
        spec = registered_spec(self.env_id)
        threshold = spec.reward_threshold
        scale = max(abs(threshold or 0.0), float(spec.max_episode_steps or 0), 1.0)
        steps = _decades(scale)
        if threshold is not None and threshold >= 0:
            return (0.0, *steps)
        if threshold is not None:
            return (*sorted(-v for v in steps), 0.0)
        return (*sorted(-v for v in steps), 0.0, *steps)

    def length_buckets(self) -> tuple[float, ...]:
        limit = registered_spec(self.env_id).max_episode_steps or 10_000
        return tuple(sorted({*(b for b in (5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if b < limit), limit}))


def _decades(scale: float) -> list[float]:
    """1-2-5 steps from 1 up to `scale`."""
    steps: list[float] = []
    value = 1.0
    while value < scale:
        steps.extend(v for v in (value, 2 * value, 5 * value) if v < scale)
        value *= 10
    steps.append(scale)
    return steps
