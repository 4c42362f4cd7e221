"""Any OpenAI-compatible chat server, vLLM first: the answer's schema in vLLM's `structured_outputs` and in the
standard `response_format`, timeouts, a concurrency limit, retries with backoff; a reasoning model's thinking is
read apart from its answer."""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

import httpx

from protos import StateDigest
from services.advisor.backends.answers import (
    Reply,
    answer_of,
    answer_schema,
    option_schema,
    parse_choice,
    read_reply,
)
from services.advisor.backends.base import (
    BackendError,
    Choice,
    Reads,
    Suggestion,
)
from services.advisor.settings import AdvisorSpec


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
