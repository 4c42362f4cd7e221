"""`make e2e-compose`: the CPU stack for real, with docker compose, on this machine, as CI runs it.

1. A Docker Engine: the one `docker info` reaches, else a private `dockerd` started here (Debian's docker.io).
2. Images with no registry: Debian bases from mmdebstrap (`deploy/docker/base.sh`, `prometheus.sh`), Python wheels
   gathered into deploy/wheels/ from the package index and the local wheel directory, then `docker build` with no
   network (`PIP_NO_INDEX=1`).
3. `docker compose -f docker-compose.yml -f compose.cpu.yml up --wait` (every service healthy by its /readyz),
   then, through a real Prometheus: every service scraped, env steps advancing, the learner publishing versions.
4. An alert made to fire and resolve: stop the router, wait for `ALAServiceDown` to fire, start it, wait for the
   alert to clear. Then `docker compose down -v`, and check nothing of the project is left.
5. The scale-out overlay (`compose.scale.yml`): 3 routed NATS nodes with R3 streams, 2 actors (both scraped, through
   Prometheus's DNS discovery), 2 learner ranks; one NATS node killed, and training goes on (new versions).

The broker serves TLS with the CA it made, and each service logs in as its own user with JetStream rights by role:
the whole run is also the end-to-end test of both.

Grafana (no image reachable here) and vLLM (a GPU) are not started; their files are checked offline by tests/deploy.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from docker_host import BIN, ROOT, docker_env, log, sh, wait_for
from images import CPU, build

SERVICES = ["nats", "advisor", "router", "actor", "learner", "evaluator", "prometheus"]
JOBS = {"ala-advisor", "ala-router", "ala-actor", "ala-learner", "ala-evaluator"}
PROMETHEUS = "http://127.0.0.1:9090"
PROJECT = "ala-e2e"


def query(promql: str) -> list[dict[str, Any]]:
    url = f"{PROMETHEUS}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())["data"]["result"]
    except OSError:
        return []


def firing(alert: str) -> list[dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{PROMETHEUS}/api/v1/alerts", timeout=5) as response:
            alerts = json.loads(response.read())["data"]["alerts"]
    except OSError:
        return []
    return [a for a in alerts if a["labels"]["alertname"] == alert and a["state"] == "firing"]


def value(promql: str) -> float:
    result = query(promql)
    return float(result[0]["value"][1]) if result else float("nan")


def main() -> None:
    started = time.monotonic()
    env = docker_env()
    sh("bash", "deploy/docker/prometheus.sh", env=env)
    build(CPU, env)
    env |= {"ALA_PROMETHEUS_IMAGE": "ala-prometheus:local", "COMPOSE_PROJECT_NAME": PROJECT}
    compose = [str(BIN / "docker-compose"), "-f", "docker-compose.yml", "-f", "compose.cpu.yml"]
    with up_and_down(compose, env, "base"):
        log("docker compose up --wait")
        sh(*compose, "up", "--detach", "--wait", "--wait-timeout", "300", *SERVICES, env=env)
        log(sh(*compose, "ps", "--format", "{{.Service}}: {{.Status}}", env=env, capture=True).strip())
        wait_for(
            "Prometheus scraping every service",
            lambda: {r["metric"]["job"] for r in query('up{job=~"ala-.+"} == 1')} == JOBS,
            90,
        )
        first = value("sum(ala_actor_env_steps_total)")
        wait_for("env steps advancing", lambda: value("sum(ala_actor_env_steps_total)") > first + 1000, 120)
        wait_for("the learner publishing new policies", lambda: value("max(ala_learner_policy_version)") >= 3, 180)
        wait_for("no alert firing with everything up", lambda: not firing("ALAServiceDown"), 60)

        log("stopping the router")
        sh(*compose, "stop", "router", env=env)
        wait_for("ALAServiceDown firing for the router", lambda: firing("ALAServiceDown") != [], 120)
        (alert,) = firing("ALAServiceDown")
        assert alert["labels"]["job"] == "ala-router", alert
        sh(*compose, "start", "router", env=env)
        wait_for("ALAServiceDown resolved", lambda: not firing("ALAServiceDown"), 120)
    scale_out(env, [*compose, "-f", "compose.scale.yml"])
    left = sh("docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}", env=env, capture=True)
    assert not left.strip(), f"containers left behind: {left}"
    log(f"passed in {time.monotonic() - started:.0f} s")


@contextlib.contextmanager
def up_and_down(compose: list[str], env: dict[str, str], name: str) -> Iterator[None]:
    """The checks inside run against a stack that is taken down after them, whatever happens; on a failure the
    services' last log lines come first."""
    try:
        yield
    except BaseException:
        subprocess.run([*compose, "logs", "--tail", "40"], cwd=ROOT, env=env, check=False)
        raise
    finally:
        log(f"docker compose down -v, {name}")
        sh(*compose, "down", "--volumes", "--timeout", "20", env=env)


def scale_out(env: dict[str, str], compose: list[str]) -> None:
    """3 NATS nodes (R3), 2 actors, 2 learner ranks: every actor scraped, training going on after a node is killed."""
    services = ["nats", "nats-1", "nats-2", "router", "actor", "learner", "learner-1", "evaluator", "prometheus"]
    with up_and_down(compose, env, "scale-out overlay"):
        log("docker compose up --wait, scale-out overlay")
        sh(*compose, "up", "--detach", "--wait", "--wait-timeout", "300", "--scale", "actor=2", *services, env=env)
        wait_for("both actors scraped", lambda: len(query('up{job="ala-actor"} == 1')) == 2, 90)
        wait_for("the learner ranks publishing versions", lambda: value("max(ala_learner_policy_version)") >= 3, 240)
        log("killing NATS node nats-1")
        sh(*compose, "kill", "nats-1", env=env)
        before = value("max(ala_learner_policy_version)")
        wait_for(
            "training going on without nats-1",
            lambda: value("max(ala_learner_policy_version)") >= before + 3,
            240,
        )


if __name__ == "__main__":
    if shutil.which("docker") is None:
        raise SystemExit("docker is not installed: apt-get install docker.io (and mmdebstrap)")
    main()
