"""`ala up`: the broker and the services as separate processes, stopped together.

Children get their own session, so a Ctrl-C reaches only this supervisor, which then stops the services first
(SIGTERM, so they drain) and the broker last. If any service dies on its own, everything is stopped and the exit
status says so: a half-running stack is worse than a stopped one.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ala.broker import EmbeddedBroker
from ala.config import BrokerSettings

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.2
STOP_TIMEOUT_S = 15.0


@dataclass
class Supervisor:
    services: Sequence[str]
    broker_settings: BrokerSettings | None
    """None: use the broker at ALA_NATS_URL instead of starting one."""
    duration_s: float | None = None
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _stopping: bool = False

    def run(self) -> int:
        signal.signal(signal.SIGINT, self._request_stop)
        signal.signal(signal.SIGTERM, self._request_stop)
        env = dict(os.environ)
        broker = None
        if self.broker_settings is not None:
            broker = EmbeddedBroker(self.broker_settings).start()
            env["ALA_NATS_URL"] = broker.url
            log.info("broker at %s, monitoring %s", broker.url, broker.monitor_url)
        try:
            for name in self.services:
                self.children[name] = subprocess.Popen(
                    [sys.executable, "-m", "ala", name], env=env, start_new_session=True
                )
                log.info("started %s (pid %d)", name, self.children[name].pid)
            return self._watch()
        finally:
            self._stop_children()
            if broker is not None:
                broker.stop()
            log.info("all stopped")

    def _request_stop(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _watch(self) -> int:
        deadline = None if self.duration_s is None else time.monotonic() + self.duration_s
        while not self._stopping:
            for name, child in self.children.items():
                if child.poll() is not None:
                    log.error("%s exited with status %s; stopping the stack", name, child.returncode)
                    return 1
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL_S)
        return 0

    def _stop_children(self) -> None:
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for name, child in self.children.items():
            try:
                child.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs; killing it", name, STOP_TIMEOUT_S)
                child.kill()
                child.wait()
