"""The advisor service: parallel advisors through a real broker, newest-digest-per-bot, and the cache."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import msgspec
import numpy as np
from nats.aio.msg import Msg

from ala.bus import Bus
from ala.config import NatsSettings
from ala.envs.minigrid_expert import plan, plan_ahead
from ala.rl.trajectory import full_state_key
from protos import Advice, AdviceOutcome, EpisodeStats, Heartbeat, StateDigest, decode, encode, subjects
from services.advisor import metrics
from services.advisor.advisor import Advisor
from services.advisor.backends import ExpertBackend
from services.advisor.cache import MAX_DISTANCE_CAP, AdviceCache
from services.advisor.cache_tuning import PerformanceTuner
from services.advisor.service import AdvisorService, serve
from services.advisor.settings import AdvisorSettings, advisor_spec
from tests.support import actor_heartbeat, digests, running, spec, wait_until


def _settings(nats: NatsSettings, **overrides: object) -> AdvisorSettings:
    values: dict[str, object] = {
        "run": "test",
        "instance": "adv1",
        "metrics_host": "127.0.0.1",
        "metrics_port": 0,
        "nats": nats,
        "advisors": [
            advisor_spec(name="expert", backend="expert", priority=2.0),
            advisor_spec(name="liar", backend="adversarial", wrong_probability=1.0),
        ],
    }
    return AdvisorSettings(**(values | overrides))


async def _advice_queue(bus: Bus) -> tuple[asyncio.Queue[Advice], asyncio.Event]:
    """Every advice published in run `test`, in order, and an event set at the first."""
    received: asyncio.Queue[Advice] = asyncio.Queue()
    answered = asyncio.Event()

    async def on_advice(msg: Msg) -> None:
        await received.put(decode(msg.data, Advice))
        answered.set()

    await bus.subscribe(subjects.advice_wildcard("test"), on_advice)
    return received, answered


async def test_every_advisor_answers_each_digest_on_its_own_subject(bus: Bus, nats_settings: NatsSettings) -> None:
    received, answered = await _advice_queue(bus)
    digest = digests(1, "MiniGrid-DoorKey-8x8-v0")[0]
    assert digest.full_state is not None
    async with running(serve, _settings(nats_settings)):
        await _publish_until_answered(bus, digest, answered)
        answers: dict[str, Advice] = {}
        while len(answers) < 2:
            advice = await asyncio.wait_for(received.get(), 10)
            answers.setdefault(advice.advisor, advice)  # the answer about the digest's state comes first
    expert, liar = answers["expert"], answers["liar"]
    assert expert.recommended_action == plan(digest.full_state.to_numpy())
    assert liar.recommended_action != expert.recommended_action
    assert expert.priority == 2.0 and (expert.target.actor, expert.target.bot) == ("a1", 0)


async def test_the_null_advisor_answers_every_digest_with_equal_scores(bus: Bus, nats_settings: NatsSettings) -> None:
    """Advice the router turns into an exactly zero bias (mean-centred equal scores), at full confidence so that it
    is merged and sent; it reads only the observation, so digests without text or full state are answered too."""
    received, answered = await _advice_queue(bus)
    digest = msgspec.structs.replace(digests(1)[0], text="", full_state=None, full_state_key="")
    async with running(serve, _settings(nats_settings, advisors=[advisor_spec(name="null", backend="null")])):
        await _publish_until_answered(bus, digest, answered)
        advice = await asyncio.wait_for(received.get(), 10)
    assert advice.advisor == "null" and advice.recommended_action is None and advice.confidence == 1.0
    assert advice.scores is not None
    np.testing.assert_array_equal(advice.scores.to_numpy(), np.zeros(len(digest.action_names), np.float32))
    assert (advice.target.actor, advice.target.state_key) == ("a1", digest.state_key)


async def test_a_planner_also_advises_the_exact_states_its_plan_meets_next(
    bus: Bus, nats_settings: NatsSettings
) -> None:
    received, answered = await _advice_queue(bus)
    digest = digests(1, "MiniGrid-DoorKey-8x8-v0")[0]
    assert digest.full_state is not None
    settings = _settings(nats_settings, advisors=[advisor_spec(name="expert", backend="expert", lookahead=5)])
    async with running(serve, settings):
        await _publish_until_answered(bus, digest, answered)
        pieces = [await asyncio.wait_for(received.get(), 10) for _ in range(6)]
    path = plan_ahead(digest.full_state.to_numpy(), 6)
    assert [advice.target.state_key for advice in pieces] == [full_state_key(state) for state, _ in path]
    assert pieces[0].target.state_key == digest.full_state_key
    assert [advice.recommended_action for advice in pieces] == [action for _, action in path]
    assert {(advice.target.actor, advice.target.bot) for advice in pieces} == {("a1", 0)}


async def test_only_the_newest_digest_per_bot_waits_in_each_advisors_queue(nats_settings: NatsSettings) -> None:
    settings = _settings(nats_settings, max_pending=2)
    advisors = [Advisor(advisor_spec(name=name, backend="expert"), ExpertBackend(), None, 2) for name in ("a", "b")]
    service = AdvisorService(settings, bus=None, advisors=advisors)  # type: ignore[arg-type]  # no publishing here
    dropped = metrics.DIGESTS_DROPPED.labels("a")._value.get()
    states = digests(4)
    for bot, digest in [(0, states[0]), (0, states[1]), (1, states[2]), (2, states[3])]:
        moved = msgspec.structs.replace(digest, bot=bot)
        await service.on_digest(Msg(_client=None, subject="s", data=encode(moved)))  # type: ignore[arg-type]
    for advisor in advisors:  # bot 0's old state replaced, then evicted
        assert list(advisor.waiting) == [("a1", 1), ("a1", 2)]
    assert metrics.DIGESTS_DROPPED.labels("a")._value.get() - dropped == 2
    assert (await advisors[0].next_digest()).bot == 1 and list(advisors[1].waiting) == [("a1", 1), ("a1", 2)]


async def test_cache_returns_identical_advice_for_identical_states_and_counts_hits() -> None:
    cache = AdviceCache(capacity=100, max_distance=0, target_agreement=0.98, audit_rate=0.0)
    advisor = Advisor(advisor_spec(name="cached", backend="expert"), ExpertBackend(), cache)
    hits = metrics.CACHE_HITS.labels("cached")._value.get()
    digest = digests(1)[0]
    first = await advisor.answer(digest, [])
    again = await advisor.answer(digest, [])
    assert again == first
    assert metrics.CACHE_HITS.labels("cached")._value.get() - hits == 1
    assert cache.hits == 1 and cache.misses == 1


def test_near_states_reuse_advice_and_the_threshold_adapts() -> None:
    from services.advisor.backends import Suggestion

    cache = AdviceCache(capacity=10, max_distance=2, target_agreement=0.9, audit_rate=0.0)
    state = digests(1)[0].observation.to_numpy().copy()
    cache.store(state, Suggestion(3, 1.0, 2.0))
    near = state.copy()
    near[:2] += 1
    assert cache.lookup(near).suggestion == Suggestion(3, 1.0, 2.0)
    far = state.copy()
    far[:3] += 1
    assert cache.lookup(far).suggestion is None
    cache.record_audit(Suggestion(3, 1.0, 2.0), Suggestion(2, 1.0, 2.0))  # a near hit that disagreed
    assert cache.max_distance == 1


async def test_a_hung_backend_is_timed_out_and_counted_while_others_answer(
    bus: Bus, nats_settings: NatsSettings, hung_server: str
) -> None:
    received, answered = await _advice_queue(bus)
    timeouts = metrics.BACKEND_FAILURES.labels("hung", "timeout")._value.get()
    hung = advisor_spec(name="hung", backend="openai", base_url=hung_server, timeout_s=0.3, retries=0)
    settings = _settings(nats_settings, advisors=[hung, advisor_spec(name="expert", backend="expert")])
    async with running(serve, settings):
        await _publish_until_answered(bus, digests(1)[0], answered)
        await wait_until(lambda: metrics.BACKEND_FAILURES.labels("hung", "timeout")._value.get() > timeouts)
    assert (await received.get()).advisor == "expert"  # a dead advisor only means its advice is missing


async def test_each_advisor_keeps_its_own_pace_beside_a_hung_one(
    bus: Bus, nats_settings: NatsSettings, hung_server: str
) -> None:
    """A hung LLM holds only its own workers: the expert answers every bot's digest meanwhile."""
    answered_bots: set[int] = set()
    first = asyncio.Event()

    async def on_advice(msg: Msg) -> None:
        advice = decode(msg.data, Advice)
        assert advice.advisor == "expert" and advice.target.state_key  # state-scoped by default
        answered_bots.add(advice.target.bot or 0)
        first.set()

    await bus.subscribe(subjects.advice_subject("test", "expert"), on_advice)
    hung = advisor_spec(name="hung", backend="openai", base_url=hung_server, timeout_s=60.0, retries=0)
    settings = _settings(nats_settings, advisors=[hung, advisor_spec(name="expert", backend="expert")], workers=1)
    states = digests(10)
    async with running(serve, settings):
        await _publish_until_answered(bus, msgspec.structs.replace(states[0], state_key="k0"), first)
        for bot, digest in enumerate(states):
            keyed = msgspec.structs.replace(digest, bot=bot, state_key=f"k{bot}")
            await bus.publish(subjects.digest_subject("test", "a1"), keyed, kind="digest")
        await wait_until(lambda: len(answered_bots) == 10)  # long before the hung one's 60-s timeout


