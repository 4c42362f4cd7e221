"""Evidence-driven trust: rises only while advised episodes beat the control group, decays to zero otherwise."""

from __future__ import annotations

import numpy as np

from protos import AdviceOutcome, EpisodeStats
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


def test_the_router_scales_an_advisors_bias_by_its_trust() -> None:
    from ala.testing import actor_heartbeat
    from protos import Advice, AdviceTarget

    router = Router(LiveConfig(strength=1.0, b_max=5.0, trust_initial=0.5))
    router.observe_heartbeat(actor_heartbeat(n_actions=7, created_at=0.0), 0.0)

    def advice(advisor: str) -> Advice:
        target = AdviceTarget(actor="a1", bot=0, state_key=advisor)
        return Advice(
            advice_id=advisor, advisor=advisor, priority=1, target=target, ttl_s=5, created_at=0.0, recommended_action=3
        )

    router.trust.trust["silenced"] = 0.0
    half = router.accept(advice("new"), "test", 0.0)
    assert half is not None and half.bias.to_numpy()[3] == np.float32(0.5 * 6 / 7)
    assert half.advisors == ["new"]
    assert router.accept(advice("silenced"), "test", 0.0) is None  # trust 0: not heard at all


def test_a_trust_change_rescales_advice_the_actors_already_hold_and_zero_clears_it() -> None:
    from ala.testing import actor_heartbeat
    from protos import Advice, AdviceTarget

    router = Router(LiveConfig(strength=1.0, b_max=5.0, trust_initial=0.5))
    router.observe_heartbeat(actor_heartbeat(n_actions=7, created_at=0.0), 0.0)
    target = AdviceTarget(actor="a1", bot=0, state_key="k1")
    advice = Advice(
        advice_id="x", advisor="expert", priority=1, target=target, ttl_s=30, created_at=0.0, recommended_action=3
    )
    held = router.accept(advice, "test", 0.0)
    assert held is not None and held.bias.to_numpy()[3] == np.float32(0.5 * 6 / 7)
    (stronger,) = router.retrust("expert", 1.0, "test", 10.0)
    assert stronger.state_key == "k1" and stronger.bias.to_numpy()[3] == np.float32(6 / 7)
    assert stronger.ttl_s == 20.0
    (cleared,) = router.retrust("expert", 0.0, "test", 11.0)
    assert cleared.state_key == "k1" and not cleared.bias.to_numpy().any() and cleared.ttl_s == 19.0
    assert router.retrust("expert", 0.5, "test", 12.0) == []  # nothing of it is held any more


def test_the_trust_rule_follows_the_live_config() -> None:
    router = Router(LiveConfig(trust_initial=0.5))
    assert router.trust_of("new") == 0.5
    router.config = router.config.model_copy(update={"trust_initial": 0.1})  # as PUT /config does
    assert router.trust_of("new") == 0.1
    router.config = router.config.model_copy(update={"trust": False})
    assert router.trust_of("new") == 1.0
