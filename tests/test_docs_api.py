"""The Python API page's example runs as written: train, save, load, evaluate, act (docs/api.md)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_the_python_api_example_trains_saves_loads_evaluates_and_acts(tmp_path: Path) -> None:
    (example,) = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.DOTALL)
    result = subprocess.run(
        [sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "empty-5x5.pt").exists()
    evaluated = re.search(r"return (\d\.\d+)\n", result.stdout)
    played = re.search(r"greedy episode return (\d\.\d+)", result.stdout)
    assert evaluated and played, result.stdout
    # 20k steps learn Empty-5x5 (an optimal episode returns ~0.96): the example shows a policy that works.
    assert float(evaluated.group(1)) > 0.8 and float(played.group(1)) > 0.8, result.stdout
