"""An LLM's answer, parsed and checked before the advisor trusts it: the JSON schema and the GBNF grammar that
bound it, a reasoning model's final answer read apart from its thinking, and the suggestion or option it names."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import msgspec

from services.advisor.backends.base import (
    RATIONALE_CHARS,
    TTL_RANGE_S,
    BackendError,
    Choice,
    Suggestion,
)


class LLMAnswer(msgspec.Struct):
    action: int
    confidence: float
    ttl_s: float = 5.0
    rationale: str = ""


def answer_schema(n_actions: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "action": {"type": "integer", "minimum": 0, "maximum": n_actions - 1},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "ttl_s": {"type": "number", "minimum": TTL_RANGE_S[0], "maximum": TTL_RANGE_S[1]},
            "rationale": {"type": "string", "maxLength": RATIONALE_CHARS},
        },
        "required": ["action", "confidence", "ttl_s", "rationale"],
        "additionalProperties": False,
    }


def answer_grammar(n_actions: int) -> str:
    """GBNF admitting exactly the valid answers: action in range, confidence in [0, 1], ttl 1-19 s, short text."""
    actions = " | ".join(f'"{a}"' for a in range(n_actions))
    return "\n".join(
        [
            'root ::= "{\\"action\\": " action ", \\"confidence\\": " confidence '
            '", \\"ttl_s\\": " ttl ", \\"rationale\\": \\"" text "\\"}"',
            f"action ::= {actions}",
            'confidence ::= "0." [0-9] [0-9]? | "1.0"',
            'ttl ::= [1-9] | "1" [0-9]',
            f"text ::= [a-zA-Z0-9 ,.'-]{{0,{RATIONALE_CHARS}}}",
        ]
    )


class Reply(msgspec.Struct):
    """What a chat completion said: the final answer, apart from a reasoning model's thinking."""

    content: str
    reasoning: str = ""
    finish_reason: str = ""
    completion_tokens: int = 0
    reasoning_tokens: int = 0


def read_reply(payload: Any) -> Reply:
    """The final answer and token counts of an OpenAI-style chat completion (vLLM, llama.cpp, OpenAI).

    Reasoning models (GPT-OSS behind vLLM's `openai_gptoss` parser, DeepSeek-R1, Qwen3) put their thinking in
    `message.reasoning` (vLLM >= 0.11; `reasoning_content` before it, and in llama.cpp) and only the final answer in
    `content`, which is the one structured-output constraints apply to. Reasoning tokens are read from
    `usage.completion_tokens_details.reasoning_tokens` where the server reports them; where it does not, they are
    estimated as the reasoning's share of the characters generated."""
    choice = payload["choices"][0]
    message = choice["message"]
    content = message.get("content") or ""
    reasoning = message.get("reasoning") or message.get("reasoning_content") or ""
    usage = payload.get("usage") or {}
    tokens = int(usage.get("completion_tokens") or 0)
    reasoning_tokens = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    if reasoning and not reasoning_tokens and tokens:
        reasoning_tokens = round(tokens * len(reasoning) / (len(reasoning) + len(content)))
    return Reply(str(content), str(reasoning), str(choice.get("finish_reason") or ""), tokens, reasoning_tokens)


def final_answer(reply: Reply) -> str:
    """A reply's final answer; a reply cut off before it is a `length` failure, said as such."""
    if not reply.content.strip() and reply.finish_reason == "length":
        thinking = f" after {len(reply.reasoning)} characters of reasoning" if reply.reasoning else ""
        raise BackendError(
            "length", f"the token budget ran out{thinking} before the final answer (raise max_reasoning_tokens)"
        )
    return reply.content


def answer_of(reply: Reply, n_actions: int) -> Suggestion:
    """The advice in a reply's final answer."""
    suggestion = parse_answer(final_answer(reply), n_actions, reply.completion_tokens)
    return replace(suggestion, reasoning_tokens=reply.reasoning_tokens)


def option_schema(names: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"option": {"type": "string", "enum": names}},
        "required": ["option"],
        "additionalProperties": False,
    }


def option_grammar(names: list[str]) -> str:
    """GBNF admitting exactly `{"option": "<one of names>"}`: a choice costs a handful of tokens."""
    choices = " | ".join(json.dumps(name) for name in names)
    return "\n".join(['root ::= "{\\"option\\": \\"" option "\\"}"', f"option ::= {choices}"])


def parse_choice(reply: Reply, names: list[str]) -> Choice:
    """The option a reply's final answer names (`{"option": name}`, or the bare name a `choice` constraint gives)."""
    text = final_answer(reply).strip()
    try:
        decoded = json.loads(text)
        name = decoded.get("option") if isinstance(decoded, dict) else decoded
    except ValueError:
        name = text
    if name not in names:
        raise BackendError("parse", f"not one of the options: {text[:200]!r}")
    return Choice(names.index(name), 1.0, reply.completion_tokens, reply.reasoning_tokens)


def parse_answer(content: str, n_actions: int, completion_tokens: int = 0) -> Suggestion:
    try:
        answer = msgspec.json.decode(content, type=LLMAnswer)
    except msgspec.DecodeError as exc:
        raise BackendError("parse", f"not an answer: {content[:200]!r}") from exc
    if not 0 <= answer.action < n_actions:
        raise BackendError("parse", f"action {answer.action} outside [0, {n_actions})")
    if not 0 <= answer.confidence <= 1:
        raise BackendError("parse", f"confidence {answer.confidence} outside [0, 1]")
    ttl_s = min(max(answer.ttl_s, TTL_RANGE_S[0]), TTL_RANGE_S[1])
    return Suggestion(answer.action, answer.confidence, ttl_s, answer.rationale[:RATIONALE_CHARS], completion_tokens)
