"""Helpers that ALA's tests and benchmarks share (one module; no test imports another test module). It lives with
the tests, not in the installed package: benchmarks run from the checkout (`python -m benchmarks.<name>`).

- Services in a test: `running(serve, settings)` runs a service's `serve` in this event loop and stops it cleanly;
  `wait_until` polls state that has no event of its own (a metric); `free_port`; `broker_settings`.
- Messages: `sample_messages` (one realistic instance of every type), `actor_heartbeat`.
- RL: small real rollouts on MiniGrid DoorKey-5x5 (`ENV_ID`): `spec`, `fresh_agent`, `rollout`,
  `biased_trajectory`, `ppo_settings`; `digests` / `digest_of` as an actor would publish them.
- `ChunkReader`: trajectory chunks as the learner would see them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import gymnasium as gym
import msgspec
import nats.errors
import numpy as np
import torch
from nats.js import JetStreamContext
from prometheus_client.parser import text_string_to_metric_families

from ala.broker import free_port as free_port  # re-exported: tests and benchmarks take it from here
from ala.bus import Bus
from ala.config import BrokerSettings
from ala.envs import adapter_for
from ala.rl.config import PPOSettings
from ala.rl.policy import Agent
from ala.rl.rollout import Rollout
from ala.rl.trajectory import Trajectory, full_state_key, observation_key
from protos import (
    ActionSpace,
    Advice,
    AdviceOutcome,
    AdviceTarget,
    Array,
    BiasUpdate,
    DigestRequest,
    EpisodeStats,
    Evaluation,
    Heartbeat,
    ImplicitReward,
    MessageBase,
    OnnxExport,
    PolicySpec,
    Preference,
    PreferenceQuery,
    StateDigest,
    TrajectoryChunk,
    WeightsAnnouncement,
    decode,
    subjects,
)

# Services in a test.


@asynccontextmanager
async def running(serve: Callable[[Any, asyncio.Event], Awaitable[None]], settings: Any) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    try:
        yield
        assert not task.done(), task.exception()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Poll a condition with a deadline (for state that has no event of its own, such as a metric)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.01)


def broker_settings(store_dir: Path, auth: bool = False) -> BrokerSettings:
    """An embedded broker on free ports with JetStream under `store_dir`; open to anyone unless `auth` (then the
    services' passwords are under `store_dir/secrets`)."""
    return BrokerSettings(port=-1, monitor_port=-1, store_dir=store_dir, ready_timeout_s=20, auth=auth)


class ChunkReader:
    """Chunks as the learner would see them: an ephemeral consumer from the first stored chunk of `run`."""

    def __init__(self, bus: Bus, run: str = "test") -> None:
        self.bus = bus
        self.run = run
        self.consumer: JetStreamContext.PullSubscription | None = None

    async def __aenter__(self) -> ChunkReader:
        self.consumer = await self.bus.js.pull_subscribe(
            subjects.trajectory_wildcard(self.run), stream=subjects.TRAJECTORIES.name
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.consumer is not None
        await self.consumer.unsubscribe()

    async def next(self, timeout_s: float = 20.0) -> TrajectoryChunk:
        """The next stored chunk; raises TimeoutError when none comes within `timeout_s`."""
        assert self.consumer is not None
        try:
            [msg] = await self.consumer.fetch(1, timeout=timeout_s)
        except nats.errors.TimeoutError as exc:
            raise TimeoutError(f"no chunk within {timeout_s}s") from exc
        await msg.ack()
        return decode(msg.data, TrajectoryChunk)


async def store_weights(bus: Bus, version: int, data: bytes, run: str = "test", **fields: Any) -> WeightsAnnouncement:
    """Put `data` in the weights bucket as a learner does; the announcement that names it (`fields` override or add
    to it, e.g. a wrong sha256 or `settled_stream_seq`). Publishing it is the caller's part."""
    store = await bus.js.object_store(subjects.WEIGHTS_BUCKET)
    name = subjects.weights_object_name(run, version)
    await store.put(name, data)
    announcement = WeightsAnnouncement(
        run=run,
        version=version,
        bucket=subjects.WEIGHTS_BUCKET,
        name=name,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        created_at=time.time(),
    )
    return msgspec.structs.replace(announcement, **fields)


# Messages.

N_ACTIONS = 7
ACTION_NAMES = ["left", "right", "forward", "pickup", "drop", "toggle", "done"]
SAMPLE_POLICY = PolicySpec(
    env_id="MiniGrid-DoorKey-5x5-v0",
    family="minigrid",
    obs_dim=147,
    n_actions=N_ACTIONS,
    onehot_classes=11,
    action_names=ACTION_NAMES,
)


def sample_messages(seed: int = 0, steps: int = 16, bots: int = 4) -> list[MessageBase]:
    rng = np.random.default_rng(seed)
    obs_shape = (7, 7, 3)

    def floats(*shape: int) -> Array:
        return Array.from_numpy(rng.standard_normal(shape).astype(np.float32))

    def flags() -> Array:
        return Array.from_numpy(rng.random((steps, bots)) < 0.1)

    def digest_at(bot: int, observation: Array) -> StateDigest:
        return StateDigest(
            run="test",
            actor="actor-0",
            bot=bot,
            env_step=1234,
            episode=17,
            text="You carry a yellow key. Mission: use the key to open the door and get to the goal.",
            observation=observation,
            action_names=ACTION_NAMES,
            created_at=1.7e9,
        )

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
            policy=SAMPLE_POLICY,
            onnx=OnnxExport(
                name="test/8.onnx",
                sha256="cd" * 32,
                size=234_567,
                opset=17,
                probe_logits=floats(16, N_ACTIONS),
                probe_values=floats(16),
            ),
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
        PreferenceQuery(
            run="test",
            actor="actor-0",
            query=7,
            first=digest_at(2, floats(*obs_shape)),
            second=digest_at(5, floats(*obs_shape)),
            created_at=1.7e9,
        ),
        Preference(
            run="test",
            actor="actor-0",
            query=7,
            first=floats(*obs_shape),
            second=floats(*obs_shape),
            preferred=1,
            source="expert",
            created_at=1.7e9,
        ),
        Evaluation(
            run="test",
            policy_version=120,
            env_steps=61_440,
            episodes=32,
            mean_return=0.91,
            success_rate=1.0,
            greedy_return=0.93,
            greedy_success_rate=1.0,
            seconds=0.4,
            created_at=1.7e9,
        ),
        AdviceOutcome(
            run="test",
            actor="orin-1",
            control=EpisodeStats(episodes=3, return_sum=0.5, return_sq_sum=0.2),
            advised={"expert": EpisodeStats(episodes=30, return_sum=24.0, return_sq_sum=19.6)},
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
            policy=SAMPLE_POLICY,
        ),
    ]


def actor_heartbeat(
    run: str = "test",
    instance: str = "a1",
    n_actions: int = N_ACTIONS,
    num_bots: int = 4,
    created_at: float = 0.0,
    policy: PolicySpec | None = None,
    options: list[str] | None = None,
) -> Heartbeat:
    """What an actor announces: the router learns actors and their action spaces from these, the learner and the
    advisor the policy spec."""
    return Heartbeat(
        run=run,
        service="actor",
        instance=instance,
        software_version="test",
        seq=1,
        started_at=created_at,
        created_at=created_at,
        action_space=ActionSpace(n=n_actions, names=[], options=options or []),
        num_bots=num_bots,
        policy=policy,
    )


# RL: small real rollouts on MiniGrid DoorKey-5x5.

ENV_ID = "MiniGrid-DoorKey-5x5-v0"


def spec(env_id: str = ENV_ID) -> PolicySpec:
    return adapter_for(env_id).probe_spec()


def ppo_settings(**overrides: Any) -> PPOSettings:
    return PPOSettings(**({"seed": 3} | overrides))


def rollout(agent: Agent, bots: int = 4, steps: int = 16, seed: int = 0, **env_kwargs: Any) -> Rollout:
    return Rollout(adapter_for(agent.spec.env_id).make_vector(bots, **env_kwargs), agent, steps, seed)


def biased_trajectory(agent: Agent, seed: int = 0, scale: float = 2.0) -> Trajectory:
    """A trajectory sampled with a random bias on every step."""
    rng = np.random.default_rng(seed)
    source = rollout(agent, seed=seed)
    return source.collect(
        lambda: rng.uniform(-scale, scale, (source.num_bots, agent.spec.n_actions)).astype(np.float32)
    )


def fresh_agent(seed: int = 3, env_id: str = ENV_ID) -> Agent:
    torch.manual_seed(seed)
    return Agent(spec(env_id))


def digest_of(env: gym.Env, obs: np.ndarray, bot: int = 0, env_id: str = ENV_ID) -> StateDigest:
    """The digest an actor publishes for one bot of `env_id` (text and full state from its adapter)."""
    adapter = adapter_for(env_id)
    full_state = adapter.full_state(env)
    situation = adapter.situation(obs)
    return StateDigest(
        run="test",
        actor="a1",
        bot=bot,
        env_step=0,
        episode=0,
        text=adapter.describe(env, obs) or "",
        observation=Array.from_numpy(obs),
        action_names=adapter.action_names(int(env.action_space.n)),  # type: ignore[attr-defined]
        created_at=time.time(),
        full_state=Array.from_numpy(full_state) if full_state is not None else None,
        state_key=observation_key(obs),
        full_state_key=full_state_key(full_state) if full_state is not None else "",
        situation_key=situation.key if situation is not None else "",
        situation=situation.text if situation is not None else "",
        env_id=env_id,
    )


def digests(count: int, env_id: str = ENV_ID) -> list[StateDigest]:
    """Digests of `count` fresh episodes (seeds 0..count-1)."""
    env = adapter_for(env_id).make()
    return [digest_of(env, env.reset(seed=seed)[0], env_id=env_id) for seed in range(count)]


# Fault injection: an environment that fails, for supervision tests (no real env fails on demand).


class CrashingCartPole(gym.Wrapper):  # type: ignore[type-arg]
    """CartPole that raises after `ALA_TEST_CRASH_AFTER_STEPS` steps (default 50), first appending the time of the
    crash to the file named by `ALA_TEST_CRASH_FILE` (if set). Make it with `gym.make("tests.support:Crashing-v0")`."""

    def __init__(self) -> None:
        super().__init__(gym.make("CartPole-v1"))
        self.steps_left = int(os.environ.get("ALA_TEST_CRASH_AFTER_STEPS", "50"))

    def step(self, action: Any) -> Any:
        self.steps_left -= 1
        if self.steps_left < 0:
            crash_file = os.environ.get("ALA_TEST_CRASH_FILE")
            if crash_file:
                with open(crash_file, "a") as out:
                    out.write(f"{time.time()}\n")
            raise RuntimeError("injected environment failure")
        return super().step(action)


if "Crashing-v0" not in gym.registry:
    gym.register("Crashing-v0", entry_point=CrashingCartPole, max_episode_steps=500, reward_threshold=475.0)


def scrape(port: int) -> dict[str, float]:
    """A service's /metrics on this host as `{name + str(sorted(labels)): value}` (an unlabelled sample is
    `name[]`); {} while nothing answers. For tests and benchmarks that watch separate processes."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {
        sample.name + str(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
