"""The answer cache of option advice: one option per situation, remembered across runs.

An env has a few dozen situations (`ala.envs.options`), so an LLM that answers per situation is asked a few dozen
times per run, and none at all once its answers are on disk. The cache is keyed by env and situation, in a file per
(advisor, model, prompt version): a new model or prompt starts empty. It is bounded (least recently used
out), counted (`ala_advisor_situation_cache_{hits,misses}`), and written atomically after each new answer: a few
dozen small writes per run. `ala advisor warm` fills it before a run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from pathlib import Path

log = logging.getLogger(__name__)


def cache_file(directory: Path, advisor: str, model: str, prompt_version: str) -> Path:
    """The file of one advisor's answers for one model and prompt (keys inside name the env and the situation)."""
    identity = hashlib.sha1(json.dumps([model, prompt_version]).encode()).hexdigest()[:12]
    return directory / f"{advisor}-{identity}.json"


class SituationCache:
    def __init__(self, capacity: int, path: Path | None = None) -> None:
        self.capacity = capacity
        self.path = path
        self.answers: OrderedDict[str, tuple[int, str]] = OrderedDict()
        """Situation key -> (option, the situation's name: for people reading the file)."""
        if path is not None and path.exists():
            self._load(path)

    def get(self, key: str) -> int | None:
        found = self.answers.get(key)
        if found is None:
            return None
        self.answers.move_to_end(key)
        return found[0]

    def put(self, key: str, option: int, name: str = "") -> None:
        self.answers[key] = (option, name)
        self.answers.move_to_end(key)
        while len(self.answers) > self.capacity:
            self.answers.popitem(last=False)
        if self.path is not None:
            self._save(self.path)

    def __len__(self) -> int:
        return len(self.answers)

    def _load(self, path: Path) -> None:
        try:
            stored = json.loads(path.read_text())
            for key, (option, name) in list(stored.items())[-self.capacity :]:
                self.answers[str(key)] = (int(option), str(name))
        except (ValueError, TypeError, OSError) as exc:
            # A damaged cache costs LLM calls, not the run: start empty (the next answer rewrites it).
            log.warning("situation cache %s unreadable (%s): starting empty", path, exc)
            self.answers.clear()

    def _save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps({key: list(value) for key, value in self.answers.items()}))
        os.replace(partial, path)
