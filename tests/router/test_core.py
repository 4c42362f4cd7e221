"""The router's rules without NATS: bounds, logits, merging, quorum, expiry, rejection reasons, annealing."""

from __future__ import annotations

import math
import time

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ala.envs.minigrid_options import OPTIONS
from protos import Advice, AdviceOutcome, AdviceTarget, Array, BiasUpdate, EpisodeStats, decode, encode
from services.actor.bias import BiasTable
from services.advisor.advice import to_advice
from services.advisor.backends import create_backend
from services.advisor.settings import advisor_spec
from services.router.core import AdviceRejected, LiveConfig, Router
from tests.support import actor_heartbeat, digests

NOW = 1_000.0
N = 7


def _router(**config: object) -> Router:
    """Trust off unless asked for: these tests are about the rules applied to one piece of advice."""
    router = Router(LiveConfig(**({"trust": False} | config)))  # type: ignore[arg-type]
    router.observe_heartbeat(actor_heartbeat(n_actions=N, created_at=NOW), NOW)
    return router


def _advice(
    advisor: str = "llm-0",
    scores: list[float] | None = None,
    action: int | None = None,
    confidence: float = 1.0,
    priority: float = 1.0,
    ttl_s: float = 5.0,
    created_at: float = NOW,
    actor: str = "a1",
    bot: int | None = 2,
) -> Advice:
    return Advice(
        advice_id=f"{advisor}-{action}-{scores}",
        advisor=advisor,
        priority=priority,
        target=AdviceTarget(actor=actor, bot=bot),
        ttl_s=ttl_s,
        created_at=created_at,
        scores=None if scores is None else Array.from_numpy(np.array(scores, dtype=np.float32)),
        recommended_action=action,
        confidence=confidence,
    )


def test_recommended_action_becomes_a_mean_centred_bias() -> None:
    update = _router(strength=1.0, b_max=5.0).accept(_advice(action=3, confidence=0.7), "test", NOW)
    assert update is not None
    bias = update.bias.to_numpy()
    expected = np.full(N, -0.1)
    expected[3] = 0.6
    np.testing.assert_allclose(bias, expected, atol=1e-6)
    assert (update.actor, update.bots, update.ttl_s) == ("a1", [2], pytest.approx(5.0))


def test_scores_are_centred_scaled_and_clipped() -> None:
    scores = [10.0, 0.0, 0.0, 0.0, 0.0, 0.0, -4.0]
    update = _router(strength=2.0, b_max=3.0).accept(_advice(scores=scores), "test", NOW)
    assert update is not None
    centred = np.array(scores) - np.mean(scores)
    np.testing.assert_allclose(update.bias.to_numpy(), np.clip(2.0 * centred, -3, 3), atol=1e-5)


@settings(max_examples=200, deadline=None)
@given(
    scores=st.lists(st.floats(-1e6, 1e6), min_size=N, max_size=N),
    logits=st.lists(st.floats(-20, 20), min_size=N, max_size=N),
    strength=st.floats(0, 100),
    b_max=st.floats(0.01, 5),
)
def test_bias_is_bounded_and_so_is_the_behaviour_to_policy_ratio(
    scores: list[float], logits: list[float], strength: float, b_max: float
) -> None:
    update = _router(strength=strength, b_max=b_max).accept(_advice(scores=scores), "test", NOW)
    assert update is not None
    bias = update.bias.to_numpy().astype(np.float64)
    assert np.abs(bias).max() <= b_max + 1e-6
    policy = np.exp(np.array(logits) - np.logaddexp.reduce(logits))
    behaviour = np.exp(np.array(logits) + bias - np.logaddexp.reduce(np.array(logits) + bias))
    ratio = behaviour / policy
    assert ratio.max() <= math.exp(2 * b_max) * (1 + 1e-6)
    assert ratio.min() >= math.exp(-2 * b_max) * (1 - 1e-6)


def test_two_advisors_merge_by_priority_confidence_and_trust() -> None:
    router = _router(strength=1.0, b_max=5.0, advisor_weights={"slow-llm": 0.5})
    router.accept(_advice("fast", action=1, priority=1.0, confidence=1.0), "test", NOW)
    update = router.accept(_advice("slow-llm", action=4, priority=2.0, confidence=0.5), "test", NOW)
    assert update is not None
    fast = np.full(N, -1 / N)
    fast[1] += 1.0
    slow = np.full(N, -0.5 / N)
    slow[4] += 0.5
    weights = np.array([1.0, 2.0 * 0.5 * 0.5])
    np.testing.assert_allclose(
        update.bias.to_numpy(), (weights[0] * fast + weights[1] * slow) / weights.sum(), atol=1e-6
    )
    assert sorted(update.advice_ids) == sorted(o.advice_id for o in router.opinions[("a1", 2, "")].values())


