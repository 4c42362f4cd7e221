"""Can any decoding get options out of the embedded model? Option precision of SmolLM2-135M by decoding rule.

The advice-quality harness (`benchmarks/advice_quality.py`) asks the option question as the advisor does: a grammar
admits only the option names and the model decodes greedily. SmolLM2 then names "pick up" in every situation
(precision 0.07). This benchmark scores the same situations, with the same prompts, under decoding rules that read the
model's whole distribution over the options instead of its first greedy token:

- `greedy`: the advisor's rule (grammar-constrained greedy decoding);
- `likelihood`: the option whose tokens have the highest summed log-probability after the prompt;
- `mean-likelihood`: the same per token (long names are not penalised for their length);
- `calibrated`: `likelihood` minus the option's log-probability after a content-free situation ("contextual
  calibration", Zhao et al. 2021, arXiv 2102.09690): what the situation adds, with the model's prior removed.

Each is compared with `majority`: the planner's most frequent option, answered everywhere (what a model that ignores
the situation scores at best). A rule that does not beat it has learnt nothing from the situation.

    python -m benchmarks.option_decoding --prompt-dir services/advisor/prompts --prompt-dir benchmarks/prompts/rules
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Annotated

import msgspec
import typer

from ala.envs.minigrid_options import OPTIONS
from benchmarks.advice_quality import ENVS, Labelled, labelled_states, situation_ceiling
from benchmarks.report import command_line, provenance, write_report
from protos import StateDigest
from services.advisor.backends import EmbeddedBackend
from services.advisor.prompt import Prompt
from services.advisor.settings import AdvisorSettings, advisor_spec

CONTENT_FREE = "You see nothing in particular."
RULES = ("greedy", "likelihood", "mean-likelihood", "calibrated")


def option_logprobs(backend: EmbeddedBackend, messages: list[dict[str, str]]) -> list[tuple[float, int]]:
    """(summed log-probability, tokens) of each option's name as the reply to `messages`: the name is forced by a
    grammar, and llama.cpp reports each forced token's log-probability under the model's unconstrained distribution."""
    scores = []
    for name in OPTIONS:
        reply = backend.server.handle_chat_completions(
            {
                "messages": messages,
                "max_tokens": 16,
                "temperature": 0,
                "logprobs": True,
                "top_logprobs": 1,
                "grammar": f"root ::= {json.dumps(name)}",
                "cache_prompt": True,
            }
        )
        tokens = [token["logprob"] for token in reply["choices"][0]["logprobs"]["content"]]
        named = tokens[:-1] if len(tokens) > 1 else tokens  # the last is the end-of-turn token
        scores.append((sum(named), len(named)))
    return scores


def decide(rule: str, scores: list[tuple[float, int]], prior: list[tuple[float, int]]) -> int:
    if rule == "likelihood":
        values = [total for total, _ in scores]
    elif rule == "mean-likelihood":
        values = [total / max(count, 1) for total, count in scores]
    else:  # calibrated
        values = [total - base for (total, _), (base, _) in zip(scores, prior, strict=True)]
    return max(range(len(OPTIONS)), key=values.__getitem__)


async def score_prompt(backend: EmbeddedBackend, prompt: Prompt, states: list[Labelled]) -> dict[str, Counter[str]]:
    """Per rule: the options chosen over the situations, and `right` (states whose planner option it matched)."""
    situations: dict[tuple[str, str], StateDigest] = {}
    for state in states:
        situations.setdefault((state.env_id, state.digest.situation_key), state.digest)
    content_free = msgspec.structs.replace(next(iter(situations.values())), situation=CONTENT_FREE)
    prior = option_logprobs(backend, prompt.option_messages(content_free, list(OPTIONS)))
    chosen: dict[str, dict[tuple[str, str], int]] = {rule: {} for rule in RULES}
    for situation, digest in situations.items():
        messages = prompt.option_messages(digest, list(OPTIONS))
        chosen["greedy"][situation] = (await backend.choose(digest, messages, list(OPTIONS))).option
        scores = option_logprobs(backend, messages)
        for rule in RULES[1:]:
            chosen[rule][situation] = decide(rule, scores, prior)
    tallies: dict[str, Counter[str]] = {}
    for rule, by_situation in chosen.items():
        tally: Counter[str] = Counter(OPTIONS[option] for option in by_situation.values())
        tally["right"] = sum(by_situation[(s.env_id, s.digest.situation_key)] == s.option for s in states)
        tallies[rule] = tally
    return tallies


def main(
    prompt_dir: Annotated[
        list[Path], typer.Option(help="Prompt folders (as ALA_ADVISOR_PROMPT_DIR), one section each.")
    ] = [Path("services/advisor/prompts")],  # noqa: B006 (typer reads the default, never mutates it)
    episodes: Annotated[int, typer.Option(help="Episodes per env.")] = 6,
    per_episode: Annotated[int, typer.Option(help="States kept per episode, at most.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the episodes and of the random steps.")] = 1,
    out: Annotated[Path, typer.Option(help="Markdown report.")] = Path("benchmarks/results/option-decoding.md"),
) -> None:
    states = [state for env_id in ENVS for state in labelled_states(env_id, episodes, per_episode, seed)]
    situations = len({(state.env_id, state.digest.situation_key) for state in states})
    majority_option, majority_right = Counter(state.option for state in states).most_common(1)[0]
    lines = [
        "# Option precision of the embedded model by decoding rule",
        "",
        provenance(command_line(), {str(folder): {} for folder in prompt_dir}),
        "",
        f"The advice-quality harness's {len(states)} states ({', '.join(ENVS)}, seed {seed}), {situations}"
        " situations, each situation answered once and scored at each of its states against the planner's option.",
        f" `majority` answers the planner's most frequent option, {OPTIONS[majority_option]!r}, everywhere:"
        f" {majority_right / len(states):.2f}. The best any answer per situation can score:"
        f" {situation_ceiling(states):.2f}.",
        "",
    ]
    backend = EmbeddedBackend(advisor_spec(name="embedded", backend="embedded"))
    for folder in prompt_dir:
        tallies = asyncio.run(score_prompt(backend, Prompt(AdvisorSettings(prompt_dir=folder)), states))
        lines += [
            f"## Prompts from `{folder}`",
            "",
            "| decoding | precision | options chosen over the situations |",
            "|---|---:|---|",
        ]
        for rule, tally in tallies.items():
            right = tally.pop("right")
            chosen = ", ".join(f"{name} {count}" for name, count in tally.most_common())
            lines.append(f"| {rule} | {right / len(states):.2f} ({right}/{len(states)}) | {chosen} |")
        lines.append("")
    write_report("\n".join(lines), out)


if __name__ == "__main__":
    typer.run(main)
