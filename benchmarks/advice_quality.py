"""Score an advisor before training with it: precision per step and per option against the privileged planner, parse
failures, answer latency and tokens, on a fixed, seeded set of states.

States come from seeded DoorKey-5x5 and 8x8 episodes in which the bot follows the planner with probability 0.5
and acts at random otherwise, so that they cover every stage of the task (before the key, carrying it, past the
door) and some detours. Each is labelled by the planner: its action (`plan`) and its option (`planner_option`).
The advisor is asked the per-step question for every state and the option question once per (env, situation),
exactly as the advisor service asks them (the same prompts, backends and constraints); precision is per state.

    python -m benchmarks.advice_quality --advisor '{"name": "llm-0", "backend": "embedded"}'
    python -m benchmarks.advice_quality --advisor '{"name": "gpt-oss", "backend": "openai",
        "base_url": "http://dgx:8000/v1", "model": "openai/gpt-oss-20b", "reasoning_effort": "low",
        "max_reasoning_tokens": 1024}'

A lab runs it against its own server before spending GPU hours: `benchmarks/results/advice-quality.md` holds the
embedded model's figures.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from ala.envs import adapter_for
from ala.envs.minigrid_options import OPTIONS
from benchmarks.report import command_line, provenance, write_report
from protos import StateDigest
from services.advisor.backends import BackendError, create_backend
from services.advisor.prompt import Prompt
from services.advisor.settings import AdvisorSettings, AdvisorSpec, advisor_spec
from tests.support import digest_of

ENVS = ("MiniGrid-DoorKey-5x5-v0", "MiniGrid-DoorKey-8x8-v0")


@dataclass
class Labelled:
    env_id: str
    digest: StateDigest
    action: int
    option: int


@dataclass
class Tally:
    right: int = 0
    asked: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)
    tokens: int = 0
    reasoning_tokens: int = 0

    def row(self, kind: str) -> str:
        p50, p95 = np.percentile(self.seconds, [50, 95]) if self.seconds else (float("nan"), float("nan"))
        failed = ", ".join(f"{reason} {count}" for reason, count in sorted(self.failures.items())) or "none"
        precision = self.right / self.asked if self.asked else float("nan")
        return (
            f"| {kind} | {precision:.2f} ({self.right}/{self.asked}) | {failed} | {p50:.2f} | {p95:.2f} | "
            f"{self.tokens:,} | {self.reasoning_tokens:,} | {len(self.seconds)} |"
        )


def labelled_states(env_id: str, episodes: int, per_episode: int, seed: int) -> list[Labelled]:
    """States along seeded half-planner, half-random episodes, with the planner's action and option."""
    adapter = adapter_for(env_id)
    env = adapter.make()
    rng = np.random.default_rng(seed)
    states: list[Labelled] = []
    for episode in range(episodes):
        observation, _ = env.reset(seed=seed * 1000 + episode)
        kept = 0
        for step in range(200):
            action, option = adapter.expert_action(env), adapter.planner_option(env)
            if action is None or option is None:
                break
            if step % 3 == 0 and kept < per_episode:  # every third step: states spread along the episode
                states.append(Labelled(env_id, digest_of(env, observation, env_id=env_id), action, option))
                kept += 1
            chosen = action if rng.random() < 0.5 else int(rng.integers(3))
            observation, _, terminated, truncated, _ = env.step(chosen)
            if terminated or truncated:
                break
    env.close()
    return states


def situation_ceiling(states: list[Labelled]) -> float:
    """Option precision of the best answer per situation: where the planner wants different options in states of
    one situation, no answer about the situation alone is right in all of them."""
    by_situation: dict[tuple[str, str], list[int]] = {}
    for state in states:
        by_situation.setdefault((state.env_id, state.digest.situation_key), []).append(state.option)
    best = sum(max(options.count(option) for option in set(options)) for options in by_situation.values())
    return best / len(states)


