"""`ala up`: the broker and the services as separate processes, stopped together.

Children get their own session, so a Ctrl-C reaches only this supervisor, which then stops the services first
(SIGTERM, so they drain) and the broker last.

When a service dies on its own (a crashed task exits its process with status 1), it is restarted after a backoff
(1 s, 2 s, 4 s, ... up to 30 s), at most `max_restarts` times within `restart_window_s`; the others keep running,
since every service reconnects and resumes on its own (the learner from its checkpoint, actors from the newest
weights). One restart too many stops the whole stack with exit status 1: a service that keeps crashing needs a
person, and a half-running stack is worse than a stopped one. `max_restarts = 0` stops everything at the first
death. Container restart policies (`on-failure`) act on the same exit status in Compose and Kubernetes.

The embedded broker (every node of it, with `ALA_BROKER_CLUSTER_SIZE` > 1) is watched the same way: a node that
dies is restarted at once on the same ports, store and passwords (the services reconnect by themselves; a cluster
node catches up from its peers), at most `max_restarts` times within the window.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ala.broker import BrokerCluster, BrokerError, free_port
from ala.bus import Bus
from ala.config import BrokerSettings, NatsSettings
from ala.metrics import bus_metrics
from ala.security import STREAMS_OWNER, Credentials
from ala.tls import TlsFiles

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.2
STOP_TIMEOUT_S = 15.0
MAX_BACKOFF_S = 30.0


class RestartPolicy(BaseSettings):
    """What `ala up` does when a service dies (`ALA_UP_*`)."""

    model_config = SettingsConfigDict(env_prefix="ALA_UP_", extra="ignore")

    max_restarts: int = Field(3, ge=0, description="Restarts of one service within the window before all stop.")
    restart_window_s: float = Field(300.0, gt=0, description="Restarts older than this no longer count.")
    first_backoff_s: float = Field(1.0, ge=0, description="Wait before the first restart; doubles each time.")

    def allows_another(self, restarts: deque[float], now: float) -> bool:
        """Forget `restarts` (monotonic times) older than the window; True while fewer than `max_restarts` remain."""
        while restarts and now - restarts[0] > self.restart_window_s:
            restarts.popleft()
        return len(restarts) < self.max_restarts


@dataclass
class Child:
    name: str
    """The service, or `learner-<rank>` for one of several learner ranks."""
    process: subprocess.Popen[bytes]
    restarts: deque[float] = field(default_factory=deque)
    """Monotonic times of recent restarts."""
    restart_at: float | None = None
    """When a dead child is due to start again."""


@dataclass
class Supervisor:
    services: Sequence[str]
    broker_settings: BrokerSettings | None
    """None: use the broker at ALA_NATS_URL instead of starting one."""
    duration_s: float | None = None
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    learner_ranks: int = 1
    """Learner processes training together on torch.distributed; when one dies, all are restarted (as torchrun)."""
    children: dict[str, Child] = field(default_factory=dict)
    _env: dict[str, str] = field(default_factory=dict)
    _credentials: Credentials | None = None
    _broker: BrokerCluster | None = None
    _broker_restarts: deque[float] = field(default_factory=deque)
    _stopping: bool = False

    def run(self) -> int:
        signal.signal(signal.SIGINT, self._request_stop)
        signal.signal(signal.SIGTERM, self._request_stop)
        self._env = dict(os.environ)
        broker = None
        if self.broker_settings is not None:
            broker = self._broker = BrokerCluster(self.broker_settings).start()
            self._env["ALA_NATS_URL"] = broker.url
            self._credentials = broker.credentials
            if self.broker_settings.cluster_size > 1 and "ALA_NATS_REPLICAS" not in self._env:
                # Replicated streams, so that losing any one node loses no acknowledged chunk.
                self._env["ALA_NATS_REPLICAS"] = str(self.broker_settings.replicas)
            if self.broker_settings.tls_dir is not None:  # the services trust the lab CA the broker serves with
                self._env["ALA_NATS_TLS_CA_FILE"] = str(TlsFiles(self.broker_settings.tls_dir.resolve()).ca)
            for node in broker.nodes:
                log.info("broker at %s, monitoring %s", node.url, node.monitor_url)
            if broker.credentials is not None:
                self._provision(broker.url, broker.credentials)
        self._env |= self._rank_env()
        try:
            for name in self._child_names():
                self.children[name] = Child(name, self._start(name))
            return self._watch()
        finally:
            self._stop_children()
            if broker is not None:
                broker.stop()
            log.info("all stopped")

    def _provision(self, url: str, credentials: Credentials) -> None:
        """Create the streams and bucket as their owner before any service starts: with permissions on, only the
        owner may (`ala.security`), and a run without a learner (`ala up --service router`) must not wait for one."""
        settings = NatsSettings(
            url=url,
            user=STREAMS_OWNER,
            password_file=str(credentials.password_file(STREAMS_OWNER)),
            replicas=int(self._env.get("ALA_NATS_REPLICAS", "1")),
            tls_ca_file=self._env.get("ALA_NATS_TLS_CA_FILE", ""),
        )

        async def provision() -> None:
            bus = await Bus.connect(settings, "ala-up-provisioner", bus_metrics("up", CollectorRegistry()))
            try:
                await bus.provision()
            finally:
                await bus.drain()

        asyncio.run(provision())

    def _child_names(self) -> list[str]:
        names = []
        for service in self.services:
            ranked = service == "learner" and self.learner_ranks > 1
            names += [f"learner-{rank}" for rank in range(self.learner_ranks)] if ranked else [service]
        return names

    def _rank_env(self) -> dict[str, str]:
        """Where the learner ranks meet: torchrun's variables, rank 0 hosting the rendezvous on a free port."""
        if self.learner_ranks == 1:
            return {}
        return {"WORLD_SIZE": str(self.learner_ranks), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}

    def _start(self, name: str) -> subprocess.Popen[bytes]:
        service, _, rank = name.partition("-")
        # Each service connects as its own user when the broker enforces permissions (ala/security.py).
        env = self._env | (self._credentials.env(service) if self._credentials is not None else {})
        if rank:  # a learner rank; LOCAL_RANK gives it its own metrics port (ALA_LEARNER_METRICS_PORT + rank)
            env |= {"RANK": rank, "LOCAL_RANK": rank}
        process = subprocess.Popen([sys.executable, "-m", "ala", service], env=env, start_new_session=True)
        log.info("started %s (pid %d)", name, process.pid)
        return process

    def _request_stop(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _watch(self) -> int:
        deadline = None if self.duration_s is None else time.monotonic() + self.duration_s
        while not self._stopping:
            now = time.monotonic()
            if not self._keep_broker_up(now):
                return 1
            for child in self.children.values():
                if child.restart_at is not None:
                    if now >= child.restart_at:
                        child.process, child.restart_at = self._start(child.name), None
                elif child.process.poll() is not None:
                    if not self._schedule_restart(child, now):
                        return 1
                    self._kill_other_ranks(child)
            if deadline is not None and now >= deadline:
                break
            time.sleep(POLL_INTERVAL_S)
        return 0

    def _keep_broker_up(self, now: float) -> bool:
        """Restart an embedded broker node that died (same ports, store and passwords: the services reconnect on
        their own, JetStream keeps what it acknowledged), at most `max_restarts` times within the window."""
        if self._broker is None:
            return True
        for node in self._broker.nodes:
            if node.process is None or node.process.poll() is None:
                continue
            status = node.process.returncode
            if not self.policy.allows_another(self._broker_restarts, now):
                log.error(
                    "the broker exited with status %s after %d restart(s); stopping", status, len(self._broker_restarts)
                )
                return False
            self._broker_restarts.append(now)
            log.warning(
                "the broker exited with status %s; restarting it (restart %d of %d)",
                status,
                len(self._broker_restarts),
                self.policy.max_restarts,
            )
            try:
                node.start()
            except BrokerError as exc:
                log.error("the broker did not come back: %s", exc)
                return len(self._broker_restarts) < self.policy.max_restarts  # the next poll tries again
        return True

    def _schedule_restart(self, child: Child, now: float) -> bool:
        """Plan a restart of a child that died; False when it has used up its restarts."""
        status = child.process.returncode
        if not self.policy.allows_another(child.restarts, now):
            log.error(
                "%s exited with status %s after %d restart(s) in %.0fs; stopping the stack",
                child.name,
                status,
                len(child.restarts),
                self.policy.restart_window_s,
            )
            return False
        backoff = min(MAX_BACKOFF_S, self.policy.first_backoff_s * 2 ** len(child.restarts))
        child.restarts.append(now)
        child.restart_at = now + backoff
        log.warning(
            "%s exited with status %s; restarting it in %.1fs (restart %d of %d)",
            child.name,
            status,
            backoff,
            len(child.restarts),
            self.policy.max_restarts,
        )
        return True

    def _kill_other_ranks(self, dead: Child) -> None:
        """The other learner ranks would block in their next collective until it times out: kill them now, so the
        whole group restarts from its checkpoints together (their unacknowledged chunks are redelivered)."""
        if not dead.name.startswith("learner-"):
            return
        for child in self.children.values():
            if child.name.startswith("learner-") and child is not dead and child.process.poll() is None:
                log.warning("%s died: stopping %s too, to restart the learner ranks together", dead.name, child.name)
                child.process.kill()

    def _stop_children(self) -> None:
        running = [c.process for c in self.children.values() if c.restart_at is None]
        for process in running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for child in self.children.values():
            if child.restart_at is not None:
                continue
            try:
                child.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs; killing it", child.name, STOP_TIMEOUT_S)
                child.process.kill()
                child.process.wait()
