"""Fixtures for advisor tests: broken servers, for faults no real LLM server produces on demand."""

from __future__ import annotations

import asyncio
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
