"""Advisor backends with real parts: the embedded GGUF model through its grammar, the HTTP backend against that
model's real OpenAI-compatible server, the expert planner on real MiniGrid rooms, and a hung server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from ala.envs import adapter_for
from ala.envs.minigrid_expert import plan
from ala.rl.trajectory import full_state_key
from ala.testing import digest_of, digests
from services.advisor.backends import (
    AdversarialBackend,
    BackendError,
    EmbeddedBackend,
    ExpertBackend,
    OpenAIBackend,
    create_backend,
    parse_answer,
)
from services.advisor.service import Prompt
from services.advisor.settings import AdvisorSettings, AdvisorSpec
from tests.advisor.conftest import HugeServer

ACTIONS = ["left", "right", "forward", "pickup", "drop", "toggle", "done"]


@pytest.fixture(scope="module")
def embedded() -> Iterator[EmbeddedBackend]:
    yield EmbeddedBackend(AdvisorSpec(name="llm-0", max_tokens=160))


async def test_embedded_model_always_gives_valid_advice(embedded: EmbeddedBackend) -> None:
    prompt = Prompt(AdvisorSettings())
    for digest in digests(10):
        suggestion = await embedded.suggest(digest, prompt.messages(digest))
        assert 0 <= suggestion.action < len(ACTIONS)
        assert 0 <= suggestion.confidence <= 1 and 1 <= suggestion.ttl_s <= 19
        assert suggestion.completion_tokens > 0


async def test_http_backend_against_a_real_openai_compatible_server(embedded: EmbeddedBackend) -> None:
    spec = AdvisorSpec(
        name="http", backend="openai", base_url=embedded.url, model="smollm2", timeout_s=60, temperature=0.0
    )
    backend = OpenAIBackend(spec)
    prompt = Prompt(AdvisorSettings())
    try:
        for digest in digests(3):
            body = backend.request(digest, prompt.messages(digest))
            assert body["structured_outputs"]["json"]["properties"]["action"]["maximum"] == 6  # vLLM's extra body
            assert body["response_format"]["type"] == "json_schema"
            suggestion = await backend.suggest(digest, prompt.messages(digest))
            assert 0 <= suggestion.action < len(ACTIONS) and 0 <= suggestion.confidence <= 1
            assert suggestion.completion_tokens > 0
    finally:
        await backend.close()


@pytest.mark.parametrize("env_id", ["MiniGrid-DoorKey-5x5-v0", "MiniGrid-DoorKey-8x8-v0"])
async def test_expert_advice_followed_greedily_solves_doorkey(env_id: str) -> None:
    expert = ExpertBackend()
    env = adapter_for(env_id).make()
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        for _ in range(100):
            suggestion = await expert.suggest(digest_of(env, obs), [])
            obs, reward, terminated, truncated, _ = env.step(suggestion.action)
            if terminated or truncated:
                break
        assert terminated and reward > 0.9, (env_id, seed)


@pytest.mark.parametrize("seed", range(4))
async def test_the_experts_states_ahead_are_the_states_its_plan_meets_in_a_real_room(seed: int) -> None:
    """Each (key, action) ahead must name the exact state the bot is in once it has followed the plan so far, or
    advice would wait in states no bot ever meets."""
    adapter = adapter_for("MiniGrid-DoorKey-8x8-v0")
    expert = ExpertBackend(AdvisorSpec(name="expert", backend="expert", lookahead=12))
    env = adapter.make()
    obs, _ = env.reset(seed=seed)
    for _ in range(seed * 3):  # start somewhere along the way too
        obs, *_ = env.step(2)
    suggestion = await expert.suggest(digest_of(env, obs, env_id="MiniGrid-DoorKey-8x8-v0"), [])
    assert len(suggestion.ahead) == 12
    assert suggestion.action == plan(adapter.full_state(env))
    obs, *_ = env.step(suggestion.action)
    for key, action in suggestion.ahead:
        assert key == full_state_key(adapter.full_state(env))
        assert action == plan(adapter.full_state(env))
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            break


async def test_adversarial_advice_ahead_is_wrong_too() -> None:
    spec = AdvisorSpec(name="bad", backend="adversarial", wrong_probability=1.0, lookahead=6)
    adversary, expert = AdversarialBackend(spec), ExpertBackend(spec)
    for digest in digests(10, "MiniGrid-DoorKey-8x8-v0"):
        wrong, right = await adversary.suggest(digest, []), await expert.suggest(digest, [])
        assert [key for key, _ in wrong.ahead] == [key for key, _ in right.ahead]
        assert all(bad != good for (_, bad), (_, good) in zip(wrong.ahead, right.ahead, strict=True))


async def test_adversarial_advice_is_never_the_experts_when_always_wrong() -> None:
    adversary = AdversarialBackend(AdvisorSpec(name="bad", backend="adversarial", wrong_probability=1.0))
    for digest in digests(20, "MiniGrid-DoorKey-8x8-v0"):
        assert digest.full_state is not None
        assert (await adversary.suggest(digest, [])).action != plan(digest.full_state.to_numpy())


async def test_random_advice_is_as_strong_as_the_experts_and_spread_over_every_action() -> None:
    spec = AdvisorSpec(name="noise", backend="random", seed=3)
    states = digests(70, "MiniGrid-DoorKey-8x8-v0")
    actions = [(await create_backend(spec).suggest(d, [])).action for d in states[:1]]
    backend = create_backend(spec)
    suggestions = [await backend.suggest(digest, []) for digest in states]
    assert [s.action for s in suggestions[:1]] == actions  # seeded
    assert {s.action for s in suggestions} == set(range(7))
    expert = await ExpertBackend().suggest(states[0], [])
    assert {(s.confidence, s.ttl_s) for s in suggestions} == {(expert.confidence, expert.ttl_s)}


def test_plugin_advisors_load_from_entry_points() -> None:
    assert isinstance(create_backend(AdvisorSpec(name="p", backend="plugin", plugin="expert")), ExpertBackend)
    with pytest.raises(BackendError, match="entry point named 'nope'"):
        create_backend(AdvisorSpec(name="p", backend="plugin", plugin="nope"))


def test_answers_out_of_bounds_are_parse_failures() -> None:
    assert parse_answer('{"action": 3, "confidence": 0.5, "ttl_s": 4, "rationale": "ok"}', 7).action == 3
    for bad in ('{"action": 7, "confidence": 0.5}', '{"action": 1, "confidence": 2}', "pick up the key", ""):
        with pytest.raises(BackendError, match="parse"):
            parse_answer(bad, 7)


async def test_a_hung_backend_times_out(hung_server: str) -> None:
    backend = OpenAIBackend(AdvisorSpec(name="hung", backend="openai", base_url=hung_server, timeout_s=0.5))
    start = time.monotonic()
    with pytest.raises(BackendError, match="timeout"):
        await backend.suggest(digests(1)[0], [])
    assert time.monotonic() - start < 2.0
    await backend.close()


async def test_a_non_json_answer_is_a_parse_failure(garbage_server: str) -> None:
    backend = OpenAIBackend(AdvisorSpec(name="junk", backend="openai", base_url=garbage_server, retries=0))
    with pytest.raises(BackendError, match="parse"):
        await backend.suggest(digests(1)[0], [])
    await backend.close()


async def test_a_huge_reply_is_cut_off_at_the_bound(huge_server: HugeServer) -> None:
    backend = OpenAIBackend(AdvisorSpec(name="huge", backend="openai", base_url=huge_server.url, retries=0))
    with pytest.raises(BackendError, match="too_large"):
        await backend.suggest(digests(1)[0], [])
    await backend.close()
    await asyncio.wait_for(huge_server.done.wait(), 10)
    assert huge_server.sent < huge_server.size  # the client hung up: most of the body was never sent
