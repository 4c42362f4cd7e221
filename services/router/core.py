"""The router's job, without NATS: check advice, turn it into a bounded bias, merge advisors, expire, route.
One idea over 300 lines: every rule between advice and a bias is here, so the bound can be checked in one read.

Guarantee: every element of every bias the router emits is within `[-b_max, b_max]`. Then for any action `a`,
`mu(a) / pi(a) = exp(b_a) / E_pi[exp(b)]` lies within `[exp(-2 b_max), exp(2 b_max)]`: advice can tilt the policy
but never make an action more than `exp(2 b_max)` times more or less likely than the policy alone would.

From advice to bias: per-action `scores` are used as logits; a `recommended_action` with confidence `c` becomes
the logit vector `c * onehot(action)`. The logits are mean-centred, multiplied by the strength (which may anneal),
and clipped. Concurrent advice for the same target from several advisors is merged by a weighted mean with
weight `priority * confidence * advisor_weight * trust`, once at least `quorum` distinct advisors have live advice
there. Trust (`trust.py`, on by default) is each advisor's evidence that its advice helps, in [0, 1], and an
advisor is heard only as far as it has been shown to help, not at all at 0. By default trust acts on *reach*: the
bias keeps its full strength but applies only in a share of bot-episodes equal to the trust (`BiasUpdate.reach`),
so unproven advice shapes a bounded share of the experience, and where it is right those episodes show it quickly.
The alternative (`trust_acts_on="strength"`) scales the bias by the trust in every advised episode.

Targets: advice naming a state (`target.state_key`) is about that state and reaches every bot of the actor that
meets it (the actor's state table); other advice is about a bot (or every bot) and also expires after
`bot_ttl_steps` of the bot's steps and at its episode end. Bounds, merging and the guarantee are the same for both.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, Field

from ala.rejection import Rejected
from protos import SITUATION_KEY_PREFIX, ActionSpace, Advice, Array, BiasUpdate, Heartbeat
from protos.messages import MAX_ADVISORS
from protos.subjects import BROADCAST
from services.router.trust import TrustEstimator

MAX_ACTIONS = 4096
MAX_PRIORITY = 1e6
"""Bounded so that weighted sums of opinions cannot overflow."""


class BiasBounds(BaseModel):
    """How advice becomes a bias: strength, bounds, expiry, merging advisors."""

    settings_group: ClassVar[str] = "bias"

    enabled: bool = Field(True, description="False: advice is counted and dropped, no bias is emitted.")
    strength: float = Field(
        3.0,
        ge=0,
        le=100,
        description="Multiplier from advice logits to bias (before clipping; 3 with b_max 2 makes a confident action"
        " ~e^2.4 times likelier than each other one, before trust).",
    )
    b_max: float = Field(2.0, gt=0, le=20, description="Every bias element is clipped to [-b_max, b_max].")
    default_ttl_s: float = Field(5.0, gt=0, description="TTL for advice that gives none (ttl_s = 0).")
    bot_ttl_steps: int = Field(
        32, ge=0, description="Per-bot advice also expires after this many of the bot's steps (0: time only)."
    )
    state_ttl_steps: int = Field(
        0, ge=0, description="State-scoped advice also expires after this many steps of each bot (0: time only)."
    )
    max_ttl_s: float = Field(60.0, gt=0, description="Longer TTLs are refused.")
    quorum: int = Field(1, ge=1, description="Distinct advisors needed before a merged bias is emitted.")
    advisor_weights: dict[str, float] = Field(
        default_factory=dict, description="Trust per advisor (missing: 1.0); 0 silences an advisor."
    )
    allow_unknown_advisors: bool = Field(True, description="False: only advisors in advisor_weights are accepted.")


class TrustSettings(BaseModel):
    """Evidence-driven trust in each advisor."""

    settings_group: ClassVar[str] = "trust_model"

    trust: bool = Field(True, description="Weigh each advisor by its evidence-driven trust (trust.py).")
    trust_acts_on: Literal["reach", "strength"] = Field(
        "reach",
        description="reach: an advisor's advice applies at full strength in a share of bot-episodes equal to its"
        " trust (BiasUpdate.reach); strength: in every advised episode, with its bias scaled by its trust.",
    )
    trust_initial: float = Field(0.25, ge=0, le=1, description="Trust of an advisor before any evidence.")
    trust_margin: float = Field(
        0.02, ge=0, description="Advised episodes must beat the control group's mean return by more than this."
    )
    trust_min_episodes: int = Field(10, ge=1, description="Episodes of each group before trust moves.")
    trust_probation: float = Field(
        0.05,
        ge=0,
        le=1,
        description="The trust an advisor falls to instead of 0: the share of episodes it keeps reaching, where it can"
        " earn trust back once its advice helps again (0: silenced for good). Actors ask for advice at this trickle"
        " while no advisor is trusted more.",
    )


class StrengthSchedule(BaseModel):
    """Annealing of the bias strength."""

    settings_group: ClassVar[str] = "strength_schedule"

    schedule: Literal["constant", "linear", "exponential"] = Field("constant", description="Annealing of strength.")
    schedule_clock: Literal["learner_version", "seconds"] = Field(
        "learner_version", description="What the schedule advances with: learner updates or wall time."
    )
    schedule_horizon: float = Field(
        1000.0, gt=0, description="Linear: reaches the final factor here; exponential: time constant."
    )
    schedule_final: float = Field(0.0, ge=0, le=1, description="Linear: strength factor at and after the horizon.")


class LiveConfig(BiasBounds, TrustSettings, StrengthSchedule):
    """What the control API can change while the router runs (the same fields have ALA_ROUTER_* variables)."""

    def strength_at(self, clock: float) -> float:
        if self.schedule == "linear":
            fraction = min(1.0, max(0.0, clock / self.schedule_horizon))
            return self.strength * (1.0 - fraction * (1.0 - self.schedule_final))
        if self.schedule == "exponential":
            return self.strength * math.exp(-max(0.0, clock) / self.schedule_horizon)
        return self.strength


class AdviceRejected(Rejected):
    """Advice the router will not turn into a bias; `reason` labels `ala_router_rejected_total`."""


@dataclass
class ActorInfo:
    action_space: ActionSpace
    num_bots: int
    last_seen: float


@dataclass
class Opinion:
    """One advisor's live bias for one target."""

    advice_id: str
    bias: np.ndarray
    weight: float
    expires_at: float
    created_at: float
    trust: float = 1.0
    """The advisor's trust when this was merged in (`weight` includes it; `bias` too when trust acts on strength)."""


