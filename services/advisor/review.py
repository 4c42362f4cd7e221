"""Critical-state review (after ULTRA, arXiv 2505.20671): an LLM reads a finished episode, names the steps that
mattered, the action that should have been taken there, and an implicit reward.

The result becomes (1) advice keyed on those states, stored in the advisor's caches so a future visit is advised
without a new LLM call, and (2) `ImplicitReward` messages. Implicit rewards are bounded: the LLM picks a number
in [-1, 1] (grammar-enforced) which is multiplied by `max_implicit_reward` (default 0.05, a twentieth of
DoorKey's success reward), so no review can outweigh the environment's own signal. The learner adds them only
with `ALA_LEARNER_IMPLICIT_REWARDS=true` (off until the learning benchmark shows a benefit), to the matching
(state, action) steps of the chunks it trains on, clipped again to its own bound.

Episodes come from the trajectory stream (`EpisodeAssembler` follows each bot across chunks). Each step is put
into words by the environment adapter of the actor that produced it (`summarise`); families without text are not
reviewed by an LLM.

The planner reviews too (`PlannerReviewer`, `review_by = "planner"`): the upper bound of an LLM's review, as the
expert advisor is of an LLM's advice. It needs each step's full state, which chunks carry only where the actor
shares them (`[actor.experimental] chunk_full_states`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Protocol

import msgspec
import numpy as np

from ala.envs import EnvAdapter
from ala.rl.trajectory import Trajectory, observation_key
from protos import Array, ImplicitReward
from services.advisor.backends import BackendError, EmbeddedBackend, Suggestion

MAX_CRITICAL = 3
MAX_REVIEW_STEPS = 40
"""Longer episodes are reviewed by their last steps (where the outcome was decided)."""


@dataclass
class Step:
    observation: np.ndarray
    action: int
    reward: float
    full_state: np.ndarray | None = None
    """The privileged state the action was taken in, where the chunk carried it."""


@dataclass
class Episode:
    actor: str
    bot: int
    steps: list[Step] = field(default_factory=list)
    terminated: bool = False
    """Ended by the task (the goal reached, or lava), not by the time limit."""

    @property
    def episode_return(self) -> float:
        return sum(step.reward for step in self.steps)


class EpisodeAssembler:
    """Follows every (actor, bot) across trajectory chunks and hands out episodes as they finish. A chunk missed
    (the review's subscription drops what it cannot keep up with) ends the actor's open episodes unreviewed, and each
    bot's steps are skipped until its episode in progress ends: joined across the gap, the steps on either side
    would read as one episode."""

    def __init__(self) -> None:
        self.open: dict[tuple[str, int], Episode] = {}
        self.last_seq: dict[str, int] = {}
        self.skipping: set[tuple[str, int]] = set()
        """Bots whose episode in progress began before a gap."""
        self.dropped = 0
        """Open episodes dropped at a gap in an actor's chunks."""

    def add(self, actor: str, trajectory: Trajectory, chunk_seq: int | None = None) -> list[Episode]:
        bots = trajectory.bot_ids.tolist()
        if chunk_seq is not None:
            last = self.last_seq.get(actor)
            if last is not None and chunk_seq != last + 1:
                for bot in bots:
                    if self.open.pop((actor, bot), None) is not None:
                        self.dropped += 1
                    self.skipping.add((actor, bot))
            self.last_seq[actor] = chunk_seq
        finished, full_states = [], trajectory.full_states
        for t in range(trajectory.actions.shape[0]):
            for column, bot in enumerate(bots):
                ended = bool(trajectory.terminated[t, column] or trajectory.truncated[t, column])
                if (actor, bot) in self.skipping:
                    if ended:
                        self.skipping.discard((actor, bot))
                    continue
                episode = self.open.setdefault((actor, bot), Episode(actor, bot))
                episode.steps.append(
                    Step(
                        trajectory.observations[t, column].copy(),
                        int(trajectory.actions[t, column]),
                        float(trajectory.rewards[t, column]),
                        None if full_states is None else full_states[t, column].copy(),
                    )
                )
                if ended:
                    episode.terminated = bool(trajectory.terminated[t, column])
                    finished.append(self.open.pop((actor, bot)))
        return finished


class CriticalState(msgspec.Struct):
    step: int
    action: int
    reward: float


class ReviewAnswer(msgspec.Struct):
    critical: list[CriticalState]


def review_grammar(n_actions: int, max_critical: int = MAX_CRITICAL) -> str:
    entry = '"{\\"step\\": " step ", \\"action\\": " action ", \\"reward\\": " reward "}"'
    return "\n".join(
        [
            f'root ::= "{{\\"critical\\": [" entry ("," " "? entry){{0,{max_critical - 1}}} "]}}"',
            f"entry ::= {entry}",
            "step ::= [0-9] | [1-9] [0-9]",
            "action ::= " + " | ".join(f'"{a}"' for a in range(n_actions)),
            'reward ::= "-"? ("0." [0-9] [0-9]? | "1.0")',
        ]
    )


@dataclass
class Review:
    suggestions: list[tuple[np.ndarray, Suggestion]]
    """(observation, advice) for each critical state: what the caches learn and the advice published."""
    rewards: list[ImplicitReward]


class Reviewer(Protocol):
    async def review(self, episode: Episode) -> Review:
        """The episode's critical states, the action for each, and bounded implicit rewards; `BackendError` when
        the reviewer cannot review it."""
        ...


def implicit_reward(run: str, episode: Episode, step: Step, reward: float, source: str) -> ImplicitReward:
    return ImplicitReward(
        run=run,
        actor=episode.actor,
        bot=episode.bot,
        state_key=observation_key(step.observation),
        observation=Array.from_numpy(step.observation),
        action=step.action,
        reward=reward,
        source=source,
        created_at=time.time(),
    )


class CriticalStateReviewer:
    def __init__(
        self,
        llm: EmbeddedBackend,
        action_names: list[str],
        summarise: Callable[[np.ndarray], str | None],
        max_implicit_reward: float,
        run: str,
        max_critical: int = MAX_CRITICAL,
    ) -> None:
        self.llm = llm
        self.max_critical = max_critical
        self.action_names = action_names
        self.summarise = summarise
        self.max_implicit_reward = max_implicit_reward
        self.run = run

    def prompt(self, steps: list[Step], episode_return: float) -> list[dict[str, str]]:
        lines = [
            f"{i}: {self.summarise(s.observation)}; took {self.action_names[s.action]}" for i, s in enumerate(steps)
        ]
        actions = ", ".join(f"{i} {name}" for i, name in enumerate(self.action_names))
        return [
            {"role": "system", "content": "You review an agent's episode in a grid world. Answer with JSON only."},
            {
                "role": "user",
                "content": f"The episode returned {episode_return:.2f}. Steps:\n" + "\n".join(lines) + "\n\n"
                f"Actions: {actions}. Name up to {self.max_critical} critical steps, the action that should have been "
                "taken there, and a reward in [-1, 1] for the step as taken.",
            },
        ]

    async def review(self, episode: Episode) -> Review:
        steps = episode.steps[-MAX_REVIEW_STEPS:]
        request = {
            "messages": self.prompt(steps, episode.episode_return),
            "max_tokens": 10 + 50 * self.max_critical,  # ~40 tokens an entry: 160 for the default 3
            "temperature": 0.0,
            "grammar": review_grammar(len(self.action_names), self.max_critical),
        }
        async with self.llm.lock:
            reply = await asyncio.to_thread(self.llm.server.handle_chat_completions, request)
        try:
            answer = msgspec.json.decode(reply["choices"][0]["message"]["content"], type=ReviewAnswer)
        except (KeyError, IndexError, TypeError, msgspec.DecodeError) as exc:
            raise BackendError("parse", f"review reply unusable: {str(reply)[:200]}") from exc
        suggestions, rewards = [], []
        for critical in answer.critical:
            if not 0 <= critical.step < len(steps) or not 0 <= critical.action < len(self.action_names):
                continue  # the grammar bounds digits, not this episode's length: drop what does not fit
            step = steps[critical.step]
            suggestions.append((step.observation, Suggestion(critical.action, 0.5, 10.0, "critical-state review")))
            reward = float(np.clip(critical.reward, -1.0, 1.0)) * self.max_implicit_reward
            rewards.append(implicit_reward(self.run, episode, step, reward, "critical-state-review"))
        return Review(suggestions, rewards)


MAX_PLANNED_STEPS = 256
"""Longer episodes are reviewed by the planner over their last steps (a plan costs ~0.6 ms on DoorKey-8x8)."""


class PlannerReviewer:
    """The critical-state review by the privileged planner: a step is a mistake when the action taken was not the
    planner's and brought the goal no closer (plan length after it >= before it). The `max_critical` mistakes that
    cost most plan steps (the latest first among equals: where the outcome was decided) are the critical states; the
    planner's action there is the suggestion, and the step as taken gets `-max_implicit_reward`, half that when it
    only wasted a step."""

    def __init__(self, adapter: EnvAdapter, max_critical: int, max_implicit_reward: float, run: str) -> None:
        self.adapter = adapter
        self.max_critical = max_critical
        self.max_implicit_reward = max_implicit_reward
        self.run = run

    async def review(self, episode: Episode) -> Review:
        return await asyncio.to_thread(self.review_now, episode)  # plans are CPU work: off the event loop

    def review_now(self, episode: Episode) -> Review:
        try:
            return self._review(episode)
        except BackendError:
            raise
        except Exception as exc:  # a state the planner cannot read (a forged chunk's grid): this review fails alone
            raise BackendError("bad_state", f"the planner could not read a state: {type(exc).__name__}: {exc}") from exc

    def _review(self, episode: Episode) -> Review:
        steps = episode.steps[-MAX_PLANNED_STEPS:]
        if any(step.full_state is None for step in steps):
            raise BackendError("no_full_state", "the planner reviews only chunks with full states")
        distances = [self.adapter.steps_to_goal(step.full_state) for step in steps]  # type: ignore[arg-type]
        # What follows the last step: the goal where the task ended it with a reward; unknown where the time limit
        # ended it, or the task without a reward (MiniGrid's lava).
        distances.append(0 if episode.terminated and steps[-1].reward > 0 else None)
        # Steps that brought the goal no closer, the costliest and latest first: (plan steps lost, t).
        stalled = sorted(
            (
                (after - before + 1, t)
                for t, (before, after) in enumerate(pairwise(distances))
                if before is not None and after is not None and after >= before
            ),
            reverse=True,
        )
        suggestions, rewards = [], []
        for lost, t in stalled:  # planned only until enough are found: a plan is the costly part
            if len(suggestions) == self.max_critical:
                break
            step = steps[t]
            plan = self.adapter.plan_ahead(step.full_state, 1)  # type: ignore[arg-type]
            if not plan or plan[0][1] == step.action:
                continue  # no plan from here, or the planner's own step (a tie between shortest plans)
            suggestions.append((step.observation, Suggestion(plan[0][1], 1.0, 10.0, "critical-state review (planner)")))
            reward = -self.max_implicit_reward * min(lost, 2) / 2
            rewards.append(implicit_reward(self.run, episode, step, reward, "critical-state-review-planner"))
        return Review(suggestions, rewards)