async def score(spec: AdvisorSpec, states: list[Labelled], per_step_too: bool) -> tuple[Tally, Tally, list[dict]]:
    backend = create_backend(spec)
    prompt = Prompt(AdvisorSettings(advisors=[spec]))
    per_step, per_option = Tally(), Tally()
    choices: dict[tuple[str, str], int | None] = {}
    answers = []
    try:
        for state in states:
            digest = state.digest
            started = time.perf_counter()
            try:
                if not per_step_too:
                    raise BackendError("not_asked", "--no-per-step")
                suggestion = await asyncio.wait_for(backend.suggest(digest, prompt.messages(digest)), spec.timeout_s)
                per_step.seconds.append(time.perf_counter() - started)
                per_step.tokens += suggestion.completion_tokens
                per_step.reasoning_tokens += suggestion.reasoning_tokens
                per_step.right += suggestion.action == state.action
            except (BackendError, TimeoutError) as exc:
                reason = getattr(exc, "reason", "timeout")
                per_step.failures[reason] = per_step.failures.get(reason, 0) + 1
            per_step.asked += 1
            situation = (state.env_id, digest.situation_key)
            if situation not in choices and hasattr(backend, "choose"):
                started = time.perf_counter()
                try:
                    messages = prompt.option_messages(digest, list(OPTIONS))
                    choice = await asyncio.wait_for(backend.choose(digest, messages, list(OPTIONS)), spec.timeout_s)
                    per_option.seconds.append(time.perf_counter() - started)
                    per_option.tokens += choice.completion_tokens
                    per_option.reasoning_tokens += choice.reasoning_tokens
                    choices[situation] = choice.option
                except (BackendError, TimeoutError) as exc:
                    reason = getattr(exc, "reason", "timeout")
                    per_option.failures[reason] = per_option.failures.get(reason, 0) + 1
                    choices[situation] = None
            chosen = choices.get(situation)
            per_option.asked += 1
            per_option.right += chosen == state.option
            answers.append(
                {
                    "env": state.env_id,
                    "situation": digest.situation,
                    "planner_option": OPTIONS[state.option],
                    "advised_option": None if chosen is None else OPTIONS[chosen],
                }
            )
    finally:
        await backend.close()
    return per_step, per_option, answers


def main(
    advisor: Annotated[
        list[str], typer.Option(help="An advisor spec as ALA_ADVISOR_ADVISORS holds one (JSON); repeat for several.")
    ] = ['{"name": "llm-0", "backend": "embedded"}'],  # noqa: B006 (typer reads the default, never mutates it)
    episodes: Annotated[int, typer.Option(help="Episodes per env.")] = 6,
    per_episode: Annotated[int, typer.Option(help="States kept per episode, at most.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the episodes and of the random steps.")] = 1,
    ask_per_step: Annotated[
        bool, typer.Option("--per-step/--no-per-step", help="Ask the per-step question too (options only: faster).")
    ] = True,
    out: Annotated[Path, typer.Option(help="Markdown report; JSON beside it.")] = Path(
        "benchmarks/results/advice-quality.md"
    ),
) -> None:
    states = [state for env_id in ENVS for state in labelled_states(env_id, episodes, per_episode, seed)]
    situations = len({(state.env_id, state.digest.situation_key) for state in states})
    ceiling = situation_ceiling(states)
    lines = [
        "# Advice quality: an advisor against the planner, before any training",
        "",
        provenance(command_line(), {json.loads(spec)["name"]: {"spec": spec} for spec in advisor}),
        "",
        f"{len(states)} states from {', '.join(ENVS)} ({episodes} seeded episodes each, the bot following the"
        f" planner half the time), {situations} distinct situations. Per step: the advised action against the"
        " planner's, every state asked. Per option: the option asked once per situation, scored at every state of it"
        " against the planner's option there (a failed answer counts as wrong). Latency in seconds per call.",
        f" The best any answer per situation can score (the planner's most frequent option in each): {ceiling:.2f}.",
        "",
    ]
    results = {}
    for raw in advisor:
        spec = advisor_spec(**json.loads(raw))
        per_step, per_option, answers = asyncio.run(score(spec, states, ask_per_step))
        results[spec.name] = answers
        lines += [
            f"## {spec.name} ({spec.backend}{', ' + spec.model if spec.backend == 'openai' else ''})",
            "",
            "| question | precision | parse and other failures | p50 s | p95 s | tokens | reasoning tokens | calls |",
            "|---|---:|---|---:|---:|---:|---:|---:|",
            per_step.row("action per step"),
            per_option.row("option per situation"),
            "",
        ]
    write_report("\n".join(lines), out)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    typer.run(main)