Target = tuple[str, int | None, str]
"""(actor or BROADCAST, bot, state key): bot None means every bot; a non-empty key makes it state-scoped."""
MAX_TARGETS = 65_536
"""Targets with opinions kept at once; beyond, expired ones are pruned, then the oldest."""


@dataclass
class Router:
    config: LiveConfig
    actors: dict[str, ActorInfo] = field(default_factory=dict)
    opinions: dict[Target, dict[str, Opinion]] = field(default_factory=dict)
    learner_version: int = 0
    started_at: float = field(default_factory=time.time)
    actor_timeout_s: float = 30.0
    trust: TrustEstimator = field(default_factory=TrustEstimator)

    def trust_of(self, advisor: str) -> float:
        return self.trust.weight(advisor, self.config.trust_initial) if self.config.trust else 1.0

    def update_trust(self, run: str, now: float) -> list[BiasUpdate]:
        """One step of every advisor's trust (`trust.py`, with the live config's rule); the bias updates that carry
        each change to the advice the actors already hold (none while trust is off)."""
        config = self.config
        changed = self.trust.update(
            config.trust_initial, config.trust_margin, config.trust_min_episodes, config.trust_probation
        )
        if not config.trust:
            return []
        return [update for advisor, trust in changed.items() for update in self.retrust(advisor, trust, run, now)]

    def advisor_reach(self) -> dict[str, float]:
        """Each advisor's reach now, the share of bot-episodes its advice applies in (announced in the router's
        heartbeats): its trust where trust acts on reach, else 1. Advisors heard or judged, at most `MAX_ADVISORS`."""
        advisors = set(self.trust.trust) | set(self.trust.advised)
        advisors.update(name for opinions in self.opinions.values() for name in opinions)
        by_reach = self.config.trust_acts_on == "reach"
        return {name: self.trust_of(name) if by_reach else 1.0 for name in sorted(advisors)[:MAX_ADVISORS]}

    def observe_heartbeat(self, heartbeat: Heartbeat, now: float) -> None:
        if heartbeat.service == "actor" and heartbeat.action_space is not None:
            self.actors[heartbeat.instance] = ActorInfo(heartbeat.action_space, heartbeat.num_bots, now)

    def strength(self, now: float) -> float:
        clock = self.learner_version if self.config.schedule_clock == "learner_version" else now - self.started_at
        return self.config.strength_at(clock)

    def check(self, advice: Advice, now: float) -> tuple[ActorInfo, float]:
        """Everything that can be wrong with advice, in the order the reasons are counted; returns the target actor
        and the advice's expiry time."""
        config = self.config
        if not config.enabled:
            raise AdviceRejected("disabled", "the router is disabled")
        if advice.advisor not in config.advisor_weights and not config.allow_unknown_advisors:
            raise AdviceRejected("unknown_advisor", f"advisor {advice.advisor!r} is not configured")
        numbers = [advice.priority, advice.confidence, advice.ttl_s, advice.created_at]
        if not all(math.isfinite(x) for x in numbers):
            raise AdviceRejected("non_finite", "priority, confidence, ttl or time is NaN or infinite")
        if not 0 <= advice.priority <= MAX_PRIORITY or not 0 <= advice.confidence <= 1:
            raise AdviceRejected("range", f"priority must be in [0, {MAX_PRIORITY:g}], confidence in [0, 1]")
        ttl_s = advice.ttl_s or config.default_ttl_s
        if not 0 < ttl_s <= config.max_ttl_s:
            raise AdviceRejected("range", f"ttl {advice.ttl_s}s outside (0, {config.max_ttl_s}]")
        # A creation time in the future (skewed or hostile clock) must not stretch the TTL.
        expires_at = min(advice.created_at, now) + ttl_s
        if expires_at <= now:
            raise AdviceRejected("expired", f"expired {now - expires_at:.3f}s ago")
        actor = self.target_actor(advice.target.actor, now)
        bot = advice.target.bot
        if bot is not None and not 0 <= bot < actor.num_bots:
            raise AdviceRejected("range", f"bot {bot} outside [0, {actor.num_bots})")
        given = [advice.scores, advice.recommended_action, advice.recommended_option]
        if sum(part is not None for part in given) != 1:
            raise AdviceRejected("shape", "give exactly one of scores, recommended_action and recommended_option")
        if advice.recommended_option is not None:
            options = len(actor.action_space.options)
            if not 0 <= advice.recommended_option < options:
                raise AdviceRejected("range", f"recommended option {advice.recommended_option} outside [0, {options})")
            if not advice.target.state_key.startswith(SITUATION_KEY_PREFIX):
                raise AdviceRejected("shape", "option advice names the situation it is about (target.state_key)")
            return actor, expires_at
        if advice.target.state_key.startswith(SITUATION_KEY_PREFIX):
            raise AdviceRejected("shape", "advice about a situation recommends an option")
        n = actor.action_space.n
        if advice.scores is not None:
            if advice.scores.shape != (n,) or advice.scores.dtype not in ("<f4", "<f8"):
                raise AdviceRejected(
                    "shape", f"scores are {advice.scores.dtype}{list(advice.scores.shape)}, need [{n}]"
                )
            if not np.isfinite(advice.scores.to_numpy()).all():
                raise AdviceRejected("non_finite", "scores contain NaN or infinite values")
        elif not 0 <= advice.recommended_action < n:  # type: ignore[operator]
            raise AdviceRejected("range", f"recommended action {advice.recommended_action} outside [0, {n})")
        return actor, expires_at

    def target_actor(self, name: str, now: float) -> ActorInfo:
        """The actor advice is for; for broadcast advice (no actor named), any actor, all sharing one action space.
        An actor silent for `actor_timeout_s` is forgotten."""
        for gone in [a for a, info in self.actors.items() if now - info.last_seen > self.actor_timeout_s]:
            del self.actors[gone]
        if name:
            if name not in self.actors:
                raise AdviceRejected("unknown_actor", f"no recent heartbeat from actor {name!r}")
            return self.actors[name]
        if not self.actors:
            raise AdviceRejected("unknown_actor", "broadcast advice, but no actor has sent a heartbeat recently")
        infos = list(self.actors.values())
        if len({info.action_space.n for info in infos}) > 1:
            raise AdviceRejected("shape", "broadcast advice, but actors have different action spaces")
        return min(infos, key=lambda info: info.num_bots)  # a bot index must exist on every actor

    def bias_of(self, advice: Advice, n_actions: int, now: float) -> np.ndarray:
        """Logits of one (checked) advice → mean-centred, scaled, clipped bias (over options for option advice:
        `n_actions` is then the option count)."""
        if advice.scores is not None:
            logits = advice.scores.to_numpy().astype(np.float64)
            centred = logits - logits.mean()
        else:  # confidence * onehot(action or option), mean-centred
            chosen = advice.recommended_action if advice.recommended_option is None else advice.recommended_option
            centred = np.full(n_actions, -advice.confidence / n_actions)
            centred[chosen] += advice.confidence
        return bound(centred, self.strength(now), self.config.b_max)

    def accept(self, advice: Advice, run: str, now: float) -> BiasUpdate | None:
        """Check, store and merge `advice`; the bias update to send now, or None while below quorum."""
        actor, expires_at = self.check(advice, now)
        key = advice.target.state_key
        target: Target = (advice.target.actor or BROADCAST, None if key else advice.target.bot, key)
        is_option = advice.recommended_option is not None
        width = len(actor.action_space.options) if is_option else actor.action_space.n
        if target not in self.opinions and len(self.opinions) >= MAX_TARGETS:
            self._prune(now)
        trust = self.trust_of(advice.advisor)
        weight = advice.priority * advice.confidence * self.config.advisor_weights.get(advice.advisor, 1.0) * trust
        opinions = self.opinions.setdefault(target, {})
        bias = self.bias_of(advice, width, now)
        if self.config.trust_acts_on == "strength":
            bias *= np.float32(trust)  # |trust * b| <= b_max
        opinions[advice.advisor] = Opinion(advice.advice_id, bias, weight, expires_at, advice.created_at, trust)
        return self.merged(target, run, now)

    def retrust(self, advisor: str, trust: float, run: str, now: float) -> list[BiasUpdate]:
        """Rescale `advisor`'s live opinions to its new trust (drop them at 0) and re-merge every target they are
        in: advice already at the actors must not keep its old strength until it expires (30 s for the expert)."""
        updates = []
        for target, opinions in self.opinions.items():
            opinion = opinions.get(advisor)
            if opinion is None or opinion.expires_at <= now or opinion.trust == trust or opinion.trust == 0:
                continue
            ttl_s = opinion.expires_at - now
            if trust == 0:
                del opinions[advisor]
            else:
                scale = trust / opinion.trust
                if self.config.trust_acts_on == "strength":
                    opinion.bias = (opinion.bias * np.float32(scale)).astype(np.float32)
                opinion.weight *= scale
                opinion.trust = trust
            updates.append(self.merged(target, run, now) or self.cleared(target, run, now, ttl_s, len(opinion.bias)))
        return updates

    @staticmethod
    def cleared(target: Target, run: str, now: float, ttl_s: float, n_actions: int) -> BiasUpdate:
        """A zero bias for `target`: it replaces (a state: removes) what the actors hold there."""
        actor, bot, key = target
        return BiasUpdate(
            run=run,
            actor=actor,
            bots=[] if bot is None else [bot],
            bias=Array.from_numpy(np.zeros(n_actions, dtype=np.float32)),
            ttl_s=ttl_s,
            advice_ids=[],
            created_at=now,
            state_key=key,
            options=key.startswith(SITUATION_KEY_PREFIX),
        )

    def merged(self, target: Target, run: str, now: float) -> BiasUpdate | None:
        opinions = self.opinions.get(target, {})
        for advisor in [a for a, o in opinions.items() if o.expires_at <= now]:
            del opinions[advisor]
        live_advisors = [advisor for advisor, o in opinions.items() if o.weight > 0]
        live = [opinions[advisor] for advisor in live_advisors]
        if not live or len(live) < self.config.quorum:
            return None
        if len(live) == 1:
            bias = live[0].bias
        else:  # a convex combination of bounded biases is bounded: no second clip needed
            total = sum(o.weight for o in live)
            bias = (sum(o.weight * o.bias for o in live) / total).astype(np.float32)
        actor, bot, key = target
        return BiasUpdate(
            run=run,
            actor=actor,
            bots=[] if bot is None else [bot],
            bias=Array.from_numpy(bias),
            ttl_s=min(o.expires_at for o in live) - now,
            advice_ids=[o.advice_id for o in live],
            created_at=now,
            advice_created_at=min(o.created_at for o in live),
            state_key=key,
            ttl_steps=self.config.state_ttl_steps if key else self.config.bot_ttl_steps,
            advisors=live_advisors,
            reach=self.reach(live),
            options=key.startswith(SITUATION_KEY_PREFIX),
        )

    def reach(self, opinions: list[Opinion]) -> float:
        """The share of episodes a merged bias applies in: its most trusted advisor's trust (trust acting on reach),
        else every episode."""
        if self.config.trust_acts_on != "reach":
            return 1.0
        return min(1.0, max(o.trust for o in opinions))

    def _prune(self, now: float) -> None:
        expired = [t for t, opinions in self.opinions.items() if all(o.expires_at <= now for o in opinions.values())]
        for target in expired:
            del self.opinions[target]
        while len(self.opinions) >= MAX_TARGETS:
            del self.opinions[next(iter(self.opinions))]

    def active_targets(self, now: float) -> int:
        return sum(any(o.expires_at > now for o in opinions.values()) for opinions in self.opinions.values())

    def kill(self) -> None:
        self.opinions.clear()
        self.config = self.config.model_copy(update={"enabled": False})


def bound(logits: np.ndarray, strength: float, b_max: float) -> np.ndarray:
    scaled = (strength * logits).astype(np.float32)
    return np.minimum(np.maximum(scaled, np.float32(-b_max), out=scaled), np.float32(b_max), out=scaled)


def clear_all(run: str, actor: str, n_actions: int, ttl_s: float, now: float) -> BiasUpdate:
    """A zero bias for every bot of `actor`, overriding whatever bias it holds for `ttl_s`."""
    return BiasUpdate(
        run=run,
        actor=actor,
        bots=[],
        bias=Array.from_numpy(np.zeros(n_actions, dtype=np.float32)),
        ttl_s=ttl_s,
        advice_ids=[f"kill-{uuid.uuid4().hex[:8]}"],
        created_at=now,
    )
