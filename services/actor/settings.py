"""Settings of the actor; every field is also an environment variable `ALA_ACTOR_<FIELD>`."""

import re
import zlib
from typing import ClassVar, Literal

import numpy as np
from pydantic import AliasChoices, BaseModel, Field
from pydantic_settings import SettingsConfigDict

from ala.config import ServiceSettings
from ala.rl.config import EXPERIMENTAL, RolloutSettings

ORDINAL = re.compile(r"-(\d{1,6})$")
"""The replica number at the end of an instance name: a StatefulSet's pod `ala-actor-2`, or `actor-3`."""
CONTAINER_ID = re.compile(r"^[0-9a-f]{12}$")
"""Docker names a container's host after its short id: what `compose up --scale actor=4` replicas are called."""


class ActorFlow(BaseModel):
    """Flow control and the chunk outbox: how far the actor samples ahead of training."""

    settings_group: ClassVar[str] = "flow"

    max_chunks_ahead: int = Field(
        1,
        ge=0,
        description="Flow control: start a new chunk only while at most this many of this actor's chunks wait to be"
        " trained, and with the newest announced weights installed (1: sample chunk k+1 while k trains, policy lag"
        " ~1; 0: off). Active once a learner has announced weights; multiplied by the learner ranks it announces.",
    )
    flow_timeout_s: float = Field(
        10.0, gt=0, description="Longest wait for the learner before sampling anyway (counted, logged)."
    )
    retry_buffer_chunks: int = Field(
        256, ge=1, description="Unacknowledged chunks kept for retry; when full, stepping waits (nothing is dropped)."
    )


class ActorPolicy(BaseModel):
    """Where the policy runs, and how new weights are fetched."""

    settings_group: ClassVar[str] = "policy"

    backend: Literal["torch", "onnx"] = Field(
        "torch",
        description="What runs the policy forward at each step: torch, or onnx (ONNX Runtime on the learner's ONNX"
        " export of each version, checked on a probe batch before it is swapped in; sampling, log-probabilities and"
        " values then come from its output).",
    )
    onnx_providers: list[str] = Field(
        ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        min_length=1,
        description="With backend onnx: ONNX Runtime execution providers in order of preference (a JSON list); those"
        " this onnxruntime build lacks are skipped, the one that runs is logged at start. The same setting serves a"
        " Jetson (TensorRT), a GPU box (CUDA) and a laptop (CPU).",
    )
    onnx_threads: int = Field(1, ge=1, description="With backend onnx: ONNX Runtime's intra-op threads on the CPU.")
    onnx_atol: float = Field(
        1e-5,
        gt=0,
        description="With backend onnx: a model is swapped in only if its logits and values on the probe batch are"
        " within this of the torch policy's (else the old version stays, counted in"
        ' ala_actor_weights_rejected_total{reason="onnx_mismatch"}).',
    )
    onnx_trt_cache_dir: str = Field(
        ".ala/tensorrt",
        description="With backend onnx on TensorRT: where its engine and timing caches live (a volume in a"
        " container), so that a repeated shape is not rebuilt; empty: no cache.",
    )
    weights_fetch_timeout_s: float = Field(
        10.0, gt=0, description="Bound on one weights fetch from the Object Store; a failed fetch is retried."
    )


