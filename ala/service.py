"""What every service does around its own job: serve /metrics, /healthz and /readyz (`health.py`), connect to
NATS, provision JetStream, heartbeat, supervise its long-lived tasks, stop cleanly on SIGINT/SIGTERM and drain.

A service's `main` reads:

    async def serve(settings: RouterSettings, stop: asyncio.Event) -> None:
        async with ServiceRuntime(settings, METRICS, REGISTRY) as runtime, ServiceTasks() as tasks:
            ...subscribe with runtime.bus, start long-lived work with tasks.start(coroutine, name)...
            await stop.wait()
            await tasks.stop_all()

    def main() -> None:
        run_until_signalled(serve, RouterSettings())

Supervision: a task that raises makes its `ServiceTasks` group cancel the others and raise; `run_until_signalled`
logs every traceback and exits with status 1, which `ala up` and container restart policies act on. A service
never heartbeats on with a dead loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack, suppress
from typing import Any, Self, TypeVar

from prometheus_client import CollectorRegistry

from ala import __version__
from ala.bus import Bus
from ala.config import ServiceSettings
from ala.health import Health, serve_health_and_metrics
from ala.metrics import ServiceMetrics
from ala.security import manages_streams
from protos import ActionSpace, Heartbeat, PolicySpec
from protos.subjects import heartbeat_subject

log = logging.getLogger(__name__)

S = TypeVar("S", bound=ServiceSettings)
T = TypeVar("T")


class ServiceRuntime:
    """An async context that holds a service's connection, heartbeat task and metrics server."""

    def __init__(
        self,
        settings: ServiceSettings,
        metrics: ServiceMetrics,
        registry: CollectorRegistry,
        action_space: ActionSpace | None = None,
        num_bots: int = 0,
        policy: PolicySpec | None = None,
        policy_backend: str = "",
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.registry = registry
        self.action_space = action_space
        self.num_bots = num_bots
        self.policy = policy
        self.policy_backend = policy_backend
        self.env_steps: Callable[[], int] | None = None
        """Actors: reports the env steps taken, for heartbeats."""
        self.bias_bounds: Callable[[], tuple[float, float]] | None = None
        """Routers: (b_max, max_ttl_s) as configured now, for heartbeats: actors hold every bias to them."""
        self.advisor_reach: Callable[[], dict[str, float]] | None = None
        """Routers: each advisor's reach now, for heartbeats."""
        self.reads: list[str] = []
        """Advisors: the parts of a digest their backends read, for heartbeats."""
        self.started_at = time.time()
        self.metrics_port = 0
        self.health = Health(settings.liveness_timeout_s)
        """Services add their own readiness checks (`runtime.health.add_check`) to the base ones: nats, streams."""
        self._provisioned = False
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
        self.health.add_check("nats", lambda: self._bus is not None and self._bus.is_connected)
        self.health.add_check("streams", lambda: self._provisioned)
        server, _ = serve_health_and_metrics(self.health, self.registry, settings.metrics_host, settings.metrics_port)
        self._stack.callback(server.shutdown)
        self.metrics_port = server.server_port
        self.metrics.up.labels(__version__).set(1)
        self._stack.callback(self.metrics.up.labels(__version__).set, 0)

        name = f"ala-{self.service}-{settings.instance}"
        self._bus = await Bus.connect(settings.nats, name, self.metrics.bus)
        self._stack.push_async_callback(self._bus.drain)
        if manages_streams(settings.nats.user):
            await self._bus.provision()
        else:  # only the streams' owner may create them (`ala.security`): wait, not ready, until it has
            await self._bus.await_streams()
        self._provisioned = True

        heartbeat = asyncio.create_task(self._heartbeat_loop(), name=f"{self.service}-heartbeat")
        self._stack.push_async_callback(_cancel, heartbeat)
        ticking = asyncio.create_task(self.health.keep_ticking(), name=f"{self.service}-liveness")
        self._stack.push_async_callback(_cancel, ticking)
        log.info("%s %s up (run %s, ala %s)", self.service, settings.instance, settings.run, __version__)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()
        log.info("%s %s stopped", self.service, self.settings.instance)

    def heartbeat(self) -> Heartbeat:
        now = time.time()
        b_max, max_ttl_s = self.bias_bounds() if self.bias_bounds else (0.0, 0.0)
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
            policy=self.policy,
            env_steps=self.env_steps() if self.env_steps else 0,
            policy_backend=self.policy_backend,
            b_max=b_max,
            max_ttl_s=max_ttl_s,
            reach=self.advisor_reach() if self.advisor_reach else {},
            reads=self.reads,
        )

    async def _heartbeat_loop(self) -> None:
        subject = heartbeat_subject(self.settings.run, self.service, self.settings.instance)
        while True:
            if await self.bus.publish(subject, self.heartbeat(), kind="heartbeat"):
                self.metrics.heartbeats.inc()
            await asyncio.sleep(self.settings.heartbeat_interval_s)


