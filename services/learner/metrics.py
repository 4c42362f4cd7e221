"""The learner's Prometheus metrics."""

from prometheus_client import Counter, Gauge, Histogram

from ala.metrics import MILLISECOND_BUCKETS, SECOND_BUCKETS, new_registry, service_metrics

REGISTRY = new_registry()
SERVICE = service_metrics("learner", REGISTRY)
UPDATE_SECONDS = Histogram(
    "ala_learner_update_seconds",
    "One PPO update (all epochs over one batch).",
    buckets=SECOND_BUCKETS,
    registry=REGISTRY,
)
SAMPLES = Counter("ala_learner_samples", "Env steps trained on.", registry=REGISTRY)
CHUNKS_TRAINED = Counter("ala_learner_chunks_trained", "Trajectory chunks trained on.", registry=REGISTRY)
CHUNKS_REJECTED = Counter(
    "ala_learner_chunks_rejected",
    "Chunks refused (terminated, never trained), by reason.",
    ["reason"],
    registry=REGISTRY,
)
UNDECODABLE = Counter(
    "ala_learner_messages_undecodable",
    "Messages dropped because they could not be decoded, by kind (heartbeat, implicit_reward); an undecodable chunk"
    ' counts in ala_learner_chunks_rejected{reason="decode"}.',
    ["kind"],
    registry=REGISTRY,
)
CHUNKS_DUPLICATE = Counter("ala_learner_chunks_duplicate", "Redelivered chunks already trained.", registry=REGISTRY)
CHUNKS_STALE = Counter("ala_learner_chunks_stale", "Chunks dropped for exceeding max_policy_lag.", registry=REGISTRY)
POLICY_VERSION = Gauge("ala_learner_policy_version", "Version of the newest weights.", registry=REGISTRY)
POLICY_LAG = Histogram(
    "ala_learner_policy_lag",
    "Learner version minus the chunk's policy version, per chunk trained or dropped.",
    buckets=(0, 1, 2, 3, 4, 6, 8, 12, 16, 32),
    registry=REGISTRY,
)
TRAINING = Gauge(
    "ala_learner_training", "Latest update's statistics (losses, IS weights, lag).", ["stat"], registry=REGISTRY
)
WEIGHTS_PUBLISHED = Counter("ala_learner_weights_published", "Weight versions published.", registry=REGISTRY)
IMPLICIT_REWARDS_APPLIED = Counter(
    "ala_learner_implicit_rewards_applied", "Steps that received an implicit reward.", registry=REGISTRY
)
EXPLORATION_BONUS = Counter(
    "ala_learner_exploration_bonus",
    "Sum of the count-based exploration bonus added to trained rewards.",
    registry=REGISTRY,
)
PREFERENCE_SHAPING = Counter(
    "ala_learner_preference_shaping",
    "Sum of |shaping| the preference reward model added to trained rewards.",
    registry=REGISTRY,
)
PREFERENCES = Counter(
    "ala_learner_preferences",
    "Rankings from advisors, by outcome (kept, or refused: not this policy's observations).",
    ["outcome"],
    registry=REGISTRY,
)
WEIGHTS_PUBLISH_FAILURES = Counter(
    "ala_learner_weights_publish_failures", "Weight versions not published (broker away).", registry=REGISTRY
)
ACTORS_MISMATCHED = Counter(
    "ala_learner_actors_mismatched",
    "Actor heartbeats announcing another policy spec than the one trained.",
    registry=REGISTRY,
)
FETCH_FAILURES = Counter(
    "ala_learner_fetch_failures",
    "Chunk fetches that failed (JetStream unavailable) and were retried.",
    registry=REGISTRY,
)
MERGES = Counter(
    "ala_learner_merges", "Parameter merges with the other learner ranks (distributed=merge).", registry=REGISTRY
)
RANK_WAIT_SECONDS = Histogram(
    "ala_learner_rank_wait_seconds",
    "Time a learner rank waited for the others before an update (their batches, or a stop).",
    buckets=SECOND_BUCKETS,
    registry=REGISTRY,
)
ONNX_EXPORT_SECONDS = Histogram(
    "ala_learner_onnx_export_seconds",
    "Exporting one version to ONNX and checking it with ONNX Runtime against the torch output.",
    buckets=MILLISECOND_BUCKETS,
    registry=REGISTRY,
)
ONNX_EXPORT_FAILURES = Counter(
    "ala_learner_onnx_export_failures",
    "Versions published without an ONNX model: its export failed or did not reproduce the torch output (actors"
    " running ONNX then export the torch weights themselves).",
    registry=REGISTRY,
)
