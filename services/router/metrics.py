"""The router's Prometheus metrics (budget: < 50 ms end to end, tens of microseconds of its own work)."""

from prometheus_client import Histogram

from ala.metrics import MICROSECOND_BUCKETS, new_registry, service_metrics

REGISTRY = new_registry()
SERVICE = service_metrics("router", REGISTRY)
PROCESSING_SECONDS = Histogram(
    "ala_router_processing_seconds",
    "Router's own work per advice: receipt to bias published.",
    buckets=MICROSECOND_BUCKETS,
    registry=REGISTRY,
)
