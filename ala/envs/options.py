"""Options, situations and skills: the vocabulary of strategic advice (issue 28).

An LLM answers a few times a minute; an actor decides 2,000 times a second. So an LLM is asked per *situation* (a
short abstract description of a state: what is carried, which objects are in sight; an env has a few dozen) which
*option* to follow (a named sub-behaviour in words it understands: "go to the key", "open the door"), and the
actor executes the option's *skill*, step by step, as a bounded bias (`services/actor/options.py`).

A skill reads only what the bot's own policy sees (never the privileged full state): it is as available at
deployment as the policy itself. It gives the action it prefers now, or None once the option has terminated
(reached, picked up, opened). Options with no natural end stop after `OPTION_STEPS`.

Adapters declare them (`EnvAdapter.options`, `situation`, `skill_action`); families that declare none (generic
Gymnasium envs) keep per-step advice only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from protos import SITUATION_KEY_PREFIX

OPTION_STEPS = 16
"""Longest run of one option: an option that has not terminated by then gives way to the next advice."""
MAX_OPTIONS = 32
"""Bound on an adapter's option set (it travels in the policy spec)."""


@dataclass(frozen=True)
class Situation:
    """An abstract state: `name` is its readable identity (stable across runs), `text` says it to an LLM, and `key`
    names it on the wire and in caches."""

    name: str
    text: str

    @property
    def key(self) -> str:
        """ "sit:" + 16 hex digits of the name's sha1: as short as an observation's key, whatever the name's length."""
        return SITUATION_KEY_PREFIX + hashlib.sha1(self.name.encode()).hexdigest()[:16]
