"""The README and the documentation site: a README short enough to read, and no link or path that leads nowhere.

Docs rot silently when code moves; these checks make a moved file or a renamed page fail CI instead. Fast, offline.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
README_MAX_LINES = 220

FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`([^`\n]+)`")
REPO_PATH = re.compile(r"[\w.-]+(?:/[\w.-]+)+/?")
"""A relative path of at least two parts: `deploy/lab.toml`, `benchmarks/results/`."""
FILE_SUFFIXES = {".py", ".md", ".toml", ".yml", ".yaml", ".json", ".txt", ".sh", ".png", ".env", ".lock"}
"""What a file must end with to count as one (`nvidia.com/gpu.product` is a node label, not a file)."""
RUNTIME_PREFIXES = (".ala/", "site/")
"""Made by running ALA or building the site, never in the repository."""


def prose(path: Path) -> str:
    """The text outside fenced code blocks: commands and diagrams are not links or paths to check."""
    return FENCE.sub("", path.read_text())


def repository_paths(text: str) -> set[str]:
    """Backticked text that names a repository file or folder. Conservative: anything with a placeholder, a glob,
    a space or a scheme is left alone; a pytest node id (`tests/x.py::test_y`) counts as its file."""
    found = set()
    for code in INLINE_CODE.findall(text):
        candidate = code.split("::", 1)[0]
        if candidate.startswith(("/", "http", *RUNTIME_PREFIXES)) or not REPO_PATH.fullmatch(candidate):
            continue
        if candidate.endswith("/") or Path(candidate).suffix in FILE_SUFFIXES:
            found.add(candidate)
    return found


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """A broken link or anchor between pages, or a page left out of the nav, fails the build (mkdocs.yml)."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_the_readme_stays_short() -> None:
    """The README is the quick start; the long story belongs in docs/."""
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_every_relative_link_in_the_readme_leads_to_a_file() -> None:
    targets = {link.split("#", 1)[0] for link in LINK.findall(prose(README))}
    relative = {target for target in targets if target and not target.startswith(("http://", "https://", "mailto:"))}
    assert relative, "no relative link found: is the pattern still right?"
    missing = sorted(target for target in relative if not (ROOT / target).exists())
    assert not missing, f"README.md links to missing files: {missing}"


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda page: str(page.relative_to(ROOT)))
def test_every_path_the_docs_name_exists(page: Path) -> None:
    missing = sorted(path for path in repository_paths(prose(page)) if not (ROOT / path).exists())
    assert not missing, f"{page.relative_to(ROOT)} names paths that do not exist: {missing}"


def test_the_path_pattern_catches_paths_and_nothing_else() -> None:
    text = (
        "`ala/envs/minigrid_expert.py` `deploy/lab.toml` `benchmarks/results/` `tests/a.py::test_b`"
        " `deploy/env/<service>.env` `deploy/grafana/dashboards/*.json` `/secrets/tls/ca.pem` `.ala/tls/ca.pem`"
        " `nvidia.com/gpu.product` `openai/gpt-oss-20b` `ala up --cluster 3` `http://dgx:8000/v1` `tests/gpu`"
    )
    expected = {"ala/envs/minigrid_expert.py", "deploy/lab.toml", "benchmarks/results/", "tests/a.py"}
    assert repository_paths(text) == expected
