"""How good the preference reward's parts are, apart from learning: the rankers against the planner, and the reward
model against held-out rankings (issue 31).

States come from DoorKey episodes played by the planner with some random steps mixed in (so that pairs differ in
progress: key, door, goal); each kept with its observation, full state and digest as an actor sends them. Pairs of
states are labelled by the planner (fewer steps to the goal is better; ties dropped), as the `expert` ranker labels
them in the stack.

- The reward model (`ala.rl.preference`) is fit on `--rankings` planner-labelled pairs with `--steps` minibatch steps
  (a 400-update run at 8 steps per update takes 3,200), and scored on held-out pairs: the share whose order its
  potential gets right. It reads the policy's observation (MiniGrid's 7x7 egocentric view), not the full state the
  planner ranked by: this says how much of the planner's ranking a reward on observations can carry.
- The embedded LLM ranks `--llm-pairs` pairs by their text (the `embedded` ranker, A or B): its agreement with the
  planner, and its seconds per ranking.
- Step by step, what the shaping sees: on consecutive held-out states whose plan length differs, the share where
  `Phi(s') - Phi(s)` has the sign of the planner's progress. Shaping is made of these one-step differences, not of
  the far-apart pairs the model is fit and scored on. `--model` adds a model fit before a run (`ala preference fit`).

    python -m benchmarks.preference_quality [--env-id MiniGrid-DoorKey-8x8-v0] [--rankings 2600] [--llm-pairs 100]
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from ala.envs import adapter_for
from ala.rl.preference import PreferenceReward
from benchmarks.report import command_line, provenance, write_report
from protos import StateDigest
from tests.support import digest_of

RESULTS = Path(__file__).with_name("results")


@dataclass(frozen=True)
class State:
    digest: StateDigest
    steps_to_goal: int
    carrying: bool
    """The agent holds the key: the first milestone, which a policy early in a run has never reached."""
    episode: int


def collect_states(env_id: str, episodes: int, random_share: float, seed: int) -> list[State]:
    """Every state of `episodes` episodes played by the planner, each step random with probability `random_share`."""
    adapter = adapter_for(env_id)
    env = adapter.make()
    rng = np.random.default_rng(seed)
    states = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        done = False
        while not done:
            full_state = adapter.full_state(env)
            steps = adapter.steps_to_goal(full_state) if full_state is not None else None
            if steps is not None:
                carrying = env.unwrapped.carrying is not None  # type: ignore[attr-defined]
                states.append(State(digest_of(env, obs, env_id=env_id), steps, carrying, episode))
            planned = adapter.expert_action(env)
            action = (
                int(rng.integers(env.action_space.n)) if planned is None or rng.random() < random_share else planned
            )  # type: ignore[attr-defined]
            obs, _, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
    return states


def labelled_pairs(states: list[State], count: int, rng: np.random.Generator) -> list[tuple[State, State, int]]:
    pairs = []
    while len(pairs) < count:
        i, j = rng.choice(len(states), 2, replace=False)
        if states[i].steps_to_goal != states[j].steps_to_goal:
            pairs.append((states[i], states[j], int(states[j].steps_to_goal < states[i].steps_to_goal)))
    return pairs


def model_agreement(model: PreferenceReward, test: list[tuple[State, State, int]]) -> tuple[float, float]:
    """The share of held-out pairs the model orders as the planner does: all of them, and those where one state holds
    the key and the other does not."""
    first, second, preferred = observations(test)
    right = model.agrees(first, second, preferred)
    key = np.array([f.carrying != s.carrying for f, s, _ in test])
    return float(right.mean()), float(right[key].mean()) if key.any() else float("nan")


def step_agreement(model: PreferenceReward, states: list[State]) -> tuple[float, int]:
    """The share of consecutive states (same episode, plan lengths differ) where the potential moves the way the
    planner's progress does, and how many such steps there were."""
    phi = model.potential(np.stack([s.digest.observation.to_numpy() for s in states]))
    agreed = [
        (phi[i + 1] > phi[i]) == (after.steps_to_goal < before.steps_to_goal)
        for i, (before, after) in enumerate(itertools.pairwise(states))
        if before.episode == after.episode and before.steps_to_goal != after.steps_to_goal
    ]
    return float(np.mean(agreed)), len(agreed)


