"""The router's Prometheus metrics (budget: < 50 ms end to end, tens of microseconds of its own work)."""

from prometheus_client import Counter, Gauge, Histogram

from ala.metrics import MICROSECOND_BUCKETS, new_registry, service_metrics

REGISTRY = new_registry()
SERVICE = service_metrics("router", REGISTRY)
PROCESSING_SECONDS = Histogram(
    "ala_router_processing_seconds",
    "Router's own work per advice: receipt to bias published.",
    buckets=MICROSECOND_BUCKETS,
    registry=REGISTRY,
)
ADVICE_RECEIVED = Counter("ala_router_advice", "Advice messages received, by advisor.", ["advisor"], registry=REGISTRY)
ADVICE_ACCEPTED = Counter(
    "ala_router_advice_accepted", "Advice accepted into a bias, by advisor.", ["advisor"], registry=REGISTRY
)
REJECTED = Counter("ala_router_rejected", "Advice dropped, by reason.", ["reason"], registry=REGISTRY)
BIAS_UPDATES = Counter("ala_router_bias_updates", "Bias updates published.", registry=REGISTRY)
ACTIVE_BIASES = Gauge("ala_router_active_biases", "Targets (actor, bot) with live advice.", registry=REGISTRY)
ACTORS = Gauge("ala_router_actors", "Actors known from heartbeats.", registry=REGISTRY)
ADVISOR_WEIGHT = Gauge("ala_router_advisor_weight", "Live trust weight per advisor.", ["advisor"], registry=REGISTRY)
TRUST = Gauge(
    "ala_router_trust",
    "Evidence-driven trust per advisor, in [0, 1]: scales its bias (trust.py).",
    ["advisor"],
    registry=REGISTRY,
)
TRUST_ADVANTAGE = Gauge(
    "ala_router_trust_advantage",
    "Mean return of episodes an advisor's advice reached minus the control group's (no advice), forgetting.",
    ["advisor"],
    registry=REGISTRY,
)
OUTCOMES_REJECTED = Counter(
    "ala_router_outcomes_rejected", "AdviceOutcome messages that could not be decoded.", registry=REGISTRY
)
UNDECODABLE = Counter(
    "ala_router_messages_undecodable",
    "Heartbeats and weights announcements dropped because they could not be decoded, by kind (heartbeat, weights);"
    ' undecodable advice counts in ala_router_rejected{reason="decode"}, outcomes in ala_router_outcomes_rejected.',
    ["kind"],
    registry=REGISTRY,
)
STRENGTH = Gauge("ala_router_strength", "Bias strength now (after annealing).", registry=REGISTRY)
KILLS = Counter("ala_router_kills", "POST /kill calls.", registry=REGISTRY)
API_REFUSED = Counter(
    "ala_router_api_refused",
    "Control API requests refused before handling, by reason (rate, size).",
    ["reason"],
    registry=REGISTRY,
)
