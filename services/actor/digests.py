"""What an actor tells advisors about one bot: its `StateDigest`, built from the env, the adapter and the rollout."""

from __future__ import annotations

import time

from ala.envs import EnvAdapter
from ala.rl.rollout import Rollout
from ala.rl.trajectory import full_state_key
from protos import Array, PolicySpec, StateDigest


def make_digest(
    run: str,
    actor: str,
    adapter: EnvAdapter,
    rollout: Rollout,
    spec: PolicySpec,
    bot: int,
    state_key: str,
    with_full_state: bool,
) -> StateDigest:
    """The bot's state as text for LLMs, its observation, its abstract situation where the adapter declares options
    (option advice is about situations), and the privileged full state where the actor shares it."""
    env = rollout.env(bot)
    observation = rollout.obs[bot]
    full_state = adapter.full_state(env) if with_full_state else None
    situation = adapter.situation(observation)
    return StateDigest(
        run=run,
        actor=actor,
        bot=bot,
        env_step=rollout.env_steps,
        episode=int(rollout.episodes_started[bot]),
        text=adapter.describe(env, observation) or "",
        full_state=Array.from_numpy(full_state) if full_state is not None else None,
        full_state_key=full_state_key(full_state) if full_state is not None else "",
        observation=Array.from_numpy(observation),
        action_names=spec.action_names,
        created_at=time.time(),
        state_key=state_key,
        situation_key=situation.key if situation is not None else "",
        situation=situation.text if situation is not None else "",
        env_id=spec.env_id,
    )


def digest_contents(adapter: EnvAdapter, rollout: Rollout, with_full_state: bool) -> set[str]:
    """What this actor's digests carry: the observation always, text and the full state where the env has them."""
    contents = {"observation"} | ({"text"} if adapter.has_text else set())
    if with_full_state and adapter.full_state(rollout.env(0)) is not None:
        contents.add("full_state")
    return contents
