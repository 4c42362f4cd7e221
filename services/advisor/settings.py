"""Settings of the advisor; every field is also an environment variable `ALA_ADVISOR_<FIELD>`.

`ALA_ADVISOR_ADVISORS` is a JSON list, one object per advisor, e.g. a vLLM server and the expert:
`[{"name": "gpt-oss", "backend": "openai", "base_url": "http://dgx:8000/v1", "model": "openai/gpt-oss-20b",
"priority": 2}, {"name": "expert", "backend": "expert"}]`. Each advisor is typed by its `backend`: the keys of
another backend are refused (`AdvisorSpec`, a union keyed by `backend`; `advisor_spec(**fields)` builds one).
"""

from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, SecretStr, Tag, TypeAdapter, field_validator
from pydantic_settings import SettingsConfigDict

from ala.config import ServiceSettings
from ala.rl.config import EXPERIMENTAL

PROMPTS = Path(__file__).parent / "prompts"


class AdvisorBase(BaseModel):
    """What every advisor has: a name, how much its word counts, how long it may take, what its advice is about."""

    model_config = ConfigDict(extra="forbid")  # a misspelt key, or one of another backend, is an error

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Its subject token: ala.<run>.advice.<name>.")
    priority: float = Field(1.0, ge=0, description="Sent with every advice; the router weighs by it.")
    timeout_s: float = Field(30.0, gt=0, description="Longest wait for one answer; a slow advisor is skipped.")
    ttl_s: float = Field(0.0, ge=0, description="> 0: the TTL of all this advisor's advice; 0: the backend's own.")
    scope: Literal["state", "bot"] = Field(
        "state",
        description="state: advice is about the observation the digest shows and reaches every bot that meets it;"
        " bot: about the bot that asked, until its episode ends (strategic, state-independent advice).",
    )
    advice: Literal["auto", "options", "actions"] = Field(
        "auto",
        description="options: an option per situation (where the env declares options; `ala.envs.options`), cached per"
        " situation; actions: an action per state; auto: options for LLM backends (embedded, openai), else actions.",
    )
    option_ttl_s: float = Field(30.0, gt=0, description="TTL of option advice: a situation's answer holds this long.")
    breaker_failures: int = Field(
        5, ge=1, description="Consecutive failures (timeout, HTTP, parse) after which the backend is left alone."
    )
    breaker_base_s: float = Field(1.0, gt=0, description="First wait of an open breaker; doubles per trip.")
    breaker_max_s: float = Field(60.0, gt=0, description="Longest wait of an open breaker before a probe.")
    seed: int = Field(0, description="Seed of the backend's sampling and of the breaker's jitter.")


class EmbeddedAdvisor(AdvisorBase):
    """The embedded LLM (SmolLM2-135M on llama.cpp, in this process): it proves the plumbing."""

    backend: Literal["embedded"] = "embedded"
    cache_prompt: bool = Field(True, description="Reuse llama.cpp's KV cache of a repeated prompt prefix.")
    max_tokens: int = Field(160, ge=16, description="LLM answer length bound.")
    temperature: float = Field(0.2, ge=0, description="LLM sampling temperature.")


class OpenAIAdvisor(AdvisorBase):
    """Any OpenAI-compatible server (vLLM first, e.g. the lab's GPT-OSS-20B)."""

    backend: Literal["openai"]
    base_url: str = Field("http://127.0.0.1:8000/v1", description="Server URL up to /v1.")
    model: str = Field("openai/gpt-oss-20b", description="Model name as the server knows it.")
    api_key: SecretStr = Field(SecretStr(""), description="Bearer key, if the server needs one.")
    structured_outputs: Literal["vllm", "response_format"] = Field(
        "vllm", description="vllm: schema in extra body `structured_outputs` + response_format; else response_format."
    )
    max_concurrency: int = Field(4, ge=1, description="Requests in flight at once.")
    retries: int = Field(2, ge=0, description="Retries after a connection error or 5xx, with backoff.")
    max_tokens: int = Field(160, ge=16, description="LLM answer length bound.")
    max_reply_bytes: int = Field(
        65_536, ge=1024, description="Longest HTTP reply read; a longer one is cut off and counted."
    )
    temperature: float = Field(0.2, ge=0, description="LLM sampling temperature.")
    reasoning_effort: Literal["", "low", "medium", "high"] = Field(
        "", description="A reasoning model's effort (GPT-OSS, sent as `reasoning_effort`); empty: not sent."
    )
    max_reasoning_tokens: int = Field(
        0,
        ge=0,
        description="Tokens a reasoning model may think, on top of max_tokens for its final answer (the request's"
        " max_tokens is their sum: servers count reasoning in it).",
    )
    stream: bool = Field(
        False, description="Stream the reply (server-sent events), read up to max_reply_bytes like any other."
    )


