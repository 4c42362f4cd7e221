"""One realistic instance of every message type, for round-trip and contract tests."""

from __future__ import annotations

import numpy as np

from protos import (
    ActionSpace,
    Advice,
    AdviceTarget,
    Array,
    BiasUpdate,
    DigestRequest,
    Heartbeat,
    ImplicitReward,
    MessageBase,
    StateDigest,
    TrajectoryChunk,
    WeightsAnnouncement,
)

N_ACTIONS = 7
ACTION_NAMES = ["left", "right", "forward", "pickup", "drop", "toggle", "done"]


def sample_messages(seed: int = 0, steps: int = 16, bots: int = 4) -> list[MessageBase]:
    rng = np.random.default_rng(seed)
    obs_shape = (7, 7, 3)

    def floats(*shape: int) -> Array:
        return Array.from_numpy(rng.standard_normal(shape).astype(np.float32))

    def flags() -> Array:
        return Array.from_numpy(rng.random((steps, bots)) < 0.1)

    return [
        StateDigest(
            run="test",
            actor="actor-0",
            bot=3,
            env_step=1234,
            episode=17,
            text="You see a yellow key 2 steps ahead. Mission: use the key to open the door and get to the goal.",
            observation=floats(*obs_shape),
            action_names=ACTION_NAMES,
            created_at=1.7e9,
            state_key="3,2,0|key",
        ),
        DigestRequest(run="test", actor="actor-0", bots=[1, 3], requested_by="llm-0", created_at=1.7e9),
        Advice(
            advice_id="adv-1",
            advisor="llm-0",
            priority=2.0,
            target=AdviceTarget(actor="actor-0", bot=3),
            ttl_s=5.0,
            created_at=1.7e9,
            scores=floats(N_ACTIONS),
            confidence=0.8,
            rationale="Pick up the key first.",
        ),
        Advice(
            advice_id="adv-2",
            advisor="expert",
            priority=1.0,
            target=AdviceTarget(state_key="3,2,0|key"),
            ttl_s=2.5,
            created_at=1.7e9,
            recommended_action=3,
        ),
        BiasUpdate(
            run="test",
            actor="actor-0",
            bots=[0, 3],
            bias=floats(N_ACTIONS),
            ttl_s=4.9,
            advice_ids=["adv-1", "adv-2"],
            created_at=1.7e9 + 0.01,
            advice_created_at=1.7e9,
        ),
        TrajectoryChunk(
            run="test",
            actor="actor-0",
            chunk_seq=42,
            policy_version=7,
            bot_ids=Array.from_numpy(np.arange(bots, dtype=np.int32)),
            observations=floats(steps, bots, *obs_shape),
            actions=Array.from_numpy(rng.integers(0, N_ACTIONS, (steps, bots))),
            rewards=floats(steps, bots),
            terminated=flags(),
            truncated=flags(),
            behaviour_logprob=floats(steps, bots),
            policy_logprob=floats(steps, bots),
            bias=floats(steps, bots, N_ACTIONS),
            values=floats(steps, bots),
            bootstrap_value=floats(bots),
            final_values=floats(steps, bots),
            created_at=1.7e9,
        ),
        WeightsAnnouncement(
            run="test",
            version=8,
            bucket="ala_weights",
            name="test/8",
            sha256="ab" * 32,
            size=123_456,
            created_at=1.7e9,
        ),
        ImplicitReward(
            run="test",
            actor="actor-0",
            bot=1,
            state_key="0123456789abcdef",
            observation=floats(*obs_shape),
            action=3,
            reward=0.025,
            source="critical-state-review",
            created_at=1.7e9,
        ),
        Heartbeat(
            run="test",
            service="actor",
            instance="orin-1",
            software_version="0.1.0",
            seq=5,
            started_at=1.7e9,
            created_at=1.7e9 + 10,
            host="orin-1",
            action_space=ActionSpace(n=N_ACTIONS, names=ACTION_NAMES),
            num_bots=bots,
        ),
    ]


def actor_heartbeat(
    run: str = "test", instance: str = "a1", n_actions: int = N_ACTIONS, num_bots: int = 4, created_at: float = 0.0
) -> Heartbeat:
    """What an actor announces: the router learns actors and their action spaces from these."""
    return Heartbeat(
        run=run,
        service="actor",
        instance=instance,
        software_version="test",
        seq=1,
        started_at=created_at,
        created_at=created_at,
        action_space=ActionSpace(n=n_actions, names=[]),
        num_bots=num_bots,
    )
