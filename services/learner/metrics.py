"""The learner's Prometheus metrics."""

from prometheus_client import Histogram

from ala.metrics import SECOND_BUCKETS, new_registry, service_metrics

REGISTRY = new_registry()
SERVICE = service_metrics("learner", REGISTRY)
UPDATE_SECONDS = Histogram(
    "ala_learner_update_seconds",
    "One PPO update (all epochs over one batch).",
    buckets=SECOND_BUCKETS,
    registry=REGISTRY,
)
