"""What an answer cache saves against what learning keeps, read from a learning-value run's JSON (issue 31; the
claim of arXiv 2505.07274: 3.8-4.7x fewer LLM calls at 96-98% of uncached performance).

    python -m benchmarks.cache_savings benchmarks/results/cache-8x8.json --baseline sim-l1

For each arm against the baseline arm (the same advisor, uncached) on the same seeds: the backend calls per run and
per 100k env steps, the share of asks answered from the cache, and the env steps to evaluation 0.8 as paired ratios.
Calls per 100k env steps is the fair count of calls saved: a run that learns sooner stops sooner and calls less for
that reason alone. The runs are the ones `benchmarks.learning_value` recorded; this only reads them.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import fields
from pathlib import Path
from typing import Annotated

import typer

from benchmarks.learning import Run, comparison_cells, steps_per_seed
from benchmarks.report import provenance


def load_runs(path: Path) -> list[Run]:
    names = {f.name for f in fields(Run)}
    return [Run(**{k: v for k, v in record.items() if k in names}) for record in json.loads(path.read_text())]


def calls_per_100k(run: Run) -> float:
    return run.scraped.get("backend_calls", 0.0) / max(1.0, run.scraped.get("env_steps", 0.0)) * 100_000


def answered_from_cache(run: Run) -> float:
    """Answers from either cache (per-step answers by observation, option answers by situation) over all answers."""
    hits = run.scraped.get("cache_hits", 0.0) + run.scraped.get("situation_hits", 0.0)
    calls = run.scraped.get("backend_calls", 0.0)
    return hits / (hits + calls) if hits + calls else 0.0


def report(runs: list[Run], baseline: str, source: Path, command: str) -> str:
    base = [r for r in runs if r.arm == baseline]
    if not base:
        raise typer.BadParameter(f"no runs of the baseline arm {baseline!r} in {source}")
    base_rate = {r.seed: calls_per_100k(r) for r in base}
    lines = [
        f"# What the answer cache saves against what learning keeps ({runs[0].env_id})",
        "",
        provenance(command, {}),
        f"- runs: `{source}` (its own report beside it gives the commit and settings they ran at)",
        "",
        f"Baseline: `{baseline}`, the same advisor uncached. Calls saved: the baseline's backend calls per 100k env "
        "steps over the arm's, seed by seed (median and range). Learning kept: env steps to evaluation 0.8 (advice "
        "off), the arm's over the baseline's on the same seed (`>=`: a run that never reached 0.8 counts at the steps "
        "it ran). "
        "Answered from cache: hits (the answer cache and the options' situation cache) / (hits + calls).",
        "",
        "| arm | reached 0.8 | IQM env steps (95% CI) | vs baseline (95% CI) | P(fewer) | calls per run (median) | "
        "calls per 100k env steps (median) | calls saved vs baseline (median, range) | answered from cache (median) | "
        "threshold at the end | per seed (ratio to baseline) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for arm in dict.fromkeys(r.arm for r in runs):
        arm_runs = [r for r in runs if r.arm == arm]
        cells = comparison_cells(arm_runs, base)[:4]
        saved = [base_rate[r.seed] / calls_per_100k(r) for r in arm_runs if r.seed in base_rate and calls_per_100k(r)]
        saved_cell = f"{statistics.median(saved):.2f} ({min(saved):.2f}-{max(saved):.2f})" if saved else "-"
        thresholds = [r.scraped["cache_max_distance"] for r in arm_runs if "cache_max_distance" in r.scraped]
        calls = statistics.median(r.scraped.get("backend_calls", 0.0) for r in arm_runs)
        lines.append(
            f"| {arm} | {' | '.join(cells)} | {calls:,.0f} | "
            f"{statistics.median(calls_per_100k(r) for r in arm_runs):,.0f} | {saved_cell} | "
            f"{statistics.median(answered_from_cache(r) for r in arm_runs):.0%} | "
            f"{', '.join(f'{t:.0f}' for t in thresholds) or '-'} | {steps_per_seed(arm_runs, base)} |"
        )
    return "\n".join(lines) + "\n"


def main(
    source: Annotated[Path, typer.Argument(help="A learning-value run's JSON (benchmarks/results/*.json).")],
    baseline: Annotated[str, typer.Option(help="The arm without the cache.")] = "sim-l1",
    out: Annotated[Path | None, typer.Option(help="Markdown report (default: <source>-savings.md).")] = None,
) -> None:
    command = f"python -m benchmarks.cache_savings {source} --baseline {baseline}"
    text = report(load_runs(source), baseline, source, command)
    target = out or source.with_name(source.stem + "-savings.md")
    target.write_text(text)
    print(text)


if __name__ == "__main__":
    typer.run(main)
