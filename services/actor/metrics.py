"""The actor's Prometheus metrics (budget: 10-15 ms per vectorised step on the lab's Jetson Orin)."""

from prometheus_client import Counter, Gauge, Histogram

from ala.metrics import MICROSECOND_BUCKETS, MILLISECOND_BUCKETS, SECOND_BUCKETS, new_registry, service_metrics

REGISTRY = new_registry()
SERVICE = service_metrics("actor", REGISTRY)
# Fine where steps are: ~3 ms on a laptop, 10-15 ms on the Orin. A quantile interpolated within its bucket (the fault
# matrix's step-p99 goal, the 15 ms budget alert) is off by less than the bucket's width: 0.5 ms up to 10 ms, 1 ms up
# to 15 ms. 36 buckets: observe() scans them linearly, about a microsecond against a step of milliseconds.
STEP_BUCKETS = (
    tuple(round(0.5e-3 * i, 4) for i in range(1, 21))  # 0.5 .. 10 ms by 0.5 ms
    + tuple(round(1e-3 * i, 3) for i in range(11, 16))  # 11 .. 15 ms by 1 ms (15 ms: the budget alert's threshold)
    + (0.0175, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)
)
STEP_SECONDS = Histogram(
    "ala_actor_step_seconds",
    "One step of all bots: bias lookup, policy forward, sampling and env step.",
    buckets=STEP_BUCKETS,
    registry=REGISTRY,
)
FORWARD_SECONDS = Histogram(
    "ala_actor_policy_forward_seconds",
    "One step's policy forward over all bots (torch or ONNX Runtime), without sampling or the env step: the part a"
    " Jetson's TensorRT is there to shorten.",
    buckets=MICROSECOND_BUCKETS,
    registry=REGISTRY,
)
ENV_STEPS = Counter("ala_actor_env_steps", "Environment steps, summed over bots.", registry=REGISTRY)
BIAS_APPLY_SECONDS = Histogram(
    "ala_actor_bias_apply_seconds", "Installing one BiasUpdate.", buckets=MICROSECOND_BUCKETS, registry=REGISTRY
)
ADVICE_TO_BIAS_SECONDS = Histogram(
    "ala_actor_advice_to_bias_seconds",
    "Advice created (advisor clock) to bias installed here (actor clock): end to end, needs synced clocks.",
    buckets=MILLISECOND_BUCKETS,
    registry=REGISTRY,
)
ACTIVE_BIASES = Gauge("ala_actor_active_biases", "Bots with a bias in force.", registry=REGISTRY)
BIAS_REJECTED = Counter("ala_actor_bias_rejected", "Bias updates refused, by reason.", ["reason"], registry=REGISTRY)
BIAS_BOUND = Gauge(
    "ala_actor_bias_bound",
    "The bounds every received bias is held to now (what=b_max, max_ttl_s): the tighter of the actor's and the"
    " router's.",
    ["what"],
    registry=REGISTRY,
)
BIAS_BOUNDED = Counter(
    "ala_actor_bias_bounded",
    "Received bias elements clipped to b_max (what=element) and TTLs capped at max_ttl_s (what=ttl): a router keeps"
    " these bounds, so any count means an update from elsewhere or a misconfiguration.",
    ["what"],
    registry=REGISTRY,
)
POLICY_VERSION = Gauge("ala_actor_policy_version", "Version of the policy sampling now.", registry=REGISTRY)
POLICY_LAG = Gauge("ala_actor_policy_lag", "Newest announced version minus the one in use.", registry=REGISTRY)
WEIGHTS_LOADED = Counter("ala_actor_weights_loaded", "Policy versions installed.", registry=REGISTRY)
WEIGHTS_REJECTED = Counter(
    "ala_actor_weights_rejected",
    "Announced weights refused, by reason; onnx_invalid and onnx_mismatch: the version's ONNX model (backend onnx),"
    " which cannot be loaded and run, or computes other logits than the torch policy's.",
    ["reason"],
    registry=REGISTRY,
)
POLICY_FORWARD = Gauge(
    "ala_actor_policy_forward",
    "1 for what runs the policy forward now: backend (torch, onnx) and provider (a torch device, or ONNX Runtime's"
    " execution provider).",
    ["backend", "provider"],
    registry=REGISTRY,
)
MEAN_RETURN = Gauge(
    "ala_actor_mean_return", "Mean return of the last 100 finished episodes (training, with advice).", registry=REGISTRY
)


