"""The keys advice is looked up by, for every bot's current state, and the judge of advice precision."""

from __future__ import annotations

from typing import Literal

import numpy as np

from ala.envs import EnvAdapter
from ala.rl.rollout import Rollout
from ala.rl.trajectory import full_state_key, observation_key
from services.actor import metrics
from services.actor.bias import BiasLookup


def full_states(adapter: EnvAdapter, rollout: Rollout) -> list[np.ndarray | None]:
    """Each bot's privileged full state now (None where the env family has none)."""
    return [adapter.full_state(rollout.env(bot)) for bot in range(rollout.num_bots)]


def state_keys(adapter: EnvAdapter, rollout: Rollout, keyed_by: Literal["observation", "full_state"]) -> list[str]:
    """Each bot's state key: of its observation (what its policy sees), or of its full state where asked for."""
    if keyed_by == "full_state":
        states = full_states(adapter, rollout)
        if all(state is not None for state in states):
            return [observation_key(state) for state in states]  # type: ignore[arg-type]
    return [observation_key(observation) for observation in rollout.obs]


def exact_state_keys(adapter: EnvAdapter, rollout: Rollout) -> list[str]:
    """Each bot's exact-state key (advice about exact states is looked up by it first)."""
    return [full_state_key(state) if state is not None else "" for state in full_states(adapter, rollout)]


def judge(adapter: EnvAdapter, rollout: Rollout, lookup: BiasLookup, rate: float, rng: np.random.Generator) -> None:
    """Advice precision: is the advised action the expert's for the state each advised bot is in now? A share
    `rate` of advised steps is judged (the planner is not free)."""
    for bot in np.flatnonzero(lookup.bias.any(axis=1)):
        if rng.random() >= rate:
            continue
        expert = adapter.expert_action(rollout.env(bot))
        verdict = "unknown" if expert is None else "right" if lookup.bias[bot].argmax() == expert else "wrong"
        metrics.ADVICE_JUDGED.labels("state" if lookup.from_state[bot] else "bot", verdict).inc()