class PlannerFields(AdvisorBase):
    lookahead: int = Field(
        8,
        ge=0,
        le=64,
        description="Also advise the next this-many states along the plan (by exact-state key), so that advice waits"
        " in states the bot has not reached yet (8: DoorKey-8x8 to 0.8 in 0.70x the env steps of 0;"
        " benchmarks/results/archive/ahead-8x8.md).",
    )


class ExpertAdvisor(PlannerFields):
    """The shortest-path planner on the full state: the upper bound of good advice."""

    backend: Literal["expert"]


class AdversarialAdvisor(PlannerFields):
    """The planner's advice, made wrong on purpose."""

    backend: Literal["adversarial"]
    wrong_probability: float = Field(1.0, ge=0, le=1, description="Chance of recommending a wrong action.")


class SimulatedAdvisor(PlannerFields):
    """The planner's answer made imperfect and slow, as a served LLM's would be (`benchmarks/frontier.py`)."""

    backend: Literal["simulated"]
    precision: float = Field(1.0, ge=0, le=1, description="Chance the answer is the planner's.")
    latency_s: float = Field(0.0, ge=0, le=60, description="Seconds before each answer.")
    max_concurrency: int = Field(4, ge=1, description="Answers in flight at once.")


class RandomAdvisor(AdvisorBase):
    """A uniformly random action (or option): tells knowledge from perturbation."""

    backend: Literal["random"]


class NullAdvisor(AdvisorBase):
    """Advice that is a zero bias for every action: its batches count as advised, and nothing else changes."""

    backend: Literal["null"]


class PluginAdvisor(AdvisorBase):
    """A backend from another package, through the `ala.advisors` entry point group."""

    backend: Literal["plugin"]
    plugin: str = Field(min_length=1, description="Name of an `ala.advisors` entry point (a factory taking this spec).")
    options: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="The plug-in's own settings, passed to it as they are."
    )


def _backend_of(value: object) -> str:
    """The tag of an advisor spec (a table or a model); a table without `backend` is the embedded LLM."""
    if isinstance(value, dict):
        return str(value.get("backend", "embedded"))
    return str(getattr(value, "backend", "embedded"))


AdvisorSpec = Annotated[
    Annotated[EmbeddedAdvisor, Tag("embedded")]
    | Annotated[OpenAIAdvisor, Tag("openai")]
    | Annotated[ExpertAdvisor, Tag("expert")]
    | Annotated[AdversarialAdvisor, Tag("adversarial")]
    | Annotated[SimulatedAdvisor, Tag("simulated")]
    | Annotated[RandomAdvisor, Tag("random")]
    | Annotated[NullAdvisor, Tag("null")]
    | Annotated[PluginAdvisor, Tag("plugin")],
    Discriminator(_backend_of),
]
"""One advisor: a table keyed by `backend`, each backend with its own keys (one of another backend is refused)."""
RANKERS = ("expert", "embedded", "openai")
"""The backends that can rank pairs of states (`preference_ranker`)."""
BACKENDS = ("embedded", "openai", "expert", "adversarial", "simulated", "random", "null", "plugin")
_SPECS: TypeAdapter[AdvisorSpec] = TypeAdapter(AdvisorSpec)


def advisor_spec(**fields: object) -> AdvisorSpec:
    """An advisor spec from keyword fields, typed by its `backend` (default: embedded)."""
    return _SPECS.validate_python(fields)


