"""What every advice backend gives: a `Suggestion` (an action) or a `Choice` (an option), or a `BackendError`
with a metric-ready reason; the `Backend` protocol a plug-in implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

from protos import StateDigest

TTL_RANGE_S = (1.0, 19.0)
EXPERT_TTL_S = 30.0
"""The planner is exact for the state it saw: its advice stays right as long as that state can recur."""
RATIONALE_CHARS = 80


class BackendError(RuntimeError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Suggestion:
    action: int
    confidence: float
    ttl_s: float
    rationale: str = ""
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    """Of `completion_tokens`, those a reasoning model spent thinking before its final answer."""
    ahead: tuple[tuple[str, int], ...] = ()
    """(state key, action) for the states a planner expects the bot to meet next, in order: advised too, so that
    advice waits for the bot in states it has not reached yet instead of arriving after it has left."""
    scores: tuple[float, ...] | None = None
    """Per-action scores sent instead of `action` (which then means nothing): the null advisor's equal scores."""


@dataclass(frozen=True)
class Choice:
    """Option advice: which of the env's options to follow in the digest's situation (`ala.envs.options`)."""

    option: int
    confidence: float = 1.0
    completion_tokens: int = 0
    reasoning_tokens: int = 0


Reads = Literal["text", "full_state", "observation"]
"""What part of a digest a backend reasons from; a digest without it is skipped and counted, not asked."""


class Backend(Protocol):
    kind: str
    reads: ClassVar[Reads]

    async def suggest(self, digest: StateDigest, messages: list[dict[str, str]]) -> Suggestion: ...

    async def close(self) -> None: ...
