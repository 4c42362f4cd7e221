"""Prometheus plumbing shared by the services: bucket sets sized to each latency budget, the bus metrics every
service has, and a timing context manager (the /metrics server is in `health.py`, with /healthz and /readyz).

Each service declares its own metrics at the top of its `metrics.py`, in its own `CollectorRegistry`, named
`ala_<service>_<what>_<unit>`, so that several services can share a process (tests, `ala train --local`) and each
`/metrics` shows only its own service.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector

# Router work is tens of microseconds; its end-to-end budget is 50 ms.
MICROSECOND_BUCKETS = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1)
# Actor step budget is 10-15 ms; publish and hop latencies live here too.
MILLISECOND_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 7.5e-3, 1e-2, 1.5e-2, 2e-2, 3e-2, 5e-2, 0.1, 0.25, 1.0)
# LLM answers take 3-5 s on the lab's DGX.
SECOND_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0)


def new_registry() -> CollectorRegistry:
    """A registry with the process collector (CPU, RSS, open fds) so every service reports its footprint."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    return registry


@dataclass(frozen=True)
class BusMetrics:
    """Connection health and publish outcomes of one service's NATS client."""

    disconnects: Counter
    reconnects: Counter
    errors: Counter
    permission_denied: Counter
    published: Counter
    publish_failures: Counter
    publish_seconds: Histogram
    connected: Gauge


def bus_metrics(service: str, registry: CollectorRegistry) -> BusMetrics:
    prefix = f"ala_{service}_nats"
    return BusMetrics(
        disconnects=Counter(f"{prefix}_disconnects", "Times the broker connection was lost.", registry=registry),
        reconnects=Counter(f"{prefix}_reconnects", "Times the connection came back.", registry=registry),
        errors=Counter(f"{prefix}_errors", "Asynchronous client errors reported by nats-py.", registry=registry),
        permission_denied=Counter(
            f"{prefix}_permission_denied",
            "Publishes or subscriptions the broker refused (this service's user is not allowed the subject).",
            registry=registry,
        ),
        published=Counter(f"{prefix}_published", "Messages published, by kind.", ["kind"], registry=registry),
        publish_failures=Counter(
            f"{prefix}_publish_failures", "Publishes that failed, by reason.", ["kind", "reason"], registry=registry
        ),
        publish_seconds=Histogram(
            f"{prefix}_publish_seconds",
            "Time to publish (core: hand to the client; JetStream: until the ack).",
            ["kind"],
            buckets=MILLISECOND_BUCKETS,
            registry=registry,
        ),
        connected=Gauge(f"{prefix}_connected", "1 while connected to the broker.", registry=registry),
    )


@dataclass(frozen=True)
class ServiceMetrics:
    """What every service reports besides its own job."""

    bus: BusMetrics
    heartbeats: Counter
    up: Gauge


def service_metrics(service: str, registry: CollectorRegistry) -> ServiceMetrics:
    return ServiceMetrics(
        bus=bus_metrics(service, registry),
        heartbeats=Counter(f"ala_{service}_heartbeats", "Heartbeats published.", registry=registry),
        up=Gauge(f"ala_{service}_up", "1 while the service runs, by build.", ["version"], registry=registry),
    )


@functools.cache
def child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, looked up once: `labels()` costs microseconds, too much on a hot path.
    Only for label values from a small, fixed set (never raw input)."""
    return metric.labels(*labels)


@contextmanager
def timed(histogram: Histogram) -> Iterator[None]:
    """Observe the wall time of the block in `histogram` (already labelled, if it has labels)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        histogram.observe(time.perf_counter() - start)