class AdvisorCache(BaseModel):
    """The answer cache (per state) and the situation cache (options)."""

    settings_group: ClassVar[str] = "caches"

    cache: bool = Field(True, description="Reuse advice for identical or near-identical states.")
    cache_size: int = Field(10_000, ge=1, description="Most states remembered.")
    cache_max_distance: int = Field(2, ge=0, description="Initial reuse threshold: differing view cells.")
    cache_target_agreement: float = Field(0.98, gt=0, le=1, description="Agreement the adaptive threshold keeps.")
    cache_audit_rate: float = Field(0.05, ge=0, le=1, description="Share of near hits re-asked to measure agreement.")
    cache_tuning: Literal["agreement", "performance"] = Field(
        "agreement",
        json_schema_extra=EXPERIMENTAL,
        description="What moves the reuse threshold: agreement (audited near hits against fresh answers, toward"
        " cache_target_agreement) or performance (the lift of advised episodes' returns over the control group's,"
        " from the actors' outcome reports: services/advisor/cache_tuning.py).",
    )
    cache_tuning_window: int = Field(
        40, ge=1, le=100_000, json_schema_extra=EXPERIMENTAL, description="Advised episodes per performance window."
    )
    cache_tuning_tolerance: float = Field(
        0.05,
        ge=0,
        json_schema_extra=EXPERIMENTAL,
        description="Return lift a higher threshold may give up against the best lower one before reuse comes down.",
    )
    situation_cache_dir: Path | None = Field(
        Path(".ala/situations"),
        description="Where LLM advisors keep their option answers per situation across runs (one file per advisor,"
        " model, prompt and env); unset: in memory only.",
    )
    situation_cache: bool = Field(
        True,
        description="LLM advisors remember their option answer per situation; false: every digest asks the backend"
        " again (to measure what the cache saves).",
    )
    situation_cache_size: int = Field(4096, ge=1, description="Most situations remembered per advisor.")


class AdvisorReview(BaseModel):
    """The critical-state review of finished episodes (ULTRA)."""

    settings_group: ClassVar[str] = "reviews"

    review: bool = Field(False, description="Critical-state review of finished episodes.")
    review_by: Literal["embedded", "planner"] = Field(
        "embedded",
        description="The reviewer: embedded (the advisors' embedded LLM, by the steps' text) or planner (the"
        " privileged planner, the upper bound; needs chunks with full states, ALA_ACTOR_CHUNK_FULL_STATES=true).",
    )
    review_every_episodes: int = Field(20, ge=1, description="Review one finished episode in this many.")
    review_max_critical: int = Field(3, ge=1, le=10, description="Critical states named per review, at most.")
    review_advice: bool = Field(
        False,
        description="Publish the review's suggested actions as advice about the critical states' observations"
        " (advisor `review-<review_by>`); always, they teach the advisors' caches.",
    )
    review_advice_ttl_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="How long the review's advice stays in force; the router refuses TTLs over its max_ttl_s (60 s"
        " by default).",
    )
    max_implicit_reward: float = Field(0.05, ge=0, description="Bound on the implicit reward of one critical state.")


class AdvisorPreferences(BaseModel):
    """Ranking pairs of states for the learner's reward model (Motif/ONI; services/advisor/ranking.py)."""

    settings_group: ClassVar[str] = "preferences"

    preference_ranker: AdvisorSpec | None = Field(
        None,
        json_schema_extra=EXPERIMENTAL,
        description="The advisor that ranks the actors' PreferenceQuery pairs (JSON, as one of `advisors`): expert"
        " (the planner, by plan length: the upper bound), embedded or openai (an LLM, by the states' text). Unset:"
        " queries are not answered.",
    )
    preference_max_pending: int = Field(
        16, ge=1, le=10_000, description="Queries waiting to be ranked, at most; beyond, the newest are dropped."
    )

    @field_validator("preference_ranker")
    @classmethod
    def _can_rank(cls, spec: "AdvisorSpec | None") -> "AdvisorSpec | None":
        if spec is not None and spec.backend not in RANKERS:
            raise ValueError(f"backend {spec.backend!r} cannot rank states; use one of {RANKERS}")
        return spec


class AdvisorSettings(ServiceSettings, AdvisorCache, AdvisorReview, AdvisorPreferences):
    service: ClassVar[str] = "advisor"
    model_config = SettingsConfigDict(env_prefix="ALA_ADVISOR_")

    metrics_port: int = Field(9101, ge=0, le=65535, description="Port of /metrics (0 = a free one).")
    advisors: list[AdvisorSpec] = Field(
        default_factory=lambda: [EmbeddedAdvisor(name="llm-0")],
        description="The advisors this process runs (JSON list); each answers every digest on its own.",
    )
    queue_group: str = Field("advisors", description="Replicas in one queue group share the digests.")
    max_pending: int = Field(
        256, ge=1, description="Bots with a digest waiting, per advisor; beyond, the oldest is dropped."
    )
    workers: int = Field(2, ge=1, description="Digests being answered at once, per advisor.")
    prompt_dir: Path = Field(PROMPTS, description="Folder with system.txt and user.txt prompt templates.")

    @field_validator("situation_cache_dir", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value  # ALA_ADVISOR_SITUATION_CACHE_DIR= (empty): in memory only
