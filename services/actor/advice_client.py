"""The actor's advice client: everything between the bots and the advice, and nothing of the step loop.

- Bias updates (own subject and broadcast) land in the bias tables from a callback; the rollout worker reads them
  between steps (`before_step`) and never waits for the advisor or router. State-scoped advice reaches every bot
  whose observation has the advised key (`bias.py`); option advice runs through skills (`options.py`).
- After each step, digests ask about states with no advice yet, at a bounded rate (`asking.py`, `digests.py`), and
  finished episodes go to the outcome ledger, reported to the router's trust (`outcomes.py`).
- The router's heartbeats tighten the bounds and say each advisor's reach; advisors' heartbeats say what they read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

import numpy as np
from nats.aio.msg import Msg

from ala.bus import Bus
from ala.envs import EnvAdapter
from ala.ratelimit import RateLimitedLog
from ala.rl.rollout import Episode, Rollout
from ala.rl.worker import StepAdvice
from protos import BiasUpdate, DigestRequest, Heartbeat, WireError, decode, subjects
from services.actor import metrics
from services.actor.advisors import AdvisorsHeard
from services.actor.asking import Asker, Reason
from services.actor.bias import BiasLookup, BiasRejected, BiasTable
from services.actor.digests import digest_contents, make_digest
from services.actor.options import OptionExecutor
from services.actor.outcomes import OutcomeLedger
from services.actor.preferences import PreferenceAsker
from services.actor.settings import ActorSettings
from services.actor.states import exact_state_keys, full_states, judge, state_keys

log = logging.getLogger(__name__)


class AdviceClient:
    """The actor's side of advice: the `AdviceSource` of the rollout worker (`ala.rl.worker`)."""

    def __init__(
        self, settings: ActorSettings, bus: Bus, rollout: Rollout, bias: BiasTable, adapter: EnvAdapter
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.rollout = rollout
        self.bias = bias
        self.adapter = adapter
        self.spec = rollout.agent.spec
        self._reject_log = RateLimitedLog(log)
        self._decode_log = RateLimitedLog(log)
        self.recent_returns: deque[float] = deque(maxlen=100)
        self.requested_digests: set[int] = set()
        self.asker = Asker(
            rollout.num_bots,
            settings.digest_rate_per_s,
            settings.digest_bot_interval_s,
            settings.ask_again_s,
            max_keys=4 * settings.state_table_size,
        )
        offered = digest_contents(adapter, rollout, settings.digest_full_state)
        self.advisors = AdvisorsHeard(offered, settings.heartbeat_interval_s)
        self.judge_rng = np.random.default_rng(settings.rollout_seed)
        self.outcomes = OutcomeLedger(rollout.num_bots, settings.control_share, settings.rollout_seed + 1)
        self.options = OptionExecutor(adapter, bias, settings.state_table_size)
        self.keys = self.state_keys()
        """The key of each bot's current observation: what state-scoped advice is looked up by."""
        self.exact_keys = self.exact_state_keys()
        """The key of each bot's exact state, looked up first; empty while no exact-state advice is about."""
        self._step_started = 0.0
        self.preferences = PreferenceAsker(settings, bus, rollout, adapter) if settings.preference_rate_per_s else None
        self.report_bounds()

    # The rollout worker's advice source: the bias for the next step here, what follows a step in after_step.
    def before_step(self) -> StepAdvice:
        self._step_started = time.perf_counter()
        now = time.monotonic()
        lookup = self.bias.lookup(now, self.tick, self.keys, self.exact_keys)
        lookup = self.options.compose(lookup, self.rollout.obs, self.keys, now, self.tick)
        lookup.mute(self.outcomes.unreached(lookup.reach, lookup.advisors))
        self.outcomes.record_step(lookup.advisors)
        if self.settings.judge_rate:
            judge(self.adapter, self.rollout, lookup, self.settings.judge_rate, self.judge_rng)
        metrics.ACTIVE_BIASES.set(int(lookup.bias.any(axis=1).sum()))
        metrics.BIASED_STEPS.labels("state").inc(int(lookup.from_state.sum()))
        metrics.BIASED_STEPS.labels("bot").inc(int(lookup.from_bot.sum()))
        applied = None if self.settings.advice_mode == "distill" else lookup.bias
        return StepAdvice(
            applied, advice=self._to_distil(lookup), advised=self._advised(lookup), full_states=self._full_states()
        )

    def _full_states(self) -> np.ndarray | None:
        """Every bot's full state, where the chunks are to carry them and the env has one."""
        if not self.settings.chunk_full_states:
            return None
        states = full_states(self.adapter, self.rollout)
        if any(state is None for state in states):
            return None
        return np.stack(states).astype(np.uint8)  # type: ignore[arg-type]

    # Bias updates: a callback writes the table; the step loop reads it.
    async def on_bias(self, msg: Msg) -> None:
        start = time.perf_counter()
        try:
            update = decode(msg.data, BiasUpdate)
            table = self.options.table if update.options else self.bias  # option advice: `options.py`
            clipped, capped = table.clipped_elements, table.capped_ttls
            table.apply(update, time.monotonic(), self.tick)
        except WireError as exc:
            self._reject("decode", exc)
            return
        except BiasRejected as exc:
            self._reject(exc.reason, exc)
            return
        if table.clipped_elements > clipped or table.capped_ttls > capped:
            metrics.BIAS_BOUNDED.labels("element").inc(table.clipped_elements - clipped)
            metrics.BIAS_BOUNDED.labels("ttl").inc(table.capped_ttls - capped)
        metrics.BIAS_APPLY_SECONDS.observe(time.perf_counter() - start)
        if update.advice_created_at > 0:
            metrics.ADVICE_TO_BIAS_SECONDS.observe(max(0.0, time.time() - update.advice_created_at))

    async def on_router_heartbeat(self, msg: Msg) -> None:
        """The router's bounds, as configured now: the actor holds every bias to the tighter of its own and these.
        An undecodable heartbeat changes nothing: the bounds in force stay (never looser than the actor's own)."""
        heartbeat = self._heartbeat(msg, "router")
        if heartbeat is None:
            return
        if heartbeat.b_max > 0:
            self.bias.max_abs_bias = min(self.settings.max_abs_bias, heartbeat.b_max)
        if heartbeat.max_ttl_s > 0:
            self.bias.max_ttl_s = min(self.settings.max_ttl_s, heartbeat.max_ttl_s)
        if heartbeat.reach:
            self.hear_reach(heartbeat.reach)
        self.report_bounds()

    async def on_advisor_heartbeat(self, msg: Msg) -> None:
        heartbeat = self._heartbeat(msg, "advisor")
        if heartbeat is not None:
            self.advisors.hear(heartbeat)

    def _heartbeat(self, msg: Msg, sender: str) -> Heartbeat | None:
        """The heartbeat, or None (counted and logged): the next one will do."""
        try:
            return decode(msg.data, Heartbeat)
        except WireError as exc:
            metrics.UNDECODABLE.labels("heartbeat").inc()
            self._decode_log.warning("undecodable %s heartbeat on %s dropped: %s", sender, msg.subject, exc)
            return None

    def hear_reach(self, reach: dict[str, float]) -> None:
        """The router's reach per advisor: new episodes are assigned by it (`outcomes.py`), and while no advisor
        reaches `ask_full_reach` of the episodes, digests go out at the trickle the most trusted one can use (0.05 of
        the rate on probation), none while every one is silenced for good."""
        self.outcomes.set_reach(reach)
        usable = max(reach.values())
        share = 1.0 if usable >= self.settings.ask_full_reach else usable
        self.asker.bucket.rate_per_s = self.settings.digest_rate_per_s * share
        self.asker.bucket.burst = max(1.0, self.asker.bucket.rate_per_s / 4)
        metrics.DIGEST_RATE.set(self.asker.bucket.rate_per_s)

    def report_bounds(self) -> None:
        metrics.BIAS_BOUND.labels("b_max").set(self.bias.max_abs_bias)
        metrics.BIAS_BOUND.labels("max_ttl_s").set(self.bias.max_ttl_s)

    def _reject(self, reason: str, exc: Exception) -> None:
        metrics.BIAS_REJECTED.labels(reason).inc()
        self._reject_log.warning("bias update rejected (%s): %s", reason, exc)

    async def on_digest_request(self, msg: Msg) -> None:
        try:
            request = decode(msg.data, DigestRequest)
        except WireError as exc:
            metrics.DIGEST_REQUESTS_REJECTED.inc()
            self._decode_log.warning("undecodable digest request on %s dropped: %s", msg.subject, exc)
            return
        bots = request.bots or range(self.rollout.num_bots)
        self.requested_digests.update(bot for bot in bots if bot < self.rollout.num_bots)

    def _to_distil(self, lookup: BiasLookup) -> np.ndarray | None:
        """The advice recorded for the learner to distil (advice modes distill and both): only where its reach, the
        router's trust in its advisor, is at least `distill_min_reach`. Distilling advice still on probation at the
        initial trust taught always-wrong advice as readily as the expert's."""
        if self.settings.advice_mode == "bias":
            return None
        return lookup.bias * (lookup.reach >= self.settings.distill_min_reach)[:, None]

    def _advised(self, lookup: BiasLookup) -> np.ndarray:
        """bool [N]: bots whose step advice touched, whatever its value (the learner's advised floor follows it):
        advice in force after the control group and reach are muted; in mode distill, only where it is recorded
        to distil, since there it touches nothing else."""
        if self.settings.advice_mode == "distill":
            return lookup.in_force & (lookup.reach >= self.settings.distill_min_reach)
        return lookup.in_force

    @property
    def tick(self) -> int:
        """Steps each bot has taken: the clock of step-based expiry."""
        return self.rollout.env_steps // self.rollout.num_bots

    def state_keys(self) -> list[str]:
        return state_keys(self.adapter, self.rollout, self.settings.state_key)

    def exact_state_keys(self) -> list[str]:
        """Every bot's exact-state key while advice about exact states may be live (else none, at no cost)."""
        if not self.bias.may_have_exact_advice(time.monotonic()):
            return []
        return exact_state_keys(self.adapter, self.rollout)

    async def after_step(self, finished: list[Episode]) -> None:
        """The step's metrics, the episodes it ended (outcomes, returns, per-bot advice ends), the state keys the
        next step is looked up by, and the digests it asks for."""
        metrics.STEP_SECONDS.observe(time.perf_counter() - self._step_started)
        metrics.FORWARD_SECONDS.observe(self.rollout.forward_seconds)
        metrics.ENV_STEPS.inc(self.rollout.num_bots)
        for episode in finished:
            self.outcomes.end_episode(episode.bot, episode.episode_return)
            self.recent_returns.append(episode.episode_return)
            metrics.EPISODES.return_.observe(episode.episode_return)
            metrics.EPISODES.length.observe(episode.length)
        if finished:
            metrics.MEAN_RETURN.set(self.mean_return())
            self.bias.end_episodes([episode.bot for episode in finished])
        self.keys = self.state_keys()
        self.exact_keys = self.exact_state_keys()
        if self.preferences is not None:
            await self.preferences.maybe_ask(self.keys)
        if not self.settings.digests_enabled:
            return
        reading = self.advisors.reading()
        metrics.ADVISORS_READING.set(-1 if reading is None else reading)
        if reading == 0:  # every advisor heard reads what these digests lack (CartPole has no text), or is gone
            self.requested_digests.clear()
            return
        requested, self.requested_digests = self.requested_digests, set()
        every = self.settings.digest_every_steps
        now, tick = time.monotonic(), self.tick
        limited_before = self.asker.limited
        # While exact-state advice is about, a state is asked about by its exact key: the bots that alias one
        # observation are in different states to such an advisor. Advice about either key means "advised".
        ask_keys, observation_of = self.keys, {}
        if self.exact_keys:
            ask_keys = [exact or key for exact, key in zip(self.exact_keys, self.keys, strict=True)]
            observation_of = dict(zip(ask_keys, self.keys, strict=True))

        def advised(key: str) -> bool:
            if self.bias.has_state_advice(key, now, tick) or self.options.advised(key, now, tick):
                return True
            return key in observation_of and self.bias.has_state_advice(observation_of[key], now, tick)

        chosen = self.asker.choose(
            ask_keys,
            advised,
            requested,
            periodic=bool(every) and tick % every == 0,
        )
        metrics.DIGESTS_LIMITED.inc(self.asker.limited - limited_before)
        for bot, reason in chosen:
            await self._publish_digest(bot, reason)

    def progress(self) -> str:
        """The advice part of the actor's console line."""
        now = time.monotonic()
        return f"advised states {self.bias.live_states(now, self.tick)}, bots {self.bias.active(now, self.tick)}" + (
            f"  option steps {self.options.option_steps:,}" if self.options.declared else ""
        )

    def mean_return(self) -> float:
        return float(np.mean(self.recent_returns)) if self.recent_returns else float("nan")

    async def _publish_digest(self, bot: int, reason: Reason) -> None:
        s = self.settings
        digest = make_digest(
            s.run, s.instance, self.adapter, self.rollout, self.spec, bot, self.keys[bot], s.digest_full_state
        )
        if await self.bus.publish(subjects.digest_subject(self.settings.run, self.settings.instance), digest, "digest"):
            metrics.DIGESTS.labels(reason).inc()

    async def report_outcomes(self) -> None:
        """Episode outcomes with and without advice, to the router's trust, every `outcome_interval_s`."""
        subject = subjects.outcome_subject(self.settings.run, self.settings.instance)
        while True:
            await asyncio.sleep(self.settings.outcome_interval_s)
            outcome = self.outcomes.take(self.settings.run, self.settings.instance)
            if outcome is not None:
                await self.bus.publish(subject, outcome, kind="outcome")
