"""The advisor's Prometheus metrics (budget: 3-5 s per LLM answer, asynchronous)."""

from prometheus_client import Histogram

from ala.metrics import SECOND_BUCKETS, new_registry, service_metrics

REGISTRY = new_registry()
SERVICE = service_metrics("advisor", REGISTRY)
LLM_SECONDS = Histogram(
    "ala_advisor_llm_seconds",
    "Time for one LLM answer, by backend.",
    ["backend"],
    buckets=SECOND_BUCKETS,
    registry=REGISTRY,
)
