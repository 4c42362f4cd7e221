"""What every service does around its own job: serve /metrics, connect to NATS, provision JetStream, heartbeat,
stop cleanly on SIGINT/SIGTERM and drain.

A service's `main` reads:

    async def serve(settings: RouterSettings, stop: asyncio.Event) -> None:
        async with ServiceRuntime(settings, METRICS, REGISTRY) as runtime:
            ...subscribe with runtime.bus...
            await stop.wait()

    def main() -> None:
        run_until_signalled(serve, RouterSettings())
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, suppress
from typing import Self, TypeVar

from prometheus_client import CollectorRegistry

from ala import __version__
from ala.bus import Bus
from ala.config import ServiceSettings
from ala.metrics import ServiceMetrics, serve_metrics
from protos import ActionSpace, Heartbeat
from protos.subjects import heartbeat_subject

log = logging.getLogger(__name__)

S = TypeVar("S", bound=ServiceSettings)


class ServiceRuntime:
    """An async context that holds a service's connection, heartbeat task and metrics server."""

    def __init__(
        self,
        settings: ServiceSettings,
        metrics: ServiceMetrics,
        registry: CollectorRegistry,
        action_space: ActionSpace | None = None,
        num_bots: int = 0,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.registry = registry
        self.action_space = action_space
        self.num_bots = num_bots
        self.started_at = time.time()
        self.metrics_port = 0
        self._bus: Bus | None = None
        self._stack = AsyncExitStack()
        self._heartbeat_seq = 0

    @property
    def service(self) -> str:
        return self.settings.service

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            raise RuntimeError("ServiceRuntime is not entered")
        return self._bus

    async def __aenter__(self) -> Self:
        settings = self.settings
        server, _ = serve_metrics(self.registry, settings.metrics_host, settings.metrics_port)
        self._stack.callback(server.shutdown)
        self.metrics_port = server.server_port
        self.metrics.up.labels(__version__).set(1)
        self._stack.callback(self.metrics.up.labels(__version__).set, 0)

        name = f"ala-{self.service}-{settings.instance}"
        self._bus = await Bus.connect(settings.nats, name, self.metrics.bus)
        self._stack.push_async_callback(self._bus.drain)
        await self._bus.provision()

        heartbeat = asyncio.create_task(self._heartbeat_loop(), name=f"{self.service}-heartbeat")
        self._stack.push_async_callback(_cancel, heartbeat)
        log.info("%s %s up (run %s, ala %s)", self.service, settings.instance, settings.run, __version__)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()
        log.info("%s %s stopped", self.service, self.settings.instance)

    def heartbeat(self) -> Heartbeat:
        now = time.time()
        self._heartbeat_seq += 1
        return Heartbeat(
            run=self.settings.run,
            service=self.service,
            instance=self.settings.instance,
            software_version=__version__,
            seq=self._heartbeat_seq,
            started_at=self.started_at,
            created_at=now,
            host=socket.gethostname(),
            action_space=self.action_space,
            num_bots=self.num_bots,
        )

    async def _heartbeat_loop(self) -> None:
        subject = heartbeat_subject(self.settings.run, self.service, self.settings.instance)
        while True:
            if await self.bus.publish(subject, self.heartbeat(), kind="heartbeat"):
                self.metrics.heartbeats.inc()
            await asyncio.sleep(self.settings.heartbeat_interval_s)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_until_signalled(serve: Callable[[S, asyncio.Event], Awaitable[None]], settings: S) -> None:
    """Run `serve(settings, stop)` until SIGINT or SIGTERM sets `stop`."""
    configure_logging(settings.log_level)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    asyncio.run(main())
