"""`/healthz` and `/readyz` beside `/metrics`, on every service's metrics port, for Docker healthchecks and
Kubernetes probes.

- `/healthz` (liveness): the service's event loop still turns. The HTTP server runs in its own thread, so it
  would answer even if the loop were stuck: the check is that the loop ticked within `stale_after_s`. A failing
  liveness probe restarts the container.
- `/readyz` (readiness): every named check passes: connected to NATS, JetStream streams provisioned, and what
  the service adds (the advisor: its models loaded; the actor: a policy to act with). 503 with the failing
  checks otherwise. A failing readiness probe takes the pod out of service (and, in compose, holds back
  `depends_on: service_healthy`) without restarting it: a broker restart must not restart every service.

Each answer is a small JSON object, e.g. `{"ready": false, "failing": ["nats"]}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

log = logging.getLogger(__name__)

Check = Callable[[], bool]


class Health:
    """Liveness from the event loop's ticks, readiness from named checks."""

    def __init__(self, stale_after_s: float = 10.0) -> None:
        self.stale_after_s = stale_after_s
        self.checks: dict[str, Check] = {}
        self.last_tick = time.monotonic()

    def add_check(self, name: str, check: Check) -> None:
        self.checks[name] = check

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    async def keep_ticking(self, interval_s: float = 1.0) -> None:
        """Run on the service's loop: proves to `/healthz` that the loop is not stuck."""
        while True:
            self.tick()
            await asyncio.sleep(interval_s)

    def live(self) -> bool:
        return time.monotonic() - self.last_tick < self.stale_after_s

    def failing(self) -> list[str]:
        failing = []
        for name, check in self.checks.items():
            try:
                passed = check()
            except Exception:  # a check that raises is a check that fails, and says why in the log
                log.exception("readiness check %s raised", name)
                passed = False
            if not passed:
                failing.append(name)
        return failing


def _json(start_response: Callable[..., Any], status: str, body: dict[str, object]) -> Iterable[bytes]:
    payload = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
    return [payload]


def health_app(health: Health, registry: CollectorRegistry) -> Callable[..., Iterable[bytes]]:
    """A WSGI app: `/healthz`, `/readyz`, and everything else is prometheus-client's `/metrics`."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            live = health.live()
            return _json(start_response, "200 OK" if live else "503 Service Unavailable", {"live": live})
        if path == "/readyz":
            failing = health.failing()
            status = "503 Service Unavailable" if failing else "200 OK"
            return _json(start_response, status, {"ready": not failing, "failing": failing})
        return metrics(environ, start_response)

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would flood the log."""


def serve_health_and_metrics(
    health: Health, registry: CollectorRegistry, host: str, port: int
) -> tuple[WSGIServer, threading.Thread]:
    """Serve `/metrics`, `/healthz` and `/readyz` on http://host:port in a daemon thread; port 0 picks a free one."""
    server = make_server(
        host, port, health_app(health, registry), server_class=ThreadingWSGIServer, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    log.info("metrics, healthz and readyz on http://%s:%d", host, server.server_port)
    return server, thread
