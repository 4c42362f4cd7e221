"""Fixtures for advisor tests: broken servers, for faults no real LLM server produces on demand."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def _serving(handler: Handler) -> AsyncIterator[str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()


@pytest.fixture
async def hung_server() -> AsyncIterator[str]:
    """Accepts connections and never answers."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.Event().wait()

    async with _serving(swallow) as url:
        yield url


@pytest.fixture
async def garbage_server() -> AsyncIterator[str]:
    """Answers 200 with a body that is not JSON."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello")
        await writer.drain()
        writer.close()

    async with _serving(answer) as url:
        yield url


class HugeServer:
    """Answers 200 with a 20 MB body, streamed (no Content-Length), as a broken or hostile server might; counts
    what it managed to send before the client hung up."""

    size = 20 * 1024 * 1024

    def __init__(self) -> None:
        self.url = ""
        self.sent = 0
        self.done = asyncio.Event()

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        block = b"x" * 65536
        try:
            while self.sent < self.size:
                writer.write(b"%x\r\n%s\r\n" % (len(block), block))
                await writer.drain()
                self.sent += len(block)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            pass
        writer.close()
        self.done.set()


@pytest.fixture
async def huge_server() -> AsyncIterator[HugeServer]:
    server = HugeServer()
    async with _serving(server.answer) as url:
        server.url = url
        yield server


class ReasoningServer:
    """An OpenAI-compatible endpoint answering as vLLM serves a reasoning model (GPT-OSS with the `openai_gptoss`
    parser), in the shapes its documentation gives: the thinking in `message.reasoning` (`reasoning_content` in vLLM
    before 0.11 and in llama.cpp), the final answer alone in `content`, usage with
    `completion_tokens_details.reasoning_tokens`; streamed as server-sent events of deltas when asked to stream,
    the usage in a last chunk. `budget_chars`: the reply is cut (finish_reason `length`, no content) when the
    request's max_tokens is below it. It records every request body; `html` answers a web page instead, as a
    misconfigured proxy does."""

    def __init__(self, answer: str, reasoning: str, field: str = "reasoning", html: bool = False) -> None:
        self.answer, self.reasoning, self.field, self.html = answer, reasoning, field, html
        self.requests: list[dict] = []
        self.url = ""

    def reply(self, body: dict) -> tuple[bytes, bytes]:
        """(content type, body)."""
        if self.html:
            return b"text/html", b"<html><body>502 Bad Gateway</body></html>"
        cut = body.get("max_tokens", 0) < len(self.reasoning.split()) + 8
        content = None if cut else self.answer
        finish = "length" if cut else "stop"
        reasoning_tokens = len(self.reasoning.split())
        usage = {
            "prompt_tokens": 100,
            "completion_tokens": reasoning_tokens + (0 if cut else 8),
            "total_tokens": 108 + reasoning_tokens,
            "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
        }
        if not body.get("stream"):
            message = {"role": "assistant", "content": content, self.field: self.reasoning, "tool_calls": []}
            payload = {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": usage,
            }
            return b"application/json", json.dumps(payload).encode()
        events = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
        events += [
            {"choices": [{"index": 0, "delta": {self.field: word + " "}, "finish_reason": None}]}
            for word in self.reasoning.split()
        ]
        if content:
            half = len(content) // 2
            events += [
                {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                for piece in (content[:half], content[half:])
            ]
        events += [{"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}, {"choices": [], "usage": usage}]
        stream = b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in events)
        return b"text/event-stream", stream + b"data: [DONE]\n\n"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        body = json.loads(await reader.readexactly(length))
        self.requests.append(body)
        kind, data = self.reply(body)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (kind, len(data), data)
        )
        await writer.drain()
        writer.close()


@pytest.fixture
async def reasoning_server(request: pytest.FixtureRequest) -> AsyncIterator[ReasoningServer]:
    """Parametrise indirectly with ReasoningServer's keyword arguments; by default a right answer after thinking."""
    options = {"answer": '{"action": 2, "confidence": 0.9, "ttl_s": 5, "rationale": "the door is ahead"}'}
    options |= {"reasoning": "The key is picked up. The door is straight ahead, so move forward."}
    options |= getattr(request, "param", {})
    server = ReasoningServer(**options)
    async with _serving(server.handle) as url:
        server.url = url
        yield server
