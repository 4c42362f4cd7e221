"""The Docker Engine and shell helpers the deployment scripts share (`e2e_compose.py`, `images.py`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PRIVATE_SOCKET = "/run/ala-docker.sock"


def log(message: str) -> None:
    print(f"[{Path(sys.argv[0]).stem} {time.strftime('%H:%M:%S')}] {message}", flush=True)


def sh(*command: str, env: dict[str, str] | None = None, capture: bool = False, timeout_s: float | None = None) -> str:
    try:
        result = subprocess.run(
            command, cwd=ROOT, env=env, text=True, capture_output=capture, check=False, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        raise SystemExit(f"timed out after {timeout_s:.0f} s: {' '.join(command)}") from None
    if result.returncode != 0:
        detail = f"\n{result.stdout}\n{result.stderr}" if capture else ""
        raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}{detail}")
    return result.stdout if capture else ""


def wait_for(what: str, condition: Callable[[], bool], timeout_s: float, every_s: float = 2.0) -> None:
    """Poll `condition` until it holds; fail with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)
    log(f"ok: {what}")


def docker_env() -> dict[str, str]:
    """The environment whose `docker` reaches a running engine; starts a private dockerd if none answers."""
    env = dict(os.environ)
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0:
        return env
    env["DOCKER_HOST"] = f"unix://{PRIVATE_SOCKET}"
    if subprocess.run(["docker", "info"], env=env, capture_output=True, check=False).returncode != 0:
        log("starting a private dockerd")
        logfile = open("/tmp/ala-dockerd.log", "a")  # noqa: SIM115  (the daemon outlives this script)
        subprocess.Popen(
            [
                "dockerd",
                "--data-root=/var/lib/ala-docker",
                "--exec-root=/run/ala-docker",
                f"-H=unix://{PRIVATE_SOCKET}",
                "--pidfile=/run/ala-docker.pid",
                "--default-ulimit=nofile=4096:4096",
            ],
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(
            "dockerd to answer",
            lambda: subprocess.run(["docker", "info"], env=env, capture_output=True, check=False).returncode == 0,
            60,
            1,
        )
    return env
