"""The advisor's Prometheus metrics (budget: 3-5 s per LLM answer, asynchronous)."""

from prometheus_client import Counter, Gauge, Histogram

from ala.metrics import SECOND_BUCKETS, new_registry, service_metrics

REGISTRY = new_registry()
SERVICE = service_metrics("advisor", REGISTRY)
LLM_SECONDS = Histogram(
    "ala_advisor_llm_seconds",
    "Time for one backend answer, by advisor.",
    ["advisor"],
    buckets=SECOND_BUCKETS,
    registry=REGISTRY,
)
COMPLETION_TOKENS = Counter(
    "ala_advisor_completion_tokens",
    "Tokens generated, by advisor (rate / llm_seconds = tokens/s).",
    ["advisor"],
    registry=REGISTRY,
)
BACKEND_FAILURES = Counter(
    "ala_advisor_backend_failures",
    "Answers not obtained, by advisor and reason (timeout, parse, http, ...).",
    ["advisor", "reason"],
    registry=REGISTRY,
)
ADVICE_PUBLISHED = Counter(
    "ala_advisor_advice_published", "Advice published, by advisor.", ["advisor"], registry=REGISTRY
)
DIGESTS = Counter("ala_advisor_digests", "State digests received.", registry=REGISTRY)
DIGESTS_DROPPED = Counter(
    "ala_advisor_digests_dropped",
    "Digests replaced by a newer one for the same bot, or evicted, in one advisor's queue.",
    ["advisor"],
    registry=REGISTRY,
)
DIGESTS_REJECTED = Counter("ala_advisor_digests_rejected", "Digests that could not be decoded.", registry=REGISTRY)
UNDECODABLE = Counter(
    "ala_advisor_messages_undecodable",
    "Heartbeats and outcome reports dropped because they could not be decoded (kind=heartbeat, outcome);"
    " undecodable digests count in"
    ' ala_advisor_digests_rejected, chunks for review in ala_advisor_review_skipped{reason="decode"}.',
    ["kind"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "ala_advisor_queue_depth", "Bots with a digest waiting for one advisor.", ["advisor"], registry=REGISTRY
)
CACHE_HITS = Counter(
    "ala_advisor_cache_hits", "Answers served from the cache (LLM calls saved).", ["advisor"], registry=REGISTRY
)
CACHE_MISSES = Counter("ala_advisor_cache_misses", "Answers that needed the backend.", ["advisor"], registry=REGISTRY)
CACHE_THRESHOLD = Gauge("ala_advisor_cache_max_distance", "Adaptive reuse threshold.", ["advisor"], registry=REGISTRY)
CACHE_TUNING_WINDOWS = Counter(
    "ala_advisor_cache_tuning_windows",
    "Performance windows of the cache tuned by performance, by the threshold's move (up, down, held at a bound).",
    ["advisor", "move"],
    registry=REGISTRY,
)
PREFERENCES = Counter(
    "ala_advisor_preferences",
    "Preference queries by outcome: ranked, tie, unsent, undecodable, or the ranker's failure (unavailable, timeout,"
    " parse, ...).",
    ["outcome"],
    registry=REGISTRY,
)
REVIEWS = Counter("ala_advisor_reviews", "Episodes reviewed for critical states.", registry=REGISTRY)
REVIEW_FAILURES = Counter(
    "ala_advisor_review_failures", "Reviews the reviewer could not answer usably.", registry=REGISTRY
)
REVIEW_ADVICE = Counter(
    "ala_advisor_review_advice", "Suggested actions of reviews published as advice.", registry=REGISTRY
)
REVIEW_SKIPPED = Counter(
    "ala_advisor_review_skipped",
    "Trajectory chunks not reviewed, by reason (no_text: the env has no text rendering; no_full_state: the planner"
    " reviews only chunks with full states; no_spec: actor unknown).",
    ["reason"],
    registry=REGISTRY,
)
DIGESTS_SKIPPED = Counter(
    "ala_advisor_digests_skipped",
    "Digests an advisor did not ask its backend about, by advisor and reason (no_text, no_full_state).",
    ["advisor", "reason"],
    registry=REGISTRY,
)
BREAKER_OPEN = Gauge(
    "ala_advisor_breaker_open",
    "1 while an advisor's circuit breaker is open or probing (its backend failed breaker_failures times in a row).",
    ["advisor"],
    registry=REGISTRY,
)
BREAKER_TRIPS = Counter(
    "ala_advisor_breaker_trips", "Times an advisor's circuit breaker opened.", ["advisor"], registry=REGISTRY
)
REASONING_TOKENS = Counter(
    "ala_advisor_reasoning_tokens",
    "Tokens a reasoning model spent thinking, by advisor (also counted in ala_advisor_completion_tokens).",
    ["advisor"],
    registry=REGISTRY,
)
SITUATION_CACHE = Counter(
    "ala_advisor_situation_cache",
    "Option answers looked up in the situation cache, by advisor and result (hit: no LLM call).",
    ["advisor", "result"],
    registry=REGISTRY,
)