async def test_undecodable_heartbeats_are_counted_and_dropped(bus: Bus, nats_settings: NatsSettings) -> None:
    heartbeats = metrics.UNDECODABLE.labels("heartbeat")
    before = heartbeats._value.get()
    _, answered = await _advice_queue(bus)
    digest = digests(1)[0]
    async with running(serve, _settings(nats_settings)):
        # Answered: the heartbeat subscription, made before the digests', is in place.
        await _publish_until_answered(bus, digest, answered)
        await bus.publish_bytes(subjects.heartbeat_subject("test", "actor", "a1"), b"\xc1", kind="heartbeat")
        await wait_until(lambda: heartbeats._value.get() > before)
    assert heartbeats._value.get() == before + 1


async def _publish_until_answered(bus: Bus, digest: StateDigest, answered: asyncio.Event) -> None:
    """Digests are fire-and-forget: repeat one until the (just started) advisor has subscribed and answered."""
    for _ in range(200):
        await bus.publish(subjects.digest_subject("test", "a1"), digest, kind="digest")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(answered.wait(), 0.1)
            return
    raise AssertionError("the advisor never answered")


def test_advice_names_the_state_its_advisor_read_unless_the_advisor_speaks_per_bot() -> None:
    from services.advisor.advice import advice_key, to_advice
    from services.advisor.backends import ExpertBackend, RandomBackend, Suggestion

    digest = msgspec.structs.replace(
        digests(1)[0], bot=3, state_key="0123456789abcdef", full_state_key="full:fedcba9876543210"
    )
    expert, coach, noise = (
        advisor_spec(name="expert", backend="expert"),
        advisor_spec(name="coach", backend="expert", scope="bot", ttl_s=4.0),
        advisor_spec(name="noise", backend="random"),
    )
    # The expert plans on the full state: its advice is about that exact state, not every state that looks alike.
    assert advice_key(expert, ExpertBackend(expert), digest) == "full:fedcba9876543210"
    # A backend that reads the observation (or the text made from it) advises on what the policy sees.
    assert advice_key(noise, RandomBackend(noise), digest) == "0123456789abcdef"
    # Without a full state in the digest, even the expert's advice can only name the observation.
    no_full = msgspec.structs.replace(digest, full_state_key="")
    assert advice_key(expert, ExpertBackend(expert), no_full) == "0123456789abcdef"
    assert advice_key(coach, ExpertBackend(coach), digest) == ""

    suggestion = Suggestion(2, 1.0, 30.0)
    about_state = to_advice(expert, digest, suggestion, "full:fedcba9876543210")
    assert (about_state.target.bot, about_state.target.state_key, about_state.ttl_s) == (
        3,
        "full:fedcba9876543210",
        30.0,
    )
    per_bot = to_advice(coach, digest, suggestion, "")
    assert (per_bot.target.bot, per_bot.target.state_key, per_bot.ttl_s) == (3, "", 4.0)


