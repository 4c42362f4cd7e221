"""Advisors that need no LLM: the privileged planner of the digest's env (`ExpertBackend`, the upper bound), the
planner at a set precision (`SimulatedBackend`), always- or sometimes-wrong advice (`AdversarialBackend`), noise as
strong as the expert (`RandomBackend`) and the zero bias (`NullBackend`)."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from typing import ClassVar

import numpy as np

from ala.envs import EnvAdapter, adapter_for
from ala.rl.trajectory import full_state_key
from protos import StateDigest
from services.advisor.backends.base import (
    EXPERT_TTL_S,
    BackendError,
    Choice,
    Reads,
    Suggestion,
)
from services.advisor.settings import AdversarialAdvisor, AdvisorSpec, SimulatedAdvisor


def planner_of(digest: StateDigest) -> EnvAdapter:
    """The privileged planner of the digest's env: its adapter (`EnvAdapter.plan_ahead`, `option_for_state`)."""
    if not digest.env_id:
        raise BackendError("unavailable", "the digest names no env (an actor from before digests carried env_id)")
    return adapter_for(digest.env_id)  # the generic adapter, which has no planner, for an env no family claims


def full_state_of(digest: StateDigest) -> np.ndarray:
    if digest.full_state is None:
        raise BackendError("unavailable", "the expert needs the digest's full_state (ALA_ACTOR_DIGEST_FULL_STATE)")
    return digest.full_state.to_numpy()


class ExpertBackend:
    """Also registered as the `expert` entry point of group `ala.advisors`: the template for plug-in advisors."""

    kind = "expert"
    reads: ClassVar[Reads] = "full_state"

    def __init__(self, spec: AdvisorSpec | None = None) -> None:
        self.lookahead = getattr(spec, "lookahead", 0)  # a plug-in's spec (PluginAdvisor) has no lookahead

    async def suggest(self, digest: StateDigest, messages: list[dict[str, str]]) -> Suggestion:
        path = planner_of(digest).plan_ahead(full_state_of(digest), 1 + self.lookahead)
        if not path:
            raise BackendError("unavailable", "no path to the goal from this state (or no planner for this env)")
        ahead = tuple((full_state_key(state), action) for state, action in path[1:])
        return Suggestion(path[0][1], 1.0, EXPERT_TTL_S, "shortest path", ahead=ahead)

    async def choose(self, digest: StateDigest, messages: list[dict[str, str]], names: list[str]) -> Choice:
        """The right option for the exact state (privileged): the upper bound of option advice."""
        option = planner_of(digest).option_for_state(full_state_of(digest))
        if option is None or option >= len(names):
            raise BackendError("unavailable", "no option plan from this state")
        return Choice(option)

    async def close(self) -> None:
        return None


class AdversarialBackend:
    kind = "adversarial"
    reads: ClassVar[Reads] = "full_state"

    def __init__(self, spec: AdversarialAdvisor | SimulatedAdvisor) -> None:
        self.expert = ExpertBackend(spec)  # the same lookahead: wrong advice reaches as far ahead as the expert's
        self.wrong_probability = spec.wrong_probability if isinstance(spec, AdversarialAdvisor) else 1 - spec.precision
        self.rng = random.Random(spec.seed)

    async def suggest(self, digest: StateDigest, messages: list[dict[str, str]]) -> Suggestion:
        right = await self.expert.suggest(digest, messages)
        n_actions = len(digest.action_names)
        ahead = tuple((key, self._perhaps_wrong(action, n_actions)) for key, action in right.ahead)
        return Suggestion(self._perhaps_wrong(right.action, n_actions), 1.0, right.ttl_s, "adversarial", ahead=ahead)

    async def choose(self, digest: StateDigest, messages: list[dict[str, str]], names: list[str]) -> Choice:
        right = await self.expert.choose(digest, messages, names)
        return Choice(self._perhaps_wrong(right.option, len(names)))

    def _perhaps_wrong(self, right: int, n_actions: int) -> int:
        if self.rng.random() >= self.wrong_probability:
            return right
        return self.rng.choice([a for a in range(n_actions) if a != right])

    async def close(self) -> None:
        return None


class SimulatedBackend(AdversarialBackend):
    """What a served LLM gives, simulated: the planner's answer (action or option) with probability `precision`,
    otherwise a uniformly wrong one, after `latency_s`, at most `max_concurrency` answers in flight. It maps the
    frontier: which precision and latency a lab's model needs before its advice pays (`benchmarks/frontier.py`)."""

    kind = "simulated"

    def __init__(self, spec: SimulatedAdvisor) -> None:
        super().__init__(spec)
        self.latency_s = spec.latency_s
        self.slots = asyncio.Semaphore(spec.max_concurrency)

    async def suggest(self, digest: StateDigest, messages: list[dict[str, str]]) -> Suggestion:
        async with self.slots:
            await asyncio.sleep(self.latency_s)
            return replace(await super().suggest(digest, messages), rationale="simulated")

    async def choose(self, digest: StateDigest, messages: list[dict[str, str]], names: list[str]) -> Choice:
        async with self.slots:
            await asyncio.sleep(self.latency_s)
            return await super().choose(digest, messages, names)


class RandomBackend:
    kind = "random"
    reads: ClassVar[Reads] = "observation"

    def __init__(self, spec: AdvisorSpec) -> None:
        self.rng = random.Random(spec.seed)

    async def suggest(self, digest: StateDigest, messages: list[dict[str, str]]) -> Suggestion:
        return Suggestion(self.rng.randrange(len(digest.action_names)), 1.0, EXPERT_TTL_S, "random")

    async def choose(self, digest: StateDigest, messages: list[dict[str, str]], names: list[str]) -> Choice:
        """A uniformly random option (behind the situation cache: one per situation, as an uninformed LLM would
        give): the skills-uniform arm, which tells the skills' own contribution from the choice of option."""
        return Choice(self.rng.randrange(len(names)))

    async def close(self) -> None:
        return None


class NullBackend:
    """Advice that changes nothing but the label: equal scores, which the router's mean-centring makes a zero bias.
    Full confidence, so that its weight (priority x confidence x trust) is not zero and the router merges and sends
    it like any other advisor's."""

    kind = "null"
    reads: ClassVar[Reads] = "observation"

    def __init__(self, spec: AdvisorSpec) -> None:
        del spec  # nothing to configure: every answer is the same

    async def suggest(self, digest: StateDigest, messages: list[dict[str, str]]) -> Suggestion:
        scores = (0.0,) * len(digest.action_names)
        return Suggestion(0, 1.0, EXPERT_TTL_S, "null", scores=scores)

    async def close(self) -> None:
        return None
