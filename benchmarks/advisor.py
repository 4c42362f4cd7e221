"""Advisor backends and the adaptive cache.

1. Latency p50/p99 and tokens/s per backend: the embedded SmolLM2-135M (in-process, 1 thread), the OpenAI-compatible
   HTTP backend against that model's real llama.cpp server, the expert planner and the adversarial advisor.
2. Cache: the same digests (every step of episodes played by an epsilon-greedy expert, so states recur as they do in
   training) answered without the cache and with it. Calls saved = uncached calls / cached calls; quality = share
   of digests where the cached run's action equals the uncached answer.

    python -m benchmarks.advisor [--llm-calls 20] [--cache-digests 2000] [--llm-cache-digests 150]
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Annotated

import msgspec
import numpy as np
import typer

from ala.envs import adapter_for
from ala.envs.minigrid_expert import plan
from benchmarks.report import command_line, provenance, write_report
from protos import StateDigest
from services.advisor.backends import AdversarialBackend, Backend, EmbeddedBackend, ExpertBackend, OpenAIBackend
from services.advisor.cache import AdviceCache
from services.advisor.prompt import Prompt
from services.advisor.settings import AdvisorSettings, advisor_spec
from tests.support import digest_of

ACTIONS = ["left", "right", "forward", "pickup", "drop", "toggle", "done"]


def episode_digests(env_id: str, count: int, epsilon: float = 0.2, seed: int = 0) -> list[StateDigest]:
    adapter = adapter_for(env_id)
    env, rng, out = adapter.make(), random.Random(seed), []
    episode = 0
    while len(out) < count:
        obs, _ = env.reset(seed=episode % 5)  # a few layouts, revisited, as a learner revisits them
        for _ in range(100):
            out.append(msgspec.structs.replace(digest_of(env, obs, env_id=env_id), env_step=len(out), episode=episode))
            best = plan(adapter.full_state(env))
            action = rng.randrange(len(ACTIONS)) if best is None or rng.random() < epsilon else best
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated or len(out) >= count:
                break
        episode += 1
    return out


async def latency(backend: Backend, digests: list[StateDigest], prompt: Prompt) -> dict[str, float]:
    seconds, tokens = [], 0
    for digest in digests:
        start = time.perf_counter()
        suggestion = await backend.suggest(digest, prompt.messages(digest))
        seconds.append(time.perf_counter() - start)
        tokens += suggestion.completion_tokens
    values = np.array(seconds)
    return {
        "p50_ms": float(np.percentile(values, 50) * 1e3),
        "p99_ms": float(np.percentile(values, 99) * 1e3),
        "tokens_per_s": tokens / float(values.sum()),
        "calls": len(digests),
    }


async def cache_study(backend: Backend, digests: list[StateDigest], prompt: Prompt) -> dict[str, float]:
    fresh = [(await backend.suggest(d, prompt.messages(d))).action for d in digests]
    settings = AdvisorSettings()
    cache = AdviceCache(
        settings.cache_size, settings.cache_max_distance, settings.cache_target_agreement, settings.cache_audit_rate
    )
    calls = agree = 0
    for digest, truth in zip(digests, fresh, strict=True):
        observation = digest.observation.to_numpy()
        found = cache.lookup(observation)
        if found.suggestion is not None and not found.audit:
            served = found.suggestion
        else:
            calls += 1
            served = await backend.suggest(digest, prompt.messages(digest))
            if found.audit and found.suggestion is not None:
                cache.record_audit(found.suggestion, served)
            cache.store(observation, served)
        agree += served.action == truth
    return {
        "digests": len(digests),
        "uncached_calls": len(digests),
        "cached_calls": calls,
        "fewer_calls": len(digests) / max(calls, 1),
        "agreement": agree / len(digests),
        "final_max_distance": cache.max_distance,
    }


TEMPERATURE = 0.0
"""Greedy decoding: latency and cache agreement then do not depend on sampling."""
WRONG = 0.5
SETTINGS = {
    "embedded LLM": {"AdvisorSpec.temperature": str(TEMPERATURE)},
    "OpenAI-compatible HTTP": {"AdvisorSpec.temperature": str(TEMPERATURE)},
    "expert planner": {},
    "adversarial": {"AdvisorSpec.wrong_probability": str(WRONG)},
}
"""Each backend's fields beyond `AdvisorSpec`'s defaults (as in an `ALA_ADVISOR_ADVISORS` entry), for the report."""


async def run(llm_calls: int, cache_digests: int, llm_cache_digests: int) -> list[str]:
    prompt = Prompt(AdvisorSettings())
    embedded = EmbeddedBackend(advisor_spec(name="llm", temperature=TEMPERATURE))
    http = OpenAIBackend(advisor_spec(name="http", backend="openai", base_url=embedded.url, temperature=TEMPERATURE))
    expert = ExpertBackend()
    adversarial = AdversarialBackend(advisor_spec(name="adv", backend="adversarial", wrong_probability=WRONG))
    small = episode_digests("MiniGrid-DoorKey-5x5-v0", max(llm_calls, 200))
    lines = [
        "| backend | calls | p50 (ms) | p99 (ms) | tokens/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, backend, count in (
        ("embedded SmolLM2-135M (in-process, 1 thread, GBNF)", embedded, llm_calls),
        ("OpenAI-compatible HTTP → llama.cpp server (same model)", http, llm_calls),
        ("expert planner", expert, 200),
        (f"adversarial (p = {WRONG})", adversarial, 200),
    ):
        result = await latency(backend, small[:count], prompt)
        tokens = f"{result['tokens_per_s']:.0f}" if result["tokens_per_s"] else "-"
        lines.append(f"| {name} | {count} | {result['p50_ms']:.1f} | {result['p99_ms']:.1f} | {tokens} |")
    lines += [
        "",
        "| cache study | digests | calls without cache | calls with cache | fewer calls | agreement | final distance |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, backend, digests in (
        ("expert, DoorKey-5x5", expert, episode_digests("MiniGrid-DoorKey-5x5-v0", cache_digests, seed=1)),
        ("expert, DoorKey-8x8", expert, episode_digests("MiniGrid-DoorKey-8x8-v0", cache_digests, seed=2)),
        ("embedded LLM, DoorKey-5x5", embedded, episode_digests("MiniGrid-DoorKey-5x5-v0", llm_cache_digests, seed=3)),
    ):
        r = await cache_study(backend, digests, prompt)
        lines.append(
            f"| {name} | {r['digests']:.0f} | {r['uncached_calls']:.0f} | {r['cached_calls']:.0f} | "
            f"{r['fewer_calls']:.1f}x | {r['agreement']:.1%} | {r['final_max_distance']:.0f} |"
        )
    await http.close()
    return lines


def main(
    llm_calls: Annotated[int, typer.Option(help="Calls per LLM backend for latency.")] = 20,
    cache_digests: Annotated[int, typer.Option(help="Digests in the expert cache studies.")] = 2000,
    llm_cache_digests: Annotated[int, typer.Option(help="Digests in the LLM cache study.")] = 150,
    out: Annotated[Path, typer.Option(help="Markdown report.")] = Path("benchmarks/results/advisor.md"),
) -> None:
    lines = asyncio.run(run(llm_calls, cache_digests, llm_cache_digests))
    report = "\n".join(
        [
            "# Advisor backends and cache",
            "",
            provenance(command_line(), SETTINGS),
            "",
            "vLLM cannot run on this machine: the OpenAI-compatible row is llama.cpp's server.",
            "",
            *lines,
            "",
            "Agreement: share of digests where the action served (cached or fresh) equals the backend's uncached "
            "answer for that digest. The cache is keyed on the 7x7 view the policy sees; the expert answers from the "
            "full grid, so two states with one view can need different actions.",
            "",
        ]
    )
    write_report(report, out)


if __name__ == "__main__":
    typer.run(main)
