"""Where every benchmark's markdown report goes (written to its `--out` path and shown on the console), and the
provenance every report carries: which code ran, where, when, how it was started and with which settings.

Every benchmark that writes a report puts `provenance(...)` right under the report's title:

    lines = ["# Title", "", provenance(command_line(), settings), "", ...]

`settings` maps each arm (or configuration) to the settings it runs with that differ from the defaults, as the
`ALA_*` environment variables it sets (`{"exact": {}, "none": {"ALA_LEARNER_CORRECTION": "none"}}`); plumbing that
changes from run to run without changing what is measured (broker URLs, metrics ports, scratch directories, seeds)
is left out. A JSON output embeds the same facts as `provenance_dict(...)`.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

IGNORED = (".ala/", "benchmarks/results/")
"""Paths whose changes leave the tree clean: run state and the reports themselves. Reports are outputs, not code:
counting them would make every report after the first of a series (or after a `git mv` of old ones) say dirty."""

SECRET = re.compile(r"PASSWORD|TOKEN|SECRET|API_KEY|CREDS", re.IGNORECASE)
SECRET_IN_JSON = re.compile(r'("(?:api_key|password|token)"\s*:\s*)"[^"]*"', re.IGNORECASE)
"""Reports are committed: a password or key in the environment (or in an advisor's JSON spec) must not be."""

SHOWN_DIRTY = 5


def write_report(text: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


def command_line() -> str:
    """This process's command line as typed (`python -m benchmarks.wire --hops 5000`): the interpreter by its name
    only (its path says nothing about the code), every argument quoted as a shell needs it."""
    interpreter, *arguments = sys.orig_argv
    return shlex.join([Path(interpreter).name, *arguments])


def provenance_dict(command: str, settings: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """What `provenance` shows, as plain data for a JSON output: `commit` (short hash, or None outside a git
    checkout), `dirty` (None when unknown) and `dirty_paths` (changes outside `IGNORED`, untracked files included),
    `date` (ISO 8601, UTC), `cores` (`os.cpu_count()`), `machine`, `python`, `command`, `environment` (the `ALA_*`
    variables of this process, which every arm inherits) and `settings` (per arm, as given)."""
    commit = _git("rev-parse", "--short", "HEAD")
    commit = None if commit is None else commit.strip()
    status = _git("status", "--porcelain")
    dirty_paths = None if status is None else _changed_paths(status)
    return {
        "commit": commit,
        "dirty": None if dirty_paths is None else bool(dirty_paths),
        "dirty_paths": dirty_paths or [],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "command": command,
        "environment": _redacted({name: value for name, value in os.environ.items() if name.startswith("ALA_")}),
        "settings": {arm: _redacted(values) for arm, values in (settings or {}).items()},
    }


def provenance(command: str, settings: dict[str, dict[str, str]] | None = None) -> str:
    """The provenance block (markdown, no trailing newline) that goes right under a report's title: commit and
    whether the tree was dirty, date (UTC), cores, machine, Python, the exact command, the `ALA_*` variables of
    this process, and, where `settings` is given, a table of each arm's settings that differ from the defaults
    (`{arm: {"ALA_...": value}}`; an arm with none shows "none")."""
    facts = provenance_dict(command, settings)
    lines = [
        "Provenance:",
        "",
        f"- commit: {_commit_line(facts)}",
        f"- date: {facts['date']}",
        f"- machine: {facts['cores']} cores (`os.cpu_count()`), {facts['machine']}, Python {facts['python']}",
        f"- command: {_code(facts['command'])}",
        "- `ALA_*` variables in the benchmark's environment"
        + (" (every arm inherits them): " if facts["settings"] else ": ")
        + (_assignments(facts["environment"]) or "none"),
    ]
    if facts["settings"]:
        lines += ["", "| arm | settings that differ from the defaults |", "|---|---|"]
        lines += [
            f"| {_cell(arm)} | {_cell(_assignments(values) or 'none')} |" for arm, values in facts["settings"].items()
        ]
    return "\n".join(lines)


def _git(*arguments: str) -> str | None:
    """A git command's output in this repository; None where there is no git or no checkout (an installed copy,
    an image without .git), so that a benchmark still runs and its report says the commit is unknown."""
    try:
        result = subprocess.run(["git", *arguments], cwd=REPO, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout  # unstripped: a porcelain line starts with its status, which may be a space


def _changed_paths(status: str) -> list[str]:
    """The paths in `git status --porcelain` outside `IGNORED` (a rename counts unless both its ends are)."""
    changed = []
    for line in status.splitlines():
        paths = line[3:].split(" -> ")
        if not all(path.strip('"').startswith(IGNORED) for path in paths):
            changed.append(line[3:])
    return changed


def _commit_line(facts: dict[str, Any]) -> str:
    if facts["commit"] is None:
        return "unknown (not a git checkout)"
    if facts["dirty"] is None:
        return f"`{facts['commit']}`, tree state unknown"
    if not facts["dirty"]:
        return f"`{facts['commit']}`, clean tree (changes under {' and '.join(IGNORED)} aside)"
    paths = facts["dirty_paths"]
    shown = ", ".join(paths[:SHOWN_DIRTY]) + (
        f" and {len(paths) - SHOWN_DIRTY} more" if len(paths) > SHOWN_DIRTY else ""
    )
    return f"`{facts['commit']}`, dirty tree: {len(paths)} changed path{'s' if len(paths) > 1 else ''} ({shown})"


def _redacted(values: dict[str, str]) -> dict[str, str]:
    return {
        name: "********" if SECRET.search(name) and value else SECRET_IN_JSON.sub(r'\1"********"', value)
        for name, value in sorted(values.items())
    }


def _assignments(values: dict[str, str]) -> str:
    return ", ".join(_code(f"{name}={value}") for name, value in values.items())


def _code(text: str) -> str:
    """A markdown code span that survives backticks in `text` (a fence one longer than its longest run)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    padding = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{padding}{text}{padding}{fence}"


def _cell(text: str) -> str:
    """`text` inside a markdown table cell: a pipe would end the cell."""
    return text.replace("|", "\\|")