class ActorAdvice(BaseModel):
    """How advice reaches the bots: bounds, digests, outcomes, advice modes."""

    settings_group: ClassVar[str] = "advice"

    max_abs_bias: float = Field(
        2.0,
        gt=0,
        description="Clip of every received bias element: the router's b_max (lowered to what its heartbeats say).",
    )
    max_ttl_s: float = Field(
        60.0, gt=0, description="Cap on every received bias's TTL: the router's (lowered to what its heartbeats say)."
    )
    digest_every_steps: int = Field(
        0,
        ge=0,
        description="Also publish a StateDigest of each bot every k of its steps (always: for states with no advice"
        " yet, and on request).",
    )
    digest_rate_per_s: float = Field(
        200.0, gt=0, description="Most digests this actor publishes per second, on average (a token bucket)."
    )
    digest_bot_interval_s: float = Field(0.1, ge=0, description="Least time between two digests of one bot.")
    ask_full_reach: float = Field(
        0.1,
        ge=0,
        le=1,
        description="While the highest reach the router announces is below this (every advisor on probation, 0.05, or"
        " silenced), digests go out at digest_rate_per_s times that reach: a trickle that lets probation find advice"
        " that helps again, and none at all at 0. At or above it (an advisor at its initial 0.25 or trusted), the full"
        " rate.",
    )
    ask_again_s: float = Field(
        5.0, gt=0, description="A state asked about and still without advice is asked about again after this."
    )
    advice_mode: Literal["bias", "distill", "both"] = Field(
        "both",
        description="bias: advice tilts sampling (logits += bias; the learner corrects with importance weights);"
        " distill: sample from the policy alone and record the advice for the learner to distil (LLM4Teach-style);"
        " both: tilt sampling and record the advice, so the learner distils what trust lets through (the default:"
        " the expert on DoorKey-8x8 to 0.8 in 61k env steps against the bias alone's 99k, 5 seeds,"
        " benchmarks/results/archive/value-8x8.md).",
    )
    distill_min_reach: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Advice is recorded for distillation only where its reach (its advisor's trust, from the router)"
        " is at least this: 0.5 is above the router's initial trust (0.25), so only advice that has beaten the"
        " control group is distilled; with the router's trust off, reach is 1 and all advice is.",
    )
    control_share: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Share of bot-episodes played with no advice: the control group the router's trust compares"
        " advised episodes against.",
    )
    outcome_interval_s: float = Field(2.0, gt=0, description="How often episode outcomes go to the router (trust).")
    state_key: Literal["observation", "full_state"] = Field(
        "observation",
        json_schema_extra=EXPERIMENTAL,
        description="What names a state for state-scoped advice: observation (what the policy sees; shared by every"
        " bot that sees the same, aliased where different states look alike) or full_state (the adapter's privileged"
        " full state, when it has one: exact, shared less).",
    )
    judge_rate: float = Field(
        0.0,
        json_schema_extra=EXPERIMENTAL,
        ge=0,
        le=1,
        description="Share of advised bot-steps judged by the env adapter's expert planner (advice precision, in"
        " ala_actor_advice_judged_total; ~0.4 ms each on DoorKey): for benchmarks.",
    )
    state_table_size: int = Field(
        4096, ge=1, description="Most advised states remembered (least recently met are forgotten first)."
    )
    digests_enabled: bool = Field(True, description="Publish StateDigests for the advisor at all.")
    digest_full_state: bool = Field(
        True, description="Attach the full MiniGrid grid to digests, for expert advisors (privileged information)."
    )
    chunk_full_states: bool = Field(
        False,
        json_schema_extra=EXPERIMENTAL,
        description="Record every bot's full state at every step in the trajectory chunks (MiniGrid: the grid, ~40 us"
        " a bot-step), for the advisor's critical-state review with the planner as reviewer"
        " (ALA_ADVISOR_REVIEW_BY=planner).",
    )
    preference_rate_per_s: float = Field(
        0.0,
        ge=0,
        le=1000,
        json_schema_extra=EXPERIMENTAL,
        description="Pairs of two bots' states sent per second for an advisor to rank (PreferenceQuery), whose"
        " rankings train the learner's reward model (ALA_LEARNER_PREFERENCE_REWARD); 0: none.",
    )


class ActorSettings(ServiceSettings, RolloutSettings, ActorFlow, ActorPolicy, ActorAdvice):
    """The rollout's settings (`ala.rl.config`, which `ala train --local` uses too) and the actor's own."""

    service: ClassVar[str] = "actor"
    model_config = SettingsConfigDict(env_prefix="ALA_ACTOR_")

    metrics_port: int = Field(9103, ge=0, le=65535, description="Port of /metrics (0 = a free one).")
    env_id: str = Field(
        "MiniGrid-DoorKey-8x8-v0",
        validation_alias=AliasChoices("env_id", "ALA_ACTOR_ENV_ID", "ALA_ENV_ID"),
        description="Gymnasium environment id every bot runs (ALA_ENV_ID works too).",
    )
    replica: int | None = Field(
        None,
        ge=0,
        description="This actor's replica number: replica 0 runs `seed` itself, replica k a seed derived from"
        " (seed, k), so replicas of one deployment sample different episodes, and the same ones on every run (Helm"
        " sets it from"
        " the pod index). Unset: the number ending the instance name (`actor-3`), else, for a host named by its"
        " Docker container id (compose --scale), a hash of that id (distinct, not reproducible: name the actors for"
        " that), else 0.",
    )

    @property
    def rollout_seed(self) -> int:
        """The seed this actor's environments and sampling use (`replica`)."""
        return replica_seed(self.seed, self.replica_number)

    @property
    def replica_number(self) -> int:
        if self.replica is not None:
            return self.replica
        if ordinal := ORDINAL.search(self.instance):
            return int(ordinal.group(1))
        if CONTAINER_ID.match(self.instance):
            return zlib.crc32(self.instance.encode()) + 1
        return 0


def replica_seed(seed: int, replica: int) -> int:
    """`seed` for replica 0; for others, a draw from numpy's SeedSequence of (seed, replica): independent streams."""
    if replica == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2**32, replica]).generate_state(1)[0] >> 1)