def test_quorum_waits_for_enough_distinct_advisors() -> None:
    router = _router(quorum=2)
    assert router.accept(_advice("a", action=1), "test", NOW) is None
    assert router.accept(_advice("a", action=2), "test", NOW) is None  # the same advisor again
    assert router.accept(_advice("b", action=1), "test", NOW) is not None


def test_expired_opinions_drop_out_of_the_merge_and_ttl_is_the_shortest_left() -> None:
    router = _router()
    router.accept(_advice("a", action=1, ttl_s=1.0), "test", NOW)
    update = router.accept(_advice("b", action=1, ttl_s=10.0), "test", NOW + 0.5)
    assert update is not None and update.ttl_s == pytest.approx(0.5)
    later = router.accept(_advice("b", action=2, ttl_s=10.0, created_at=NOW + 2), "test", NOW + 2)
    assert later is not None and len(later.advice_ids) == 1 and later.ttl_s == pytest.approx(10.0)


def test_a_zero_trust_advisor_is_silenced() -> None:
    router = _router(advisor_weights={"adversary": 0.0})
    assert router.accept(_advice("adversary", action=1), "test", NOW) is None


def test_an_actor_without_recent_heartbeats_is_forgotten() -> None:
    router = _router()
    with pytest.raises(AdviceRejected, match="unknown_actor"):
        router.accept(_advice(action=1, created_at=NOW + 31), "test", NOW + 31)


def test_broadcast_advice_targets_every_actor() -> None:
    update = _router().accept(_advice(actor="", bot=None, action=0), "test", NOW)
    assert update is not None and update.actor == "all" and update.bots == []


@pytest.mark.parametrize(
    ("advice", "config", "reason"),
    [
        (_advice(scores=[1.0] * N, priority=math.nan), {}, "non_finite"),
        (_advice(scores=[math.nan] + [0.0] * (N - 1)), {}, "non_finite"),
        (_advice(scores=[1.0, 2.0]), {}, "shape"),
        (_advice(), {}, "shape"),  # neither scores nor an action
        (_advice(action=N), {}, "range"),
        (_advice(action=1, confidence=1.5), {}, "range"),
        (_advice(action=1, ttl_s=3600), {}, "range"),
        (_advice(action=1, bot=4), {}, "range"),
        (_advice(action=1, created_at=NOW - 10), {}, "expired"),
        (_advice(action=1, actor="ghost"), {}, "unknown_actor"),
        (_advice("stranger", action=1), {"allow_unknown_advisors": False}, "unknown_advisor"),
        (_advice(action=1), {"enabled": False}, "disabled"),
    ],
)
def test_bad_advice_is_rejected_with_its_reason(advice: Advice, config: dict[str, object], reason: str) -> None:
    router = _router(**config)
    with pytest.raises(AdviceRejected) as rejected:
        router.accept(advice, "test", NOW)
    assert rejected.value.reason == reason
    assert not router.opinions


def test_strength_schedules() -> None:
    constant = LiveConfig(strength=2.0)
    linear = LiveConfig(strength=2.0, schedule="linear", schedule_horizon=100, schedule_final=0.25)
    exponential = LiveConfig(strength=2.0, schedule="exponential", schedule_horizon=100)
    assert constant.strength_at(1e9) == 2.0
    assert linear.strength_at(0) == 2.0 and linear.strength_at(50) == pytest.approx(1.25)
    assert linear.strength_at(500) == pytest.approx(0.5)
    assert exponential.strength_at(100) == pytest.approx(2.0 / math.e)


def test_annealing_follows_the_learner_version() -> None:
    router = _router(strength=1.0, b_max=5.0, schedule="linear", schedule_horizon=10, schedule_final=0.0)
    router.learner_version = 5
    update = router.accept(_advice(action=0), "test", NOW)
    assert update is not None
    assert update.bias.to_numpy()[0] == pytest.approx(0.5 * (1 - 1 / N), abs=1e-6)


def test_kill_forgets_every_opinion_and_disables() -> None:
    router = _router()
    router.accept(_advice(action=1), "test", NOW)
    router.kill()
    assert not router.opinions and not router.config.enabled


def test_a_creation_time_in_the_future_cannot_stretch_the_ttl() -> None:
    update = _router().accept(_advice(action=1, ttl_s=5.0, created_at=NOW + 86_400), "test", NOW)
    assert update is not None and update.ttl_s == pytest.approx(5.0)


def test_priority_is_bounded_so_merges_cannot_overflow() -> None:
    with pytest.raises(AdviceRejected, match="range"):
        _router().accept(_advice(action=1, priority=1e308), "test", NOW)


