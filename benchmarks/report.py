"""Where every benchmark's markdown report goes: written to its `--out` path and shown on the console."""

from __future__ import annotations

from pathlib import Path


def write_report(text: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