async def test_llm_advisors_answer_each_situation_once_with_an_option_and_remember_it(
    bus: Bus, nats_settings: NatsSettings, tmp_path: Path
) -> None:
    """Option advice from the embedded LLM (an option per situation, constrained to the option names), asked once
    per situation however many digests show it, and kept on disk: a second advisor process asks nothing."""
    received, _ = await _advice_queue(bus)
    policy = spec()
    heartbeat = actor_heartbeat(created_at=time.time(), policy=policy, options=policy.option_names)
    digest = digests(1)[0]
    settings = _settings(
        nats_settings,
        advisors=[advisor_spec(name="llm-0", backend="embedded", advice="options")],  # never per step: calls count
        situation_cache_dir=tmp_path,
    )
    calls = metrics.LLM_SECONDS.labels("llm-0")
    for run in range(2):
        before = calls._sum.get(), metrics.SITUATION_CACHE.labels("llm-0", "hit")._value.get()
        async with running(serve, settings):
            advice = await _option_advice(bus, heartbeat, digest, received)
            for _ in range(5):  # the same situation again: answered from the cache
                again = await _option_advice(bus, heartbeat, digest, received)
                assert again.recommended_option == advice.recommended_option
        assert advice.recommended_action is None and advice.recommended_option is not None
        assert 0 <= advice.recommended_option < len(policy.option_names)
        assert (advice.target.actor, advice.target.state_key) == ("a1", digest.situation_key)
        hits = metrics.SITUATION_CACHE.labels("llm-0", "hit")._value.get() - before[1]
        assert hits >= 5 + (1 if run else 0)  # the second run: every answer from the file
        if run:
            assert calls._sum.get() == before[0]  # no LLM call at all
    assert len(await asyncio.to_thread(lambda: list(tmp_path.glob("llm-0-*.json")))) == 1