class EpisodeHistograms:
    """Return and length of finished episodes, bucketed for the env being run (the adapter's buckets), so that
    CartPole's 500 and Acrobot's -500 land in a bucket as well as MiniGrid's 0..1."""

    def __init__(self, return_buckets: tuple[float, ...], length_buckets: tuple[float, ...]) -> None:
        self.return_, self.length = self._register(return_buckets, length_buckets)

    def rebucket(self, return_buckets: tuple[float, ...], length_buckets: tuple[float, ...]) -> None:
        """Replace both histograms (at start, once the env is known)."""
        REGISTRY.unregister(self.return_)
        REGISTRY.unregister(self.length)
        self.return_, self.length = self._register(return_buckets, length_buckets)

    @staticmethod
    def _register(return_buckets: tuple[float, ...], length_buckets: tuple[float, ...]) -> tuple[Histogram, Histogram]:
        return (
            Histogram(
                "ala_actor_episode_return", "Return of finished episodes.", buckets=return_buckets, registry=REGISTRY
            ),
            Histogram(
                "ala_actor_episode_length", "Length of finished episodes.", buckets=length_buckets, registry=REGISTRY
            ),
        )


EPISODES = EpisodeHistograms((0.0, 0.5, 1.0), (10, 100, 1000))
CHUNKS_SHIPPED = Counter("ala_actor_chunks_shipped", "Trajectory chunks acknowledged by JetStream.", registry=REGISTRY)
CHUNK_RETRIES = Counter("ala_actor_chunk_retries", "Chunk publishes retried after a failure.", registry=REGISTRY)
RETRY_BUFFER = Gauge("ala_actor_retry_buffer_chunks", "Chunks waiting for a JetStream ack.", registry=REGISTRY)
BACKPRESSURE_SECONDS = Counter(
    "ala_actor_backpressure_seconds", "Time stepping waited because the retry buffer was full.", registry=REGISTRY
)
DIGEST_REQUESTS_REJECTED = Counter(
    "ala_actor_digest_requests_rejected", "Digest requests that could not be decoded.", registry=REGISTRY
)
UNDECODABLE = Counter(
    "ala_actor_messages_undecodable",
    "Router heartbeats dropped because they could not be decoded (kind=heartbeat); undecodable bias updates count in"
    ' ala_actor_bias_rejected{reason="decode"}, weights announcements in ala_actor_weights_rejected{reason="decode"},'
    " digest requests in ala_actor_digest_requests_rejected.",
    ["kind"],
    registry=REGISTRY,
)
PREFERENCE_QUERIES = Counter(
    "ala_actor_preference_queries", "Pairs of bots' states sent to advisors to rank.", registry=REGISTRY
)
DIGESTS = Counter(
    "ala_actor_digests",
    "State digests published for the advisors, by why: new_state (no advice yet), requested, periodic.",
    ["reason"],
    registry=REGISTRY,
)
DIGESTS_LIMITED = Counter(
    "ala_actor_digests_rate_limited",
    "Digests wanted but not sent: over ALA_ACTOR_DIGEST_RATE_PER_S.",
    registry=REGISTRY,
)
ADVICE_JUDGED = Counter(
    "ala_actor_advice_judged",
    "Advised bot-steps judged by the expert planner (ALA_ACTOR_JUDGE_RATE): right when the bias's favourite action"
    " is the planner's for the state the bot is actually in; unknown when the planner has no answer.",
    ["scope", "verdict"],
    registry=REGISTRY,
)
BIASED_STEPS = Counter(
    "ala_actor_biased_steps",
    "Bot steps taken under advice, by scope: state (the state table: the advice was about this observation) or"
    " bot (per-bot advice).",
    ["scope"],
    registry=REGISTRY,
)
SHIP_SECONDS = Histogram(
    "ala_actor_chunk_ship_seconds", "Chunk publish until its ack.", buckets=SECOND_BUCKETS, registry=REGISTRY
)
FLOW_WAIT_SECONDS = Counter(
    "ala_actor_flow_wait_seconds", "Time spent waiting for training to catch up (flow control).", registry=REGISTRY
)
FLOW_TIMEOUTS = Counter(
    "ala_actor_flow_timeouts", "Flow-control waits that gave up after flow_timeout_s.", registry=REGISTRY
)
DIGEST_RATE = Gauge(
    "ala_actor_digest_rate_per_s",
    "The most digests per second this actor sends now: its digest_rate_per_s times the highest reach the router"
    " announces (the probation trickle while no advisor is trusted more).",
    registry=REGISTRY,
)
ADVISORS_READING = Gauge(
    "ala_actor_advisors_reading",
    "Live advisors that read what this actor's digests carry (their heartbeats' `reads`); at 0 it sends no digests;"
    " -1: no advisor heard yet (it asks).",
    registry=REGISTRY,
)
