"""The evaluator's Prometheus metrics: the one learning number everything reads (`ala_eval_return`)."""

from prometheus_client import Counter, Gauge, Histogram

from ala.metrics import SECOND_BUCKETS, new_registry, service_metrics

REGISTRY = new_registry()
SERVICE = service_metrics("evaluator", REGISTRY)
RETURN = Gauge(
    "ala_eval_return", "Mean return of the policy alone on held-out seeds, by mode.", ["mode"], registry=REGISTRY
)
SUCCESS_RATE = Gauge(
    "ala_eval_success_rate", "Share of held-out episodes with a positive return, by mode.", ["mode"], registry=REGISTRY
)
POLICY_VERSION = Gauge("ala_eval_policy_version", "Policy version of the latest evaluation.", registry=REGISTRY)
ENV_STEPS = Gauge(
    "ala_eval_env_steps", "Actors' env steps when the evaluated version was announced.", registry=REGISTRY
)
EVALUATIONS = Counter("ala_eval_evaluations", "Evaluations done.", registry=REGISTRY)
SKIPPED = Counter(
    "ala_eval_skipped", "Announced versions not evaluated, by reason (behind, rejected).", ["reason"], registry=REGISTRY
)
SECONDS = Histogram("ala_eval_seconds", "One evaluation, both modes.", buckets=SECOND_BUCKETS, registry=REGISTRY)
BEST_RETURN = Gauge(
    "ala_eval_best_return", "Sampled mean return of the best version kept (best.pt) in this process.", registry=REGISTRY
)
VIDEOS = Counter("ala_eval_videos", "Evaluation videos, by outcome (written, failed).", ["outcome"], registry=REGISTRY)
BEST_SAVE_FAILURES = Counter(
    "ala_eval_best_save_failures",
    "Best versions that could not be written (disk full, permissions).",
    registry=REGISTRY,
)