async def _option_advice(
    bus: Bus, heartbeat: Heartbeat, digest: StateDigest, received: asyncio.Queue[Advice]
) -> Advice:
    """Announce the actor (its options) and repeat the digest until the advisor answers it with an option. A just
    started advisor that has not heard the heartbeat can only advise actions, and such an answer may still arrive
    late; and a newer digest from the same bot supersedes an older one in the advisor's queue, so one copy may go
    unanswered."""
    for _ in range(400):
        await bus.publish(subjects.heartbeat_subject("test", "actor", "a1"), heartbeat, kind="heartbeat")
        await bus.publish(subjects.digest_subject("test", "a1"), digest, kind="digest")
        with contextlib.suppress(TimeoutError):
            advice = await asyncio.wait_for(received.get(), 0.1)
            if advice.recommended_option is not None:
                while not received.empty():  # answers to the repeats, all from the cache
                    received.get_nowait()
                return advice
    raise AssertionError("the advisor never answered with an option")


async def test_warming_asks_the_llm_about_every_situation_once_and_a_run_then_finds_them_on_disk(
    tmp_path: Path,
) -> None:
    from services.advisor.warm import situation_digests, warm

    settings = AdvisorSettings(advisors=[advisor_spec(name="llm-0", backend="embedded")], situation_cache_dir=tmp_path)
    _, found = situation_digests("MiniGrid-DoorKey-5x5-v0", episodes=2, seed=0)
    assert len({digest.situation_key for digest in found}) == len(found) >= 3
    calls = metrics.LLM_SECONDS.labels("llm-0")
    before = calls._sum.get()
    assert await warm(settings, "MiniGrid-DoorKey-5x5-v0", episodes=2, seed=0) == {"llm-0": len(found)}
    asked = calls._sum.get()
    assert asked > before
    assert await warm(settings, "MiniGrid-DoorKey-5x5-v0", episodes=2, seed=0) == {"llm-0": len(found)}
    assert calls._sum.get() == asked  # the second time, every answer came from the file


def _window(tuner: PerformanceTuner, advised_return: float, control_return: float = 0.0) -> int | None:
    """One window's outcomes: 10 advised and 10 control episodes at these mean returns."""
    return tuner.observe(
        EpisodeStats(episodes=10, return_sum=10 * advised_return),
        EpisodeStats(episodes=10, return_sum=10 * control_return),
    )


