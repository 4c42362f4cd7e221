"""Pre-warm the advisors' situation caches (`ala warm`): ask each option-giving advisor about every situation seeded
episodes of an env meet, before any training, so that a run starts with its answers on disk.

Situations are found by rolling out the env with uniformly random actions (seeded): no policy and no planner is
needed, and random walks meet the situations early episodes meet. The questions are the advisor service's own
(`Advisor.choose`): the same prompts, constraints, cache files and breaker.
"""

from __future__ import annotations

import asyncio

import numpy as np

from ala.envs import adapter_for
from protos import Array, PolicySpec, StateDigest
from services.advisor.advisor import Advisor
from services.advisor.prompt import Prompt
from services.advisor.service import build_advisors
from services.advisor.settings import AdvisorSettings


def situation_digests(env_id: str, episodes: int, seed: int) -> tuple[PolicySpec, list[StateDigest]]:
    """One digest per distinct situation met in `episodes` seeded random episodes, and the env's policy spec."""
    adapter = adapter_for(env_id)
    env = adapter.make()
    spec = adapter.policy_spec(env)
    rng = np.random.default_rng(seed)
    found: dict[str, StateDigest] = {}
    for episode in range(episodes):
        observation, _ = env.reset(seed=seed + episode)
        while True:
            situation = adapter.situation(observation)
            if situation is None:
                break
            if situation.key not in found:
                found[situation.key] = StateDigest(
                    run="warm",
                    actor="warm",
                    bot=0,
                    env_step=0,
                    episode=episode,
                    text=adapter.describe(env, observation) or "",
                    observation=Array.from_numpy(observation),
                    action_names=spec.action_names,
                    created_at=0.0,
                    situation_key=situation.key,
                    situation=situation.text,
                )
            observation, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))  # type: ignore[attr-defined]
            if terminated or truncated:
                break
    env.close()
    return spec, list(found.values())


async def warm(settings: AdvisorSettings, env_id: str, episodes: int, seed: int) -> dict[str, int]:
    """Situations answered per advisor (from the backend or already cached)."""
    spec, digests = situation_digests(env_id, episodes, seed)
    prompt = Prompt(settings)
    advisors: list[Advisor] = build_advisors(settings)
    answered: dict[str, int] = {}
    try:
        for advisor in advisors:
            if not digests or not advisor.advises_options(digests[0], spec.option_names):
                continue
            answered[advisor.spec.name] = 0
            for digest in digests:
                try:
                    await advisor.choose(digest, prompt.option_messages(digest, spec.option_names), spec)
                    answered[advisor.spec.name] += 1
                except (TimeoutError, Exception):
                    continue
    finally:
        await asyncio.gather(*(advisor.backend.close() for advisor in advisors))
    return answered
