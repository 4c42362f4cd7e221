"""A preference reward model fit before RL starts, on the states of a dataset the stack stored (`ala preference fit`).

Motif (arXiv 2310.00166) does not learn its reward online: it has an LLM rank pairs of observations from a dataset of
earlier play, fits the reward model to the rankings once, and trains RL against that fixed model. Here the dataset is
a run of the stack read back from JetStream (`ala dataset export`), recorded with each step's full state
(`[actor.experimental] chunk_full_states`), and the ranker is the privileged planner: fewer steps of its shortest plan
to the goal is more progress, as the `expert` ranker answers in the stack (ties and states it cannot plan from are
dropped). The states are split before pairing, so the held-out agreement is measured on states the model never saw.
The learner loads the result with `[learner.experimental] preference_model`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ala import __version__
from ala.envs import adapter_for
from ala.rl.offline import Transitions
from ala.rl.preference import PreferenceReward

HELD_OUT_SHARE = 0.2


@dataclass(frozen=True)
class Fit:
    dataset: str
    env_id: str
    states_ranked: int
    """Dataset states the planner ranked (a sample of the dataset's rows)."""
    pairs: int
    held_out_pairs: int
    steps: int
    held_out_agreement: float
    """The share of held-out pairs (of held-out states) the model orders as the planner does."""
    seed: int
    ala_version: str = __version__


def planner_steps(data: Transitions, env_id: str, rows: np.ndarray) -> np.ndarray:
    """Steps of the planner's shortest plan from each row's full state; -1 where it finds none."""
    if data.full_states is None:
        raise ValueError(
            "the dataset has no full states: collect it with `[actor.experimental] chunk_full_states = true`"
        )
    adapter = adapter_for(env_id)
    steps = [adapter.steps_to_goal(data.full_states[row]) for row in rows]
    return np.array([-1 if s is None else s for s in steps])


def ranked_pairs(steps: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` pairs of indices into `steps` with different plan lengths, and for each 1 where the second is
    closer to the goal."""
    usable = np.flatnonzero(steps >= 0)
    if len(np.unique(steps[usable])) < 2:
        raise ValueError("the planner ranks every usable state alike: no pair to learn from")
    first, second = [], []
    while len(first) < count:
        i, j = rng.choice(usable, (2, count), replace=True)
        differ = steps[i] != steps[j]
        first.extend(i[differ])
        second.extend(j[differ])
    a, b = np.array(first[:count]), np.array(second[:count])
    return a, b, (steps[b] < steps[a]).astype(int)


def fit(
    dataset: Path, env_id: str, out: Path, states: int = 8000, pairs: int = 4000, steps: int = 4000, seed: int = 0
) -> Fit:
    """Rank `pairs` pairs of `states` sampled dataset states by the planner, fit the model with `steps` minibatch
    steps, save it to `out` (with the fit's facts beside it, `out.json`); returns the facts."""
    data = Transitions.load(dataset)
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(data), min(states, len(data)), replace=False)
    held_out = int(len(rows) * HELD_OUT_SHARE)
    fit_rows, test_rows = rows[held_out:], rows[:held_out]
    fit_first, fit_second, fit_label = ranked_pairs(planner_steps(data, env_id, fit_rows), pairs, rng)
    observations = data.observations
    model = PreferenceReward.fit_on(
        adapter_for(env_id).probe_spec(),
        observations[fit_rows[fit_first]],
        observations[fit_rows[fit_second]],
        fit_label,
        steps,
        seed,
    )
    test_count = max(1, pairs // 4)
    test_first, test_second, test_label = ranked_pairs(planner_steps(data, env_id, test_rows), test_count, rng)
    agreement = float(
        model.agrees(observations[test_rows[test_first]], observations[test_rows[test_second]], test_label).mean()
    )
    facts = Fit(str(dataset), env_id, len(rows), pairs, test_count, steps, agreement, seed)
    provenance = json.loads(dataset.with_suffix(".json").read_text()) if dataset.with_suffix(".json").exists() else {}
    about = asdict(facts) | {"dataset_provenance": provenance}
    model.save(out, about)
    out.with_suffix(".json").write_text(json.dumps(about, indent=2) + "\n")
    return facts