class ServiceTasks:
    """A service's long-lived tasks in one `asyncio.TaskGroup`: when one fails, all are cancelled and the group
    raises. Cancellation is repeated until every task has ended, because on Python 3.11 `asyncio.wait_for` (which
    nats.py's fetch and request use) can swallow a cancellation that races its own completion, leaving a loop
    running and the group waiting for it forever."""

    def __init__(self) -> None:
        self._group = asyncio.TaskGroup()
        self._running: set[asyncio.Task[Any]] = set()
        self._reaper: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self._group.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self._group.__aexit__(*exc)

    def start(self, work: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        task = self._group.create_task(work, name=name)
        self._running.add(task)
        task.add_done_callback(self._on_done)
        return task

    def _on_done(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None and self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self.stop_all(), name="stop-service-tasks")

    async def stop_all(self) -> None:
        """Cancel every running task, again and again, until all have ended."""
        while self._running:
            pending = list(self._running)
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=0.5)


async def unless_stopped(awaitable: Coroutine[Any, Any, T], stop: asyncio.Event) -> T | None:
    """The result of `awaitable`, or None if `stop` is set first (the awaitable is then cancelled)."""
    work = asyncio.ensure_future(awaitable)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([work, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not work.done():
            work.cancel()
    return work.result() if work.done() and not work.cancelled() else None


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


OWN_LOGGERS = ("ala", "services", "protos", "benchmarks")
"""ALA's own code logs under these names at ALA_LOG_LEVEL; everything else (nats-py, uvicorn, httpx, ...) is third
party and logs at ALA_THIRD_PARTY_LOG_LEVEL."""
LOG_FORMAT = "%(asctime)s %(levelname)-5s %(name)s: %(message)s"


def configure_logging(level: str, third_party_level: str = "WARNING", third_party_file: str = "") -> None:
    """ALA's loggers at `level` on the console; third-party loggers at `third_party_level`, on the console or,
    with `third_party_file`, in that file together with whatever native libraries (llama.cpp) write to stderr."""
    formatter = logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S")
    console_stream = sys.stderr
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(third_party_level.upper())
    if third_party_file:
        # Native code writes to file descriptor 2: point it at the file, and keep the console on a copy of it.
        console_stream = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
        log_file = open(third_party_file, "a", buffering=1)  # noqa: SIM115  (open for the life of the process)
        os.dup2(log_file.fileno(), sys.stderr.fileno())
        file_handler = logging.StreamHandler(log_file)
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)
    console = logging.StreamHandler(console_stream)
    console.setFormatter(formatter)
    for name in OWN_LOGGERS:
        own = logging.getLogger(name)
        own.setLevel(level.upper())
        own.propagate = False
        own.handlers = [console]
    if not third_party_file:
        root.addHandler(console)


def run_until_signalled(serve: Callable[[S, asyncio.Event], Awaitable[None]], settings: S) -> None:
    """Run `serve(settings, stop)` until SIGINT or SIGTERM sets `stop`; if it fails (a supervised task raised),
    log every traceback and exit with status 1."""
    configure_logging(settings.log_level, settings.third_party_log_level, settings.third_party_log_file)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    try:
        asyncio.run(main())
    except Exception as exc:  # everything a service can fail with ends here, logged, with a non-zero exit
        for error in _leaves(exc):
            log.critical("%s %s stopped by an error", settings.service, settings.instance, exc_info=error)
        sys.exit(1)


def _leaves(exc: BaseException) -> list[BaseException]:
    """The individual errors inside (nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]