def test_state_scoped_advice_targets_the_state_and_merges_across_the_bots_that_asked() -> None:
    router = _router(state_ttl_steps=500, bot_ttl_steps=16)
    about_state = msgspec.structs.replace(
        _advice("a", action=1, bot=2), target=AdviceTarget(actor="a1", bot=2, state_key="k1")
    )
    update = router.accept(about_state, "test", NOW)
    assert update is not None and (update.state_key, update.bots, update.ttl_steps) == ("k1", [], 500)
    # Another advisor answering another bot's digest of the same state merges into the same target.
    same_state = msgspec.structs.replace(
        _advice("b", action=1, bot=0), target=AdviceTarget(actor="a1", bot=0, state_key="k1")
    )
    merged = router.accept(same_state, "test", NOW)
    assert merged is not None and len(merged.advice_ids) == 2 and merged.state_key == "k1"
    per_bot = router.accept(_advice("a", action=1, bot=2), "test", NOW)
    assert per_bot is not None and (per_bot.state_key, per_bot.bots, per_bot.ttl_steps) == ("", [2], 16)


async def test_null_advice_becomes_a_zero_bias_that_is_sent_and_held_as_advice_until_trust_silences_it() -> None:
    """The null advisor, advisor to actor's table without NATS: equal scores become an exactly zero bias that the
    router still merges and sends under trust, naming its advisor, which the actor holds as advice in force. Trust
    treats it like any advisor: it cannot beat the control group, decays (to 0 with probation off), and the clearing
    update removes it."""
    now = time.time()
    spec = advisor_spec(name="null", backend="null")
    digest = digests(1)[0]
    suggestion = await create_backend(spec).suggest(digest, [])
    advice = decode(encode(to_advice(spec, digest, suggestion, digest.state_key)), Advice)
    assert advice.recommended_action is None and advice.scores is not None
    router = Router(LiveConfig(trust_probation=0.0))  # trust on, as deployed, but silencing for good
    router.observe_heartbeat(actor_heartbeat(n_actions=len(digest.action_names), created_at=now), now)
    update = router.accept(advice, "test", now)
    assert update is not None and update.advisors == ["null"] and update.reach == 0.25
    np.testing.assert_array_equal(update.bias.to_numpy(), np.zeros(len(digest.action_names), np.float32))
    table = BiasTable(num_bots=2, n_actions=len(digest.action_names), max_abs_bias=2.0)
    table.apply(decode(encode(update), BiasUpdate), now=0.0)
    lookup = table.lookup(0.1, keys=[digest.state_key, "elsewhere"])
    assert lookup.in_force.tolist() == [True, False] and not lookup.bias.any()

    no_better = EpisodeStats(episodes=10, return_sum=0.0, return_sq_sum=0.0)
    while router.trust_of("null") > 0:
        router.trust.observe(
            AdviceOutcome(run="test", actor="a1", control=no_better, advised={"null": no_better}, created_at=now)
        )
        for retrusted in router.update_trust("test", now + 1):
            table.apply(decode(encode(retrusted), BiasUpdate), now=0.2)
    assert not table.lookup(0.3, keys=[digest.state_key, "elsewhere"]).in_force.any()


def test_option_advice_becomes_a_bounded_bias_over_the_actors_options_for_its_situation() -> None:
    router = Router(LiveConfig(trust=False))
    router.observe_heartbeat(actor_heartbeat(n_actions=N, created_at=NOW, options=list(OPTIONS)), NOW)
    situation = "sit:0123456789abcdef"
    option = msgspec.structs.replace(_advice(bot=None), target=AdviceTarget(actor="a1", state_key=situation))
    option = msgspec.structs.replace(option, recommended_action=None, recommended_option=2, confidence=0.5)
    update = router.accept(option, "test", NOW)
    assert update is not None and update.options and update.state_key == situation
    bias = update.bias.to_numpy()
    assert bias.shape == (len(OPTIONS),) and bias.argmax() == 2 and np.abs(bias).max() <= router.config.b_max
    assert abs(float(bias.sum())) < 1e-5  # mean-centred like any advice
    for bad, reason in [
        (msgspec.structs.replace(option, recommended_option=len(OPTIONS)), "range"),
        (msgspec.structs.replace(option, target=AdviceTarget(actor="a1", state_key="0123456789abcdef")), "shape"),
        (msgspec.structs.replace(option, recommended_action=1), "shape"),
        (msgspec.structs.replace(option, recommended_option=None, recommended_action=1), "shape"),  # sit: key
    ]:
        with pytest.raises(AdviceRejected) as rejected:
            router.accept(bad, "test", NOW)
        assert rejected.value.reason == reason
