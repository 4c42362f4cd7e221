"""Advisor backends with real parts: the embedded GGUF model through its grammar, the HTTP backend against that
model's real OpenAI-compatible server, the expert planner on real MiniGrid rooms, and a hung server."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator

import msgspec
import pytest

from ala.envs import adapter_for
from ala.envs.minigrid_expert import plan
from ala.rl.trajectory import full_state_key
from services.advisor import metrics
from services.advisor.advisor import Advisor
from services.advisor.backends import (
    AdversarialBackend,
    BackendError,
    EmbeddedBackend,
    ExpertBackend,
    OpenAIBackend,
    create_backend,
    parse_answer,
)
from services.advisor.breaker import BreakerState, CircuitBreaker
from services.advisor.prompt import Prompt
from services.advisor.settings import AdvisorSettings, advisor_spec
from tests.advisor.conftest import HugeServer, ReasoningServer
from tests.support import ENV_ID, digest_of, digests

ACTIONS = ["left", "right", "forward", "pickup", "drop", "toggle", "done"]


@pytest.fixture(scope="module")
def embedded() -> Iterator[EmbeddedBackend]:
    yield EmbeddedBackend(advisor_spec(name="llm-0", max_tokens=160))


async def test_embedded_model_always_gives_valid_advice(embedded: EmbeddedBackend) -> None:
    prompt = Prompt(AdvisorSettings())
    for digest in digests(10):
        suggestion = await embedded.suggest(digest, prompt.messages(digest))
        assert 0 <= suggestion.action < len(ACTIONS)
        assert 0 <= suggestion.confidence <= 1 and 1 <= suggestion.ttl_s <= 19
        assert suggestion.completion_tokens > 0


async def test_http_backend_against_a_real_openai_compatible_server(embedded: EmbeddedBackend) -> None:
    spec = advisor_spec(
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


async def test_the_expert_plans_through_the_digests_env_adapter_and_says_why_it_cannot() -> None:
    """The planner is the env adapter's (`EnvAdapter.plan_ahead`), found from the digest's env id: a digest that
    names no env, or an env whose adapter has no planner, gets a reason, not a guess."""
    env = adapter_for(ENV_ID).make()
    obs, _ = env.reset(seed=0)
    digest = digest_of(env, obs)
    assert (await ExpertBackend().suggest(digest, [])).action == plan(adapter_for(ENV_ID).full_state(env))
    for unplannable, reason in ((msgspec.structs.replace(digest, env_id=""), "names no env"),
                                (msgspec.structs.replace(digest, env_id="CartPole-v1"), "no planner")):  # fmt: skip
        with pytest.raises(BackendError, match=reason):
            await ExpertBackend().suggest(unplannable, [])


@pytest.mark.parametrize("seed", range(4))
async def test_the_experts_states_ahead_are_the_states_its_plan_meets_in_a_real_room(seed: int) -> None:
    """Each (key, action) ahead must name the exact state the bot is in once it has followed the plan so far, or
    advice would wait in states no bot ever meets."""
    adapter = adapter_for("MiniGrid-DoorKey-8x8-v0")
    expert = ExpertBackend(advisor_spec(name="expert", backend="expert", lookahead=12))
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
    spec = advisor_spec(name="bad", backend="adversarial", wrong_probability=1.0, lookahead=6)
    adversary, expert = AdversarialBackend(spec), ExpertBackend(spec)
    for digest in digests(10, "MiniGrid-DoorKey-8x8-v0"):
        wrong, right = await adversary.suggest(digest, []), await expert.suggest(digest, [])
        assert [key for key, _ in wrong.ahead] == [key for key, _ in right.ahead]
        assert all(bad != good for (_, bad), (_, good) in zip(wrong.ahead, right.ahead, strict=True))


async def test_adversarial_advice_is_never_the_experts_when_always_wrong() -> None:
    adversary = AdversarialBackend(advisor_spec(name="bad", backend="adversarial", wrong_probability=1.0))
    for digest in digests(20, "MiniGrid-DoorKey-8x8-v0"):
        assert digest.full_state is not None
        assert (await adversary.suggest(digest, [])).action != plan(digest.full_state.to_numpy())


async def test_random_advice_is_as_strong_as_the_experts_and_spread_over_every_action() -> None:
    spec = advisor_spec(name="noise", backend="random", seed=3)
    states = digests(70, "MiniGrid-DoorKey-8x8-v0")
    actions = [(await create_backend(spec).suggest(d, [])).action for d in states[:1]]
    backend = create_backend(spec)
    suggestions = [await backend.suggest(digest, []) for digest in states]
    assert [s.action for s in suggestions[:1]] == actions  # seeded
    assert {s.action for s in suggestions} == set(range(7))
    expert = await ExpertBackend().suggest(states[0], [])
    assert {(s.confidence, s.ttl_s) for s in suggestions} == {(expert.confidence, expert.ttl_s)}


def test_plugin_advisors_load_from_entry_points() -> None:
    assert isinstance(create_backend(advisor_spec(name="p", backend="plugin", plugin="expert")), ExpertBackend)
    with pytest.raises(BackendError, match="entry point named 'nope'"):
        create_backend(advisor_spec(name="p", backend="plugin", plugin="nope"))


def test_answers_out_of_bounds_are_parse_failures() -> None:
    assert parse_answer('{"action": 3, "confidence": 0.5, "ttl_s": 4, "rationale": "ok"}', 7).action == 3
    for bad in ('{"action": 7, "confidence": 0.5}', '{"action": 1, "confidence": 2}', "pick up the key", ""):
        with pytest.raises(BackendError, match="parse"):
            parse_answer(bad, 7)


async def test_a_hung_backend_times_out(hung_server: str) -> None:
    backend = OpenAIBackend(advisor_spec(name="hung", backend="openai", base_url=hung_server, timeout_s=0.5))
    start = time.monotonic()
    with pytest.raises(BackendError, match="timeout"):
        await backend.suggest(digests(1)[0], [])
    assert time.monotonic() - start < 2.0
    await backend.close()


async def test_a_non_json_answer_is_a_parse_failure(garbage_server: str) -> None:
    backend = OpenAIBackend(advisor_spec(name="junk", backend="openai", base_url=garbage_server, retries=0))
    with pytest.raises(BackendError, match="parse"):
        await backend.suggest(digests(1)[0], [])
    await backend.close()


async def test_a_huge_reply_is_cut_off_at_the_bound(huge_server: HugeServer) -> None:
    backend = OpenAIBackend(advisor_spec(name="huge", backend="openai", base_url=huge_server.url, retries=0))
    with pytest.raises(BackendError, match="too_large"):
        await backend.suggest(digests(1)[0], [])
    await backend.close()
    await asyncio.wait_for(huge_server.done.wait(), 10)
    assert huge_server.sent < huge_server.size  # the client hung up: most of the body was never sent


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "reasoning_server", [{"field": "reasoning"}, {"field": "reasoning_content"}], indirect=True, ids=["vllm", "older"]
)
async def test_a_reasoning_models_final_answer_is_read_and_its_thinking_counted_apart(
    reasoning_server: ReasoningServer, stream: bool
) -> None:
    spec = advisor_spec(
        name="gpt-oss",
        backend="openai",
        base_url=reasoning_server.url,
        reasoning_effort="low",
        max_reasoning_tokens=512,
        stream=stream,
    )
    backend = OpenAIBackend(spec)
    try:
        suggestion = await backend.suggest(digests(1)[0], [])
    finally:
        await backend.close()
    thinking = len(reasoning_server.reasoning.split())
    assert (suggestion.action, suggestion.confidence) == (2, 0.9)
    assert (suggestion.reasoning_tokens, suggestion.completion_tokens) == (thinking, thinking + 8)
    (request,) = reasoning_server.requests
    assert request["reasoning_effort"] == "low" and request["max_tokens"] == 160 + 512
    assert request.get("stream", False) is stream


@pytest.mark.parametrize("stream", [False, True])
async def test_a_reply_cut_off_while_thinking_is_a_length_failure(
    reasoning_server: ReasoningServer, stream: bool
) -> None:
    """No reasoning budget: the thinking uses up max_tokens and no final answer comes; said as such, not 'parse'."""
    spec = advisor_spec(name="gpt-oss", backend="openai", base_url=reasoning_server.url, max_tokens=16, stream=stream)
    backend = OpenAIBackend(spec)
    with pytest.raises(BackendError, match=r"length.*raise max_reasoning_tokens"):
        await backend.suggest(digests(1)[0], [])
    await backend.close()


@pytest.mark.parametrize("reasoning_server", [{"html": True}], indirect=True)
async def test_a_broken_endpoint_is_left_alone_once_the_breaker_opens(reasoning_server: ReasoningServer) -> None:
    """An endpoint answering HTML: after breaker_failures parse failures no request reaches it until the wait ends."""
    spec = advisor_spec(name="broken", backend="openai", base_url=reasoning_server.url, retries=0, breaker_failures=3)
    advisor = Advisor(spec, OpenAIBackend(spec), cache=None)
    reasons = []
    for digest in digests(20):
        with pytest.raises(BackendError) as failure:
            await advisor.answer(digest, [])
        reasons.append(failure.value.reason)
    await advisor.backend.close()
    assert reasons == ["parse"] * 3 + ["circuit_open"] * 17
    assert len(reasoning_server.requests) == 3
    assert metrics.BREAKER_OPEN.labels("broken")._value.get() == 1


def test_an_open_breaker_probes_once_after_a_growing_jittered_wait() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failures=2, base_s=1.0, max_s=4.0, rng=random.Random(0), clock=lambda: now[0])
    breaker.failure()
    assert breaker.allow()  # one failure: still closed
    breaker.failure()
    assert not breaker.allow() and 0.5 <= breaker.retry_at <= 1.0
    waits = []
    for _ in range(4):  # each failed probe doubles the wait, up to max_s
        now[0] = breaker.retry_at
        assert breaker.allow() and not breaker.allow()  # exactly one probe
        started = now[0]
        breaker.failure()
        waits.append(breaker.retry_at - started)
    assert 1.0 <= waits[0] <= 2.0 and 2.0 <= waits[1] <= 4.0 and all(2.0 <= wait <= 4.0 for wait in waits[2:])
    now[0] = breaker.retry_at
    assert breaker.allow()
    breaker.success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow() and breaker.trips == 0


async def test_the_simulated_advisor_is_the_planner_at_its_precision_after_its_latency() -> None:
    spec = advisor_spec(name="sim", backend="simulated", precision=0.7, latency_s=0.05, max_concurrency=2, seed=3)
    backend = create_backend(spec)
    assert backend.kind == "simulated"
    batch = digests(40)
    started = time.monotonic()
    answers = await asyncio.gather(*(backend.suggest(digest, []) for digest in batch))
    elapsed = time.monotonic() - started
    right = [answer.action == plan(digest.full_state.to_numpy()) for answer, digest in zip(answers, batch, strict=True)]
    assert 0.5 <= sum(right) / len(right) <= 0.9  # 0.7 in expectation; seeded
    assert elapsed >= 40 / 2 * 0.05  # two answers in flight at a time, each after its latency
