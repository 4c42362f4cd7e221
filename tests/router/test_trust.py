"""Evidence-driven trust: rises only while advised episodes beat the control group, decays to zero otherwise."""

from __future__ import annotations

import numpy as np

from protos import Advice, AdviceOutcome, AdviceTarget, EpisodeStats
from services.router.core import LiveConfig, Router
from services.router.trust import TrustEstimator


def _stats(returns: np.ndarray) -> EpisodeStats:
    return EpisodeStats(episodes=len(returns), return_sum=float(returns.sum()), return_sq_sum=float((returns**2).sum()))


def _outcome(rng: np.random.Generator, control_mean: float, advised_means: dict[str, float]) -> AdviceOutcome:
    def returns(mean: float, n: int) -> np.ndarray:
        return (rng.random(n) < mean).astype(float)  # success (1) or failure (0)

    return AdviceOutcome(
        run="test",
        actor="a1",
        control=_stats(returns(control_mean, 5)),
        advised={advisor: _stats(returns(mean, 45)) for advisor, mean in advised_means.items()},
        created_at=0.0,
    )


def test_helpful_advice_earns_trust_and_harmful_or_useless_advice_loses_it_for_good() -> None:
    rng = np.random.default_rng(0)
    trust = TrustEstimator()
    for _ in range(40):
        trust.observe(_outcome(rng, 0.3, {"expert": 0.8, "liar": 0.05, "noise": 0.3}))
        trust.update(initial=0.5, margin=0.05, min_episodes=20)
    assert trust.trust["expert"] == 1.0
    assert trust.trust["liar"] == 0.0 and trust.trust["noise"] == 0.0
    assert trust.advantage["expert"] > 0.3 and trust.advantage["liar"] < -0.1


def test_trust_holds_without_enough_episodes_and_decays_while_nobody_succeeds() -> None:
    rng = np.random.default_rng(1)
    trust = TrustEstimator()
    trust.observe(_outcome(rng, 0.3, {"liar": 0.0}))
    assert trust.update(initial=0.5, margin=0.02, min_episodes=1000) == {}
    assert trust.weight("liar", initial=0.5) == 0.5  # too few episodes
    zeros = TrustEstimator()  # advice that never beats the control decays, even when nobody succeeds
    for _ in range(20):
        zeros.observe(_outcome(rng, 0.0, {"liar": 0.0}))
        zeros.update(initial=0.5, margin=0.02, min_episodes=1)
    assert (
        zeros.weight("liar", initial=0.5) == 0.0
    )  # advice that never beats the control decays, even when nobody succeeds


def _router(**config: object) -> Router:
    from tests.support import actor_heartbeat

    router = Router(LiveConfig(strength=1.0, b_max=5.0, trust_initial=0.5, **config))
    router.observe_heartbeat(actor_heartbeat(n_actions=7, created_at=0.0), 0.0)
    return router


def _advice(advisor: str, key: str, ttl_s: float = 5) -> Advice:
    target = AdviceTarget(actor="a1", bot=0, state_key=key)
    return Advice(
        advice_id=advisor, advisor=advisor, priority=1, target=target, ttl_s=ttl_s, created_at=0.0, recommended_action=3
    )


def test_trust_sets_the_share_of_episodes_an_advisors_full_strength_bias_reaches() -> None:
    router = _router()
    router.trust.trust["silenced"] = 0.0
    half = router.accept(_advice("new", "k1"), "test", 0.0)
    assert half is not None and half.bias.to_numpy()[3] == np.float32(6 / 7) and half.reach == 0.5
    assert half.advisors == ["new"]
    assert router.accept(_advice("silenced", "k2"), "test", 0.0) is None  # trust 0: not heard at all
    router.trust.trust["proven"] = 1.0
    both = router.accept(_advice("proven", "k1"), "test", 0.0)
    assert both is not None and both.reach == 1.0  # a merged bias reaches as far as its most trusted advisor


def test_trust_acting_on_strength_scales_the_bias_in_every_episode() -> None:
    update = _router(trust_acts_on="strength").accept(_advice("new", "k1"), "test", 0.0)
    assert update is not None and update.bias.to_numpy()[3] == np.float32(0.5 * 6 / 7) and update.reach == 1.0


def test_a_trust_change_reaches_advice_the_actors_already_hold_and_zero_clears_it() -> None:
    router = _router()
    held = router.accept(_advice("expert", "k1", ttl_s=30), "test", 0.0)
    assert held is not None and held.reach == 0.5
    (wider,) = router.retrust("expert", 1.0, "test", 10.0)
    assert wider.state_key == "k1" and wider.reach == 1.0 and wider.bias.to_numpy()[3] == np.float32(6 / 7)
    assert wider.ttl_s == 20.0
    (cleared,) = router.retrust("expert", 0.0, "test", 11.0)
    assert cleared.state_key == "k1" and not cleared.bias.to_numpy().any() and cleared.ttl_s == 19.0
    assert router.retrust("expert", 0.5, "test", 12.0) == []  # nothing of it is held any more
    scaled = _router(trust_acts_on="strength")
    scaled.accept(_advice("expert", "k1", ttl_s=30), "test", 0.0)
    (stronger,) = scaled.retrust("expert", 1.0, "test", 10.0)
    assert stronger.bias.to_numpy()[3] == np.float32(6 / 7) and stronger.reach == 1.0


def test_the_trust_rule_follows_the_live_config() -> None:
    router = Router(LiveConfig(trust_initial=0.5))
    assert router.trust_of("new") == 0.5
    router.config = router.config.model_copy(update={"trust_initial": 0.1})  # as PUT /config does
    assert router.trust_of("new") == 0.1
    router.config = router.config.model_copy(update={"trust": False})
    assert router.trust_of("new") == 1.0


def test_an_advisor_on_probation_keeps_a_small_reach_and_earns_trust_back_when_its_advice_helps_again() -> None:
    rng = np.random.default_rng(3)
    trust = TrustEstimator()

    def steps(n: int, control: float, advised: float, probation: float) -> None:
        for _ in range(n):
            trust.observe(_outcome(rng, control, {"expert": advised}))
            trust.update(initial=0.25, margin=0.02, min_episodes=20, probation=probation)

    steps(40, control=0.9, advised=0.9, probation=0.05)  # the policy has caught up: advice adds nothing
    assert trust.trust["expert"] == 0.05  # on probation, not silenced
    steps(40, control=0.1, advised=0.8, probation=0.05)  # the policy regressed; the advice helps again
    assert trust.trust["expert"] == 1.0
    trust = TrustEstimator()  # without probation, silenced for good
    steps(40, control=0.9, advised=0.9, probation=0.0)
    assert trust.trust["expert"] == 0.0
    steps(40, control=0.1, advised=0.8, probation=0.0)
    assert trust.trust["expert"] == 0.0


def test_the_router_announces_each_advisors_reach_for_the_actors() -> None:
    router = Router(LiveConfig())
    router.trust.trust |= {"expert": 1.0, "llm": 0.05}
    assert router.advisor_reach() == {"expert": 1.0, "llm": 0.05}
    router.config = router.config.model_copy(update={"trust_acts_on": "strength"})
    assert router.advisor_reach() == {"expert": 1.0, "llm": 1.0}
