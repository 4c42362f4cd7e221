"""benchmarks.cache_savings: calls saved per env step and learning kept, from a learning-value run's records."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from benchmarks.cache_savings import load_runs, report
from benchmarks.learning import Run


def _run(arm: str, seed: int, steps: int | None, calls: float, hits: float, env_steps: float) -> Run:
    scraped = {"backend_calls": calls, "cache_hits": hits, "env_steps": env_steps, "cache_max_distance": 2.0}
    curve = [(int(env_steps), 100.0, 0.9 if steps else 0.1)]
    return Run("MiniGrid-DoorKey-8x8-v0", arm, seed, steps, None, "threshold" if steps else "steps", curve, scraped)


def _report_row(tmp_path: Path, runs: list[Run], baseline: str, arm: str) -> str:
    """The arm's row of the report, read back from the runs written as a learning-value run writes them."""
    path = tmp_path / "runs.json"
    path.write_text(json.dumps([asdict(r) for r in runs]))
    text = report(load_runs(path), baseline, path, "test")
    (row,) = [line for line in text.splitlines() if line.startswith(f"| {arm} |")]
    return row


def test_calls_saved_are_counted_per_env_step_and_learning_kept_per_seed(tmp_path: Path) -> None:
    runs = [
        _run("sim", 1, 200_000, calls=400, hits=0, env_steps=200_000),
        _run("sim-cache", 1, 100_000, calls=50, hits=150, env_steps=100_000),  # half the steps, an eighth of the calls
        _run("sim", 2, 300_000, calls=600, hits=0, env_steps=300_000),
        _run("sim-cache", 2, None, calls=200, hits=200, env_steps=400_000),
    ]
    row = _report_row(tmp_path, runs, baseline="sim", arm="sim-cache")
    # Per 100k env steps: the baseline calls 200 on both seeds; the cache 50 and 50: 4x saved on each.
    assert "| 4.00 (4.00-4.00) |" in row and "| 62% |" in row  # answered from cache: 0.75 and 0.5
    assert "s1: 100,000 (0.50)" in row and "s2: >=400,000 (>=1.33)" in row


def test_option_answers_from_the_situation_cache_count_as_answered_from_cache(tmp_path: Path) -> None:
    options = _run("options", 1, 50_000, calls=10, hits=0, env_steps=50_000)
    options.scraped["situation_hits"] = 30.0  # strategic advice: one call per situation, the rest from its cache
    runs = [_run("options-nocache", 1, 50_000, calls=40, hits=0, env_steps=50_000), options]
    row = _report_row(tmp_path, runs, baseline="options-nocache", arm="options")
    assert "| 4.00 (4.00-4.00) |" in row and "| 75% |" in row
