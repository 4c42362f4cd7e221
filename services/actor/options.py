"""Advised options, executed as bounded biases (issue 28).

Option advice arrives as a `BiasUpdate` with `options` set: a bias over the env's options (not its actions), bounded
by the router like any bias and scoped to a situation key (`StateDigest.situation_key`). It is held in a bias table
of its own, sized by the option count, with the same TTLs, reach and advisors as per-step advice.

Each step, a bot whose situation has live option advice follows the option with the largest bias: its skill (from
the bot's own observation, `EnvAdapter.skill_action`) names an action, and that action gets the option's bias. The
option lasts as long as the situation does; it ends when its skill terminates (reached, picked up, opened) or the
bot's situation changes, where the advice for the new situation, if any, takes over. Per-step advice about the same
bot composes with it: their sum is clipped to `b_max` again, so the two kinds stay bounded together. Everything
downstream (reach, the control group, the exact behaviour log-prob, distillation) sees one bias, as before.

Situations and skills are computed per observation and cached by the observation's key: MiniGrid bots meet the
same views again and again, and a skill's breadth-first search is not free at 2,000 decisions a second.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from cachetools import LRUCache

from ala.envs import EnvAdapter
from services.actor.bias import BiasLookup, BiasTable

CACHED_OBSERVATIONS = 65_536


class OptionExecutor:
    def __init__(self, adapter: EnvAdapter, bias: BiasTable, max_states: int = 4096) -> None:
        num_bots = bias.bias.shape[0]
        self.adapter = adapter
        self.bias = bias
        """The per-step table, whose bounds (the router's, announced) the composed bias keeps."""
        self.table = BiasTable(num_bots, max(1, len(adapter.options)), bias.max_abs_bias, max_states, bias.max_ttl_s)
        self.situations: LRUCache[str, str] = LRUCache(CACHED_OBSERVATIONS)
        """Observation key -> situation key."""
        self.skills: LRUCache[tuple[str, int], int | None] = LRUCache(CACHED_OBSERVATIONS)
        """(observation key, option) -> the skill's action (None: terminated there)."""
        self.option_steps = 0
        """Steps on which some bot followed an advised option: a total."""

    @property
    def declared(self) -> bool:
        return bool(self.adapter.options)

    def situation_key(self, observation_key: str, observation: np.ndarray) -> str:
        key = self.situations.get(observation_key)
        if key is None:
            situation = self.adapter.situation(observation)
            key = self.situations[observation_key] = situation.key if situation is not None else ""
        return key

    def advised(self, observation_key: str, now: float, tick: int) -> bool:
        """Whether the situation of an observation met before has live option advice (the actor need not ask)."""
        situation = self.situations.get(observation_key)
        return bool(situation) and self.table.has_state_advice(situation, now, tick)

    def compose(
        self, lookup: BiasLookup, observations: np.ndarray, keys: Sequence[str], now: float, tick: int
    ) -> BiasLookup:
        """`lookup` (per-step advice) with each bot's advised option added as the bias of its skill's action."""
        if not self.table.states:
            return lookup
        situations = [self.situation_key(key, observations[bot]) for bot, key in enumerate(keys)]
        options = self.table.lookup(now, tick, situations)
        bound = np.float32(self.bias.max_abs_bias)
        followed = 0
        for bot in np.flatnonzero(options.from_state):
            option = int(options.bias[bot].argmax())
            strength = options.bias[bot, option]
            if strength <= 0:
                continue  # the advice speaks against every option it names: nothing to follow
            action = self._skill(keys[bot], option, observations[bot])
            if action is None:
                continue  # the option has terminated here; the policy acts alone
            per_step = bool(lookup.advisors[bot]) or bool(lookup.bias[bot].any())
            lookup.bias[bot, action] += strength
            np.clip(lookup.bias[bot], -bound, bound, out=lookup.bias[bot])
            lookup.from_state[bot] = True
            lookup.advisors[bot] = tuple(dict.fromkeys((*lookup.advisors[bot], *options.advisors[bot])))
            lookup.reach[bot] = max(lookup.reach[bot], options.reach[bot]) if per_step else options.reach[bot]
            followed += 1
        self.option_steps += followed
        return lookup

    def _skill(self, observation_key: str, option: int, observation: np.ndarray) -> int | None:
        cache_key = (observation_key, option)
        if cache_key not in self.skills:
            self.skills[cache_key] = self.adapter.skill_action(option, observation)
        return self.skills[cache_key]
