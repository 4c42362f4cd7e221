"""Deployment checks run the real tools: docker compose, check-jsonschema, promtool, helm, kubernetes-validate.
`make setup` installs the Python ones into the venv (helm too: `make tools`); promtool is Debian's `prometheus`
package, which `.ci/run` installs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def tool(name: str) -> str:
    """The tool's path: the venv's bin first, then PATH. A missing tool fails the test, saying how to install it."""
    found = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if found is None:
        pytest.fail(f"{name} is not installed: run `make setup tools` (promtool: apt-get install prometheus)")
    return found


def run(*command: str, stdin: str | None = None, cwd: Path = ROOT, env_host: str = "") -> str:
    """Run a tool, failing the test with its output if it fails; `env_host` sets ALA_NATS_HOST (lab files)."""
    env = os.environ | ({"ALA_NATS_HOST": env_host} if env_host else {})
    result = subprocess.run(command, input=stdin, capture_output=True, text=True, cwd=cwd, timeout=120, env=env)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout
