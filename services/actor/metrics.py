"""The actor's Prometheus metrics (budget: 10-15 ms per vectorised step on the lab's Jetson Orin)."""

from prometheus_client import Histogram

from ala.metrics import MILLISECOND_BUCKETS, new_registry, service_metrics

REGISTRY = new_registry()
SERVICE = service_metrics("actor", REGISTRY)
STEP_SECONDS = Histogram(
    "ala_actor_step_seconds",
    "One step of all bots: policy forward, bias, sampling and env step.",
    buckets=MILLISECOND_BUCKETS,
    registry=REGISTRY,
)