def test_the_cache_tuned_by_performance_reuses_more_while_learning_is_kept_and_less_when_it_is_not() -> None:
    cache = AdviceCache(capacity=10, max_distance=0, target_agreement=0.9, audit_rate=0.0, adapt_to_agreement=False)
    tuner = PerformanceTuner(cache, window_episodes=10, tolerance=0.05)
    assert tuner.observe(EpisodeStats(episodes=9, return_sum=9.0), EpisodeStats(episodes=10)) is None  # not a window
    assert tuner.observe(EpisodeStats(episodes=1, return_sum=0.5), EpisodeStats()) == 1  # lift 0.95 at threshold 0
    assert _window(tuner, 0.9) == 1 and cache.max_distance == 2  # lift 0.9: within 0.05 of the best below
    assert _window(tuner, 0.5) == -1 and cache.max_distance == 1  # the advice lost its worth at 2: reuse less
    assert _window(tuner, 0.93) == 1 and cache.max_distance == 2  # 1 kept it (mean lift 0.915, best below 0.95)
    # The policy's own progress lifts both groups alike: only the advised episodes' margin counts.
    assert _window(tuner, 0.95, control_return=0.9) == -1 and cache.max_distance == 1
    from services.advisor.backends import Suggestion

    cache.record_audit(Suggestion(3, 1.0, 2.0), Suggestion(2, 1.0, 2.0))  # disagreement no longer moves it
    assert cache.max_distance == 1
    assert tuner.observe(EpisodeStats(episodes=10, return_sum=float("nan")), EpisodeStats(episodes=10)) is None
    flat = PerformanceTuner(AdviceCache(10, 0, 0.9, 0.0, adapt_to_agreement=False), window_episodes=10, tolerance=0.05)
    for _ in range(20):  # advice worth nothing anywhere: every threshold keeps it, and reuse climbs to the cap
        _window(flat, 0.4, control_return=0.4)
    assert flat.cache.max_distance == MAX_DISTANCE_CAP


async def test_the_advisor_tunes_its_cache_from_the_actors_outcome_reports(
    bus: Bus, nats_settings: NatsSettings
) -> None:
    settings = _settings(
        nats_settings,
        advisors=[advisor_spec(name="llm-0")],
        cache=True,
        cache_max_distance=0,
        cache_tuning="performance",
        cache_tuning_window=4,
    )
    up, undecodable = metrics.CACHE_TUNING_WINDOWS.labels("llm-0", "up"), metrics.UNDECODABLE.labels("outcome")
    before, garbage_before = up._value.get(), undecodable._value.get()
    report = AdviceOutcome(
        run="test",
        actor="a1",
        control=EpisodeStats(episodes=4, return_sum=1.0),
        advised={"llm-0": EpisodeStats(episodes=4, return_sum=3.0)},
        created_at=time.time(),
    )
    async with running(serve, settings):
        # Outcome reports are core messages: repeat one until the (just started) advisor has subscribed and moved.
        for _ in range(200):
            await bus.publish(subjects.outcome_subject("test", "a1"), report, kind="outcome")
            with contextlib.suppress(TimeoutError):
                await wait_until(lambda: up._value.get() > before, timeout_s=0.1)
                break
        await bus.publish_bytes(subjects.outcome_subject("test", "a1"), b"\xc1", kind="outcome")
        await wait_until(lambda: undecodable._value.get() > garbage_before)
    assert up._value.get() > before
    assert metrics.CACHE_THRESHOLD.labels("llm-0")._value.get() >= 1


def test_the_situation_cache_can_be_turned_off_to_measure_what_it_saves(nats_settings: NatsSettings) -> None:
    from services.advisor.service import build_advisors

    advisors = [advisor_spec(name="r", backend="random"), advisor_spec(name="expert", backend="expert")]
    on = build_advisors(_settings(nats_settings, advisors=advisors))
    off = build_advisors(_settings(nats_settings, advisors=advisors, situation_cache=False))
    assert on[0].situations is not None and on[1].situations is None  # a planner's answer is about the exact state
    assert off[0].situations is None


async def test_a_simulated_llm_behind_the_cache_is_asked_once_and_its_plan_ahead_is_not_reused() -> None:
    from services.advisor.backends.planners import SimulatedBackend

    spec_ = advisor_spec(name="sim", backend="simulated", precision=1.0, latency_s=0.0)
    cache = AdviceCache(capacity=10, max_distance=0, target_agreement=0.98, audit_rate=0.0)
    advisor = Advisor(spec_, SimulatedBackend(spec_), cache)  # type: ignore[arg-type]
    digest = digests(1)[0]
    fresh = await advisor.answer(digest, [])
    again = await advisor.answer(digest, [])
    assert fresh.ahead and again.ahead == ()  # the states ahead were the first asker's
    assert again.action == fresh.action and advisor.backend_calls == 1 and cache.hits == 1