def observations(pairs: list[tuple[State, State, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs' observations, first and second, and which is preferred."""
    first = np.stack([f.digest.observation.to_numpy() for f, _, _ in pairs])
    second = np.stack([s.digest.observation.to_numpy() for _, s, _ in pairs])
    return first, second, np.array([p for _, _, p in pairs])


def fitted_model(env_id: str, train: list[tuple[State, State, int]], steps: int, seed: int) -> PreferenceReward:
    return PreferenceReward.fit_on(adapter_for(env_id).probe_spec(), *observations(train), steps, seed)


async def llm_agreement(pairs: list[tuple[State, State, int]]) -> tuple[float, float, int]:
    """The embedded ranker's agreement with the planner, its median seconds per ranking, and its failures."""
    from services.advisor.backends import BackendError
    from services.advisor.ranking import Ranker
    from services.advisor.settings import advisor_spec

    ranker = Ranker(advisor_spec(name="smollm2", backend="embedded"))
    agreed, seconds, failed = [], [], 0
    try:
        for first, second, preferred in pairs:
            started = time.perf_counter()
            try:
                answer = await ranker.rank(first.digest, second.digest)
            except BackendError:
                failed += 1
                continue
            seconds.append(time.perf_counter() - started)
            agreed.append(answer == preferred)
    finally:
        await ranker.close()
    return float(np.mean(agreed)) if agreed else float("nan"), statistics.median(seconds) if seconds else 0.0, failed


def main(
    env_id: Annotated[str, typer.Option()] = "MiniGrid-DoorKey-8x8-v0",
    episodes: Annotated[int, typer.Option(help="Episodes whose states are sampled.")] = 200,
    random_share: Annotated[float, typer.Option(help="Share of random steps in those episodes.")] = 0.5,
    train_random_share: Annotated[
        float | None,
        typer.Option(
            help="Another share for the episodes the model is fit on (1.0: a random policy's states, as early"
            " in a run); default: --random-share."
        ),
    ] = None,
    rankings: Annotated[int, typer.Option(help="Planner-labelled pairs the model is fit on.")] = 2600,
    steps: Annotated[int, typer.Option(help="Reward-model minibatch steps.")] = 3200,
    test_pairs: Annotated[int, typer.Option(help="Held-out pairs.")] = 2000,
    llm_pairs: Annotated[int, typer.Option(help="Pairs the embedded LLM ranks (0: none).")] = 100,
    seeds: Annotated[int, typer.Option(help="Seeds of the model's fit (and of the pairs).")] = 5,
    model: Annotated[
        Path | None, typer.Option(help="Also score this model, fit before a run (`ala preference fit`).")
    ] = None,
    out: Annotated[Path, typer.Option()] = RESULTS / "preference-quality.md",
) -> None:
    train_share = random_share if train_random_share is None else train_random_share
    train_states = collect_states(env_id, episodes, train_share, seed=0)
    test_states = collect_states(env_id, episodes // 4, random_share, seed=100_000)  # other layouts
    agreements, on_key, on_steps = [], [], []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        train, test = labelled_pairs(train_states, rankings, rng), labelled_pairs(test_states, test_pairs, rng)
        fitted = fitted_model(env_id, train, steps, seed)
        overall, key = model_agreement(fitted, test)
        step, step_count = step_agreement(fitted, test_states)
        agreements.append(overall)
        on_key.append(key)
        on_steps.append(step)
        print(f"seed {seed}: the model orders {overall:.3f} of held-out pairs right, {key:.3f} of those with one key,"
              f" {step:.3f} of {step_count} consecutive steps")  # fmt: skip
    lines = [
        f"# Preference reward's parts on {env_id}: rankers and reward model against the planner",
        "",
        provenance(command_line()),
        "",
        f"States: {len(train_states):,} to fit on, from {episodes} episodes (seeds 0-{episodes - 1}) played by the"
        f" planner with {train_share:.0%} random steps, and {len(test_states):,} held out from {episodes // 4} other"
        f" layouts, with {random_share:.0%} random steps.",
        "",
        "| what | agreement with the planner on held-out pairs | spread | cost |",
        "|---|---:|---|---|",
        f"| reward model on observations, {rankings:,} planner rankings, {steps:,} steps ({seeds} seeds) |"
        f" {statistics.median(agreements):.3f} | {min(agreements):.3f}-{max(agreements):.3f} | - |",
        f"| the same, on the held-out pairs where one state holds the key and the other does not |"
        f" {statistics.median(on_key):.3f} | {min(on_key):.3f}-{max(on_key):.3f} | - |",
        f"| the same, on consecutive held-out states (one step apart, plan lengths differ): Phi moves with the"
        f" planner's progress | {statistics.median(on_steps):.3f} | {min(on_steps):.3f}-{max(on_steps):.3f} | - |",
        f"| states to fit on that hold the key | {np.mean([s.carrying for s in train_states]):.3f} | - | - |",
    ]
    if model is not None:
        loaded = PreferenceReward(adapter_for(env_id).probe_spec(), scale=1.0, gamma=0.99)
        about = loaded.load(model)
        overall, key = model_agreement(loaded, labelled_pairs(test_states, test_pairs, np.random.default_rng(0)))
        step, _ = step_agreement(loaded, test_states)
        lines += [
            f"| model fit before a run, {model} ({about['pairs']:,} planner rankings of {about['states_ranked']:,}"
            f" states of a stored run, {about['steps']:,} steps): held-out pairs | {overall:.3f} | - | - |",
            f"| the same model, pairs where one state holds the key | {key:.3f} | - | - |",
            f"| the same model, consecutive held-out states | {step:.3f} | - | - |",
        ]
    if llm_pairs:
        pairs = labelled_pairs(test_states, llm_pairs, np.random.default_rng(0))
        agreement, seconds, failed = asyncio.run(llm_agreement(pairs))
        lines.append(
            f"| embedded SmolLM2-135M ranking by text, {llm_pairs} pairs | {agreement:.3f} | chance 0.5 |"
            f" {seconds:.2f} s per ranking (median), {failed} failed |"
        )
    write_report("\n".join(lines) + "\n", out)


if __name__ == "__main__":
    typer.run(main)
