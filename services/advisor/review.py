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
reviewed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import numpy as np

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


@dataclass
class Episode:
    actor: str
    bot: int
    steps: list[Step] = field(default_factory=list)

    @property
    def episode_return(self) -> float:
        return sum(step.reward for step in self.steps)


class EpisodeAssembler:
    """Follows every (actor, bot) across trajectory chunks and hands out episodes as they finish."""

    def __init__(self) -> None:
        self.open: dict[tuple[str, int], Episode] = {}

    def add(self, actor: str, trajectory: Trajectory) -> list[Episode]:
        finished = []
        for t in range(trajectory.actions.shape[0]):
            for column, bot in enumerate(trajectory.bot_ids.tolist()):
                episode = self.open.setdefault((actor, bot), Episode(actor, bot))
                episode.steps.append(
                    Step(
                        trajectory.observations[t, column].copy(),
                        int(trajectory.actions[t, column]),
                        float(trajectory.rewards[t, column]),
                    )
                )
                if trajectory.terminated[t, column] or trajectory.truncated[t, column]:
                    finished.append(self.open.pop((actor, bot)))
        return finished


class CriticalState(msgspec.Struct):
    step: int
    action: int
    reward: float


class ReviewAnswer(msgspec.Struct):
    critical: list[CriticalState]


def review_grammar(n_actions: int) -> str:
    entry = '"{\\"step\\": " step ", \\"action\\": " action ", \\"reward\\": " reward "}"'
    return "\n".join(
        [
            f'root ::= "{{\\"critical\\": [" entry ("," " "? entry){{0,{MAX_CRITICAL - 1}}} "]}}"',
            f"entry ::= {entry}",
            "step ::= [0-9] | [1-9] [0-9]",
            "action ::= " + " | ".join(f'"{a}"' for a in range(n_actions)),
            'reward ::= "-"? ("0." [0-9] [0-9]? | "1.0")',
        ]
    )


@dataclass
class Review:
    suggestions: list[tuple[np.ndarray, Suggestion]]
    """(state, advice) for each critical state: what the caches learn."""
    rewards: list[ImplicitReward]


class CriticalStateReviewer:
    def __init__(
        self,
        llm: EmbeddedBackend,
        action_names: list[str],
        summarise: Callable[[np.ndarray], str | None],
        max_implicit_reward: float,
        run: str,
    ) -> None:
        self.llm = llm
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
                f"Actions: {actions}. Name up to {MAX_CRITICAL} critical steps, the action that should have been "
                "taken there, and a reward in [-1, 1] for the step as taken.",
            },
        ]

    async def review(self, episode: Episode) -> Review:
        steps = episode.steps[-MAX_REVIEW_STEPS:]
        request = {
            "messages": self.prompt(steps, episode.episode_return),
            "max_tokens": 160,
            "temperature": 0.0,
            "grammar": review_grammar(len(self.action_names)),
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
            state = steps[critical.step].observation
            suggestions.append((state, Suggestion(critical.action, 0.5, 10.0, "critical-state review")))
            reward = float(np.clip(critical.reward, -1.0, 1.0)) * self.max_implicit_reward
            rewards.append(
                ImplicitReward(
                    run=self.run,
                    actor=episode.actor,
                    bot=episode.bot,
                    state_key=observation_key(state),
                    observation=Array.from_numpy(state),
                    action=steps[critical.step].action,
                    reward=reward,
                    source="critical-state-review",
                    created_at=time.time(),
                )
            )
        return Review(suggestions, rewards)
