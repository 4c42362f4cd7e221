"""The wire contract: every message ALA services exchange, as msgspec Structs encoded with MessagePack.
One module on purpose (over 300 lines): the whole contract is read in one place, by people and by the schema export.

Rules that keep old and new services talking (msgspec's schema-evolution guide):
- every message is a tagged Struct (`"type": "<ClassName>"` on the wire) carrying `schema_version`;
- a new field gets a default and goes last; a field never changes type; unknown fields are ignored on decode;
- numeric arrays travel as `Array` (raw little-endian bytes + dtype + shape), never as lists of floats.

`encode(msg)` and `decode(data, Type)` are the only way in and out; `decode` raises `WireError` and nothing else.
"""

from __future__ import annotations

import math
import sys
from typing import Annotated, Any, TypeVar

import msgspec
import numpy as np

SCHEMA_VERSION = 1

# dtypes a non-Python client must support; everything is little-endian on the wire.
ALLOWED_DTYPES = frozenset({"|b1", "|u1", "|i1", "<i2", "<i4", "<i8", "<u2", "<u4", "<f2", "<f4", "<f8"})
MAX_DIMS = 8
MAX_ACTORS = 4096
MAX_ADVISORS = 64
"""Advisors one message may name (merged advice, trust reports, the router's reach)."""
"""Actor instances one message may name (a lab runs tens; a size bound on what comes from outside)."""

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
SITUATION_KEY_PREFIX = "sit:"
"""Keys of abstract situations (`ala.envs.options`), which option advice is about, start with it."""
StateKey = Annotated[str, msgspec.Meta(max_length=64)]
Share = Annotated[float, msgspec.Meta(ge=0, le=1)]
"""A canonical key of one observation (`ala.rl.trajectory.observation_key`: 16 hex digits); empty: none."""


class WireError(ValueError):
    """Bytes that are not a valid ALA message of the expected type."""


class Array(msgspec.Struct, kw_only=True, frozen=True):
    """An n-dimensional numeric array: `data` holds `prod(shape)` little-endian items of `dtype` in C order."""

    dtype: str
    """numpy dtype string, e.g. `<f4` (float32), `<i8` (int64), `|b1` (bool)."""
    shape: tuple[NonNegInt, ...]
    data: bytes

    def __post_init__(self) -> None:
        # Runs on decode too, so a truncated or mislabelled array is a WireError at the boundary.
        if self.dtype not in ALLOWED_DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {sorted(ALLOWED_DTYPES)}")
        if len(self.shape) > MAX_DIMS:
            raise ValueError(f"{len(self.shape)} dimensions, at most {MAX_DIMS}")
        expected = math.prod(self.shape) * np.dtype(self.dtype).itemsize
        if expected != len(self.data):
            raise ValueError(f"shape {self.shape} of {self.dtype} needs {expected} bytes, got {len(self.data)}")

    @classmethod
    def from_numpy(cls, array: np.ndarray) -> Array:
        array = np.asarray(array)
        if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and sys.byteorder == "big"):
            array = array.astype(array.dtype.newbyteorder("<"))
        # tobytes() writes C order whatever the layout, so no contiguous copy is needed first.
        return cls(dtype=array.dtype.newbyteorder("<").str, shape=array.shape, data=array.tobytes())

    def to_numpy(self) -> np.ndarray:
        """A read-only view on the bytes; copy it before writing."""
        return np.frombuffer(self.data, dtype=np.dtype(self.dtype)).reshape(self.shape)


class MessageBase(msgspec.Struct, kw_only=True, tag=True):
    """Base of every message: tagged with its class name on the wire."""

    schema_version: int = SCHEMA_VERSION
    """Version of the contract the sender was built against."""


class ActionSpace(msgspec.Struct, kw_only=True, frozen=True):
    """A discrete action space: `n` actions, named for prompts and dashboards."""

    n: Annotated[int, msgspec.Meta(ge=1, le=4096)]
    names: list[str] = []
    options: Annotated[list[Annotated[str, msgspec.Meta(max_length=64)]], msgspec.Meta(max_length=32)] = []
    """The env's options (`PolicySpec.option_names`): what option advice for this actor may choose, by index."""


class PolicySpec(msgspec.Struct, kw_only=True, frozen=True):
    """What fixes the policy network's shape and input encoding. The actor derives it from its environment adapter
    and announces it (heartbeats); the learner builds its network from it and repeats it with every weights
    announcement, so no other service has to build an environment to learn it."""

    env_id: str
    """The Gymnasium environment id the actor runs."""
    family: Name
    """The environment adapter that serves it (`minigrid`, `gym`, or a user's own): what text and expert state
    its digests can carry."""
    obs_dim: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
    """Length of the flat float32 observation the policy reads."""
    n_actions: Annotated[int, msgspec.Meta(ge=1, le=4096)]
    onehot_classes: Annotated[int, msgspec.Meta(ge=0, le=256)] = 0
    """>0: observations are small non-negative integer codes (MiniGrid's object, colour and state), one-hot encoded
    into that many classes by the policy; 0: observations are fed as they are."""
    hidden: Annotated[int, msgspec.Meta(ge=1, le=65536)] = 64
    """Hidden units per layer of actor and critic."""
    action_names: list[str] = []
    option_names: Annotated[list[Annotated[str, msgspec.Meta(max_length=64)]], msgspec.Meta(max_length=32)] = []
    """Options the env's adapter declares (`ala.envs.options`): what option advice may choose from, by index."""


class StateDigest(MessageBase):
    """actor → advisor: what one bot sees now, for an LLM to advise on."""

    run: Name
    actor: Name
    bot: NonNegInt
    env_step: NonNegInt
    """Steps this actor has taken over all bots when the digest was made."""
    episode: NonNegInt
    """Episode counter of this bot."""
    text: str
    """The state rendered as text for an LLM (mission, visible objects, carried item, ...)."""
    observation: Array
    """The compact observation exactly as the policy saw it."""
    action_names: list[str]
    created_at: float
    """Unix time (seconds) at the actor."""
    state_key: StateKey = ""
    """Key of the observation the bot's policy sees (sha1 of its float32 bytes, 16 hex digits): advice naming it
    reaches every bot of the actor that meets the same observation."""
    full_state: Array | None = None
    """Privileged full state for expert advisors (MiniGrid: the whole grid as uint8 codes, W x H x 3, the agent's
    cell holding (agent, 0, direction)); None when the actor does not share it."""
    situation_key: Annotated[str, msgspec.Meta(max_length=256)] = ""
    """The bot's abstract situation (`ala.envs.options`), for option advice; empty where the env declares no
    options."""
    situation: Annotated[str, msgspec.Meta(max_length=1024)] = ""
    """The situation in words for an LLM."""
    full_state_key: StateKey = ""
    """Key of `full_state` ("full:" + 16 hex digits), set with it. An advisor that reads the full state names this
    key: its advice is about the exact state, and observations that alias it (different states that look alike to
    the policy) do not get it."""
    env_id: Annotated[str, msgspec.Meta(max_length=128)] = ""
    """The Gymnasium env the bot runs: an expert advisor plans on `full_state` with that env's adapter
    (`ala.envs.adapter_for`); empty from actors before it was sent."""


class AdviceTarget(msgspec.Struct, kw_only=True, frozen=True):
    """Who the advice is for; an empty field means 'any'."""

    actor: str = ""
    bot: int | None = None
    state_key: StateKey = ""
    """Non-empty: the advice is about the state with this key (state-scoped), not about the bot."""


class DigestRequest(MessageBase):
    """advisor → actor: publish `StateDigest`s of these bots at their next step (on-demand digests)."""

    run: Name
    actor: Name
    bots: list[NonNegInt] = []
    """Bot indices; empty means every bot of the actor."""
    requested_by: str = ""
    created_at: float = 0.0


class Advice(MessageBase):
    """advisor → router: a suggestion, never a command. Give `scores` or `recommended_action`.

    Semantic checks (finite numbers, action count, ranges, expiry) are the router's job, so that each rejection is
    counted by reason there; decoding only checks types.
    """

    advice_id: Name
    advisor: Name
    priority: float
    """Higher wins when advisors disagree; the router multiplies it by its live trust weight."""
    target: AdviceTarget
    ttl_s: float
    """Seconds the advice stays valid after `created_at`."""
    created_at: float
    scores: Array | None = None
    """Per-action preference scores (float32, shape `(n_actions,)`), turned into logits by the router."""
    recommended_action: int | None = None
    recommended_option: int | None = None
    """An option (index into the actor's `ActionSpace.options`) to follow in the situation `target.state_key` names:
    strategic advice, executed by the option's skill at the actor. Give one of scores, recommended_action and it."""
    confidence: float = 1.0
    """In [0, 1]: how sure the advisor is."""
    rationale: str = ""


class BiasUpdate(MessageBase):
    """router → actor: a bounded logit bias for some bots of one actor, expiring `ttl_s` after receipt."""

    run: Name
    actor: Name
    bots: list[NonNegInt]
    """Bot indices on that actor; empty means every bot."""
    bias: Array
    """float32, shape `(n_actions,)`, each element already within the router's `[-b_max, b_max]`."""
    ttl_s: float
    """Remaining time-to-live when sent. The actor expires the bias by its own clock, so clocks need not agree."""
    advice_ids: list[str]
    created_at: float
    advice_created_at: float = 0.0
    """Earliest `created_at` of the advice merged into this bias, for end-to-end latency metrics."""
    state_key: StateKey = ""
    """Non-empty: state-scoped advice. The bias applies to every bot of the actor while its observation has this key
    (`StateDigest.state_key`), whichever bot it was asked for; `bots` is ignored. Empty: per-bot advice for `bots`,
    which also ends with the bot's episode."""
    ttl_steps: NonNegInt = 0
    """Also expire after this many steps of each bot (the actor's ticks), whichever comes first with `ttl_s`; 0:
    time only."""
    advisors: Annotated[list[Name], msgspec.Meta(max_length=64)] = []
    """The advisors whose advice is merged into this bias: actors credit episode outcomes to them (trust)."""
    options: bool = False
    """True: `bias` is over the actor's options (`ActionSpace.options`), scoped to the situation `state_key` names;
    the actor follows the option with the largest bias through its skill (`services/actor/options.py`)."""
    reach: Share = 1.0
    """The share of bot-episodes this bias applies in (the router's trust, as reach). Each episode an actor draws
    one number per bot, uniform in [0, 1), and applies the bias to that bot only if the draw is below `reach`: an
    unproven advisor shapes only a share of the experience, at its full strength."""


class TrajectoryChunk(MessageBase):
    """actor → learner (JetStream): T steps of N bots, with everything the learner needs to correct off-policy data.

    Arrays are time-major, `(T, N, ...)`. `behaviour_logprob` is `log softmax(logits + bias)[a]`, the distribution
    actually sampled from; `policy_logprob` is `log softmax(logits)[a]` of the same policy without the bias.
    """

    run: Name
    actor: Name
    chunk_seq: NonNegInt
    """Per-actor sequence number; with run and actor it forms the JetStream `Nats-Msg-Id`."""
    policy_version: NonNegInt
    bot_ids: Array
    """int32 `(N,)`."""
    observations: Array
    """`(T, N, *obs_shape)`, exactly as the policy saw them: float32, or uint8 when every value is an integer in
    [0, 255] (lossless; MiniGrid's codes), which receivers decode to float32."""
    actions: Array
    """int64 `(T, N)`."""
    rewards: Array
    """float32 `(T, N)`."""
    terminated: Array
    """bool `(T, N)`."""
    truncated: Array
    """bool `(T, N)`."""
    behaviour_logprob: Array
    """float32 `(T, N)`."""
    policy_logprob: Array
    """float32 `(T, N)`."""
    bias: Array
    """float32 `(T, N, n_actions)`: the bias added to the logits at each step (zeros when none was active)."""
    values: Array
    """float32 `(T, N)`."""
    bootstrap_value: Array
    """float32 `(N,)`: value of the observation after the last step, for GAE / V-trace."""
    final_values: Array
    """float32 `(T, N)`: where `truncated`, the value of the episode's final observation (bootstrapped, since a time
    limit is not a terminal state); 0 elsewhere."""
    created_at: float
    advice: Array | None = None
    """float32 `(T, N, n_actions)`, distillation mode only: the advice in force at each step, *not* added to the
    logits (the learner distils it into the policy); None when advice was applied as `bias`."""
    advised: Array | None = None
    """bool `(T, N)`: advice from some advisor was in force for that bot at that step, whatever its value (a zero
    bias too: the null advisor's), so `bias` and `advice` alone cannot tell. None from actors that do not record it;
    the learner then infers advice from a non-zero bias on the taken action or advice to distil."""
    full_states: Array | None = None
    """uint8 `(T, N, *state_shape)`: each bot's privileged full state when it acted (MiniGrid: the grid's codes, as
    `StateDigest.full_state`), for a review that plans (the critical-state review with the planner as reviewer);
    None unless the actor shares them (`[actor.experimental] chunk_full_states`). The learner ignores them."""


class OnnxExport(msgspec.Struct, kw_only=True, frozen=True):
    """The announced policy version exported to ONNX (`ala.rl.onnx_policy`), beside the torch weights in the same
    bucket: what actors run with `ALA_ACTOR_BACKEND=onnx`. Input `obs` float32 `(B, obs_dim)`; outputs `logits`
    float32 `(B, n_actions)` and `value` float32 `(B,)`; the batch dimension is dynamic."""

    name: Name
    """Object name in the announcement's bucket."""
    sha256: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
    size: NonNegInt
    opset: Annotated[int, msgspec.Meta(ge=1)]
    """The ONNX opset the graph was exported with."""
    probe_logits: Array
    """The torch policy's logits, float32 `(16, n_actions)`, on the probe batch every side derives from the
    `PolicySpec` alone (`ala.rl.onnx_policy.probe_batch`): an actor installs the model only if its own logits on
    that batch are within its tolerance of these. At most 256 KiB (4096 actions)."""
    probe_values: Array
    """The torch policy's values on the probe batch, float32 `(16,)`, checked the same way."""


class WeightsAnnouncement(MessageBase):
    """learner → actors: a new policy version is ready at `bucket`/`name` in the JetStream Object Store."""

    run: Name
    version: NonNegInt
    bucket: Name
    name: Name
    sha256: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
    size: NonNegInt
    created_at: float
    policy: PolicySpec | None = None
    """The network these weights fit; actors refuse weights whose spec differs from their own."""
    settled_stream_seq: NonNegInt = 0
    """The highest `ALA_TRAJECTORIES` stream sequence the learner has settled (trained on, or dropped): actors
    compare it with their own chunks' sequences to know how far ahead of training they are (flow control)."""
    env_steps: NonNegInt = 0
    """Env steps behind these weights: every step of every chunk the learner ranks trained on or dropped as stale,
    each chunk counted once, up to this version (the sum of `env_steps_by_actor`). The evaluator reports it with the
    version's score, so a learning curve's x axis is exact."""
    env_steps_by_actor: Annotated[dict[Name, NonNegInt], msgspec.Meta(max_length=MAX_ACTORS)] = {}
    """The same steps per actor instance."""
    onnx: OnnxExport | None = None
    """The same weights as an ONNX model, with the probe output it must reproduce; None from a learner that does not
    export (actors running ONNX then export the verified torch weights themselves)."""
    learner_ranks: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    """Learner ranks training together, each update taking a chunk per rank: an actor lets that many times more
    chunks wait for training (flow control), or lockstep ranks would wait for each other's chunks."""


class ImplicitReward(MessageBase):
    """advisor → learner: a bounded extra reward for taking `action` in a state an LLM review found critical."""

    run: Name
    actor: Name
    bot: NonNegInt
    state_key: str
    """sha1 of the observation bytes (first 16 hex digits)."""
    observation: Array
    action: NonNegInt
    reward: float
    """Already bounded by the advisor (|reward| <= its max_implicit_reward)."""
    source: str
    created_at: float


class PreferenceQuery(MessageBase):
    """actor → advisor: which of two states, met by two of the actor's bots, is closer to finishing the task? The
    answer trains the learner's reward model (Motif, arXiv 2310.00166; ONI, arXiv 2410.23022)."""

    run: Name
    actor: Name
    query: NonNegInt
    """Per-actor sequence number of the query."""
    first: StateDigest
    second: StateDigest
    created_at: float


class Preference(MessageBase):
    """advisor → learner: an advisor's ranking of a `PreferenceQuery`'s two states, with the observations the reward
    model reads (as the policy saw them)."""

    run: Name
    actor: Name
    query: NonNegInt
    first: Array
    second: Array
    preferred: Annotated[int, msgspec.Meta(ge=0, le=1)]
    """0: the first state is closer to the goal; 1: the second. Ties are not sent."""
    source: Name
    """The advisor that ranked."""
    created_at: float


class Evaluation(MessageBase):
    """evaluator → anyone (dashboards, benchmarks): the policy alone (no bias) on held-out env seeds."""

    run: Name
    policy_version: NonNegInt
    env_steps: NonNegInt
    """Env steps the actors had taken when this version was announced (the x axis of learning curves)."""
    episodes: NonNegInt
    """Episodes per mode, one per held-out seed."""
    mean_return: float
    """Sampled actions (the policy as it trains): the number benchmarks and dashboards read."""
    success_rate: float
    """Share of sampled episodes with a positive return."""
    greedy_return: float
    """The most likely action at every step."""
    greedy_success_rate: float
    seconds: float
    """Time the evaluation took."""
    created_at: float


class EpisodeStats(msgspec.Struct, kw_only=True, frozen=True):
    """Returns of some finished episodes: count, sum and sum of squares (mergeable)."""

    episodes: NonNegInt = 0
    return_sum: float = 0.0
    return_sq_sum: float = 0.0


class AdviceOutcome(MessageBase):
    """actor → router, every few seconds: how episodes ended since the last report, for evidence-driven trust.

    `control` holds the bot-episodes the actor played with no advice at all (a random share); `advised` the
    episodes each advisor's advice reached (an episode advised by two advisors counts for both)."""

    run: Name
    actor: Name
    control: EpisodeStats
    advised: Annotated[dict[Name, EpisodeStats], msgspec.Meta(max_length=64)]
    created_at: float


class Heartbeat(MessageBase):
    """Every service, every few seconds: who it is, which build, and (actors) what it can do."""

    run: Name
    service: Name
    instance: Name
    software_version: str
    seq: NonNegInt
    started_at: float
    created_at: float
    host: str = ""
    action_space: ActionSpace | None = None
    """Actors only: the action space their bots act in; the router checks advice against it."""
    num_bots: NonNegInt = 0
    policy: PolicySpec | None = None
    """Actors only: the policy their bots sample from; the learner builds its network from the first it hears."""
    env_steps: NonNegInt = 0
    """Actors only: env steps taken so far, summed over bots."""
    policy_backend: Annotated[str, msgspec.Meta(max_length=16)] = ""
    """Actors only: what runs their policy forward (`torch` or `onnx`); the learner exports ONNX models while any
    actor it hears runs `onnx`."""
    b_max: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    """Routers only: the bound every bias element is clipped to; actors clip to it too (0: not announced)."""
    max_ttl_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    """Routers only: the longest TTL the router grants; actors cap every bias's TTL at it (0: not announced)."""
    reads: Annotated[list[Annotated[str, msgspec.Meta(max_length=32)]], msgspec.Meta(max_length=8)] = []
    """Advisors only: the parts of a digest their backends reason from (`text`, `full_state`, `observation`): an
    actor whose digests carry none of them sends none."""
    reach: Annotated[dict[Name, Annotated[float, msgspec.Meta(ge=0, le=1)]], msgspec.Meta(max_length=MAX_ADVISORS)] = {}
    """Routers only: each advisor's reach now, the share of bot-episodes its advice applies in (its trust). Actors
    assign each bot-episode to the advisors whose reach includes it when it starts, and ask for advice only as often
    as the most trusted advisor can use (empty: not announced)."""


Message = (
    StateDigest
    | DigestRequest
    | Advice
    | BiasUpdate
    | TrajectoryChunk
    | WeightsAnnouncement
    | ImplicitReward
    | PreferenceQuery
    | Preference
    | Evaluation
    | AdviceOutcome
    | Heartbeat
)
MESSAGE_TYPES: tuple[type[MessageBase], ...] = (
    StateDigest,
    DigestRequest,
    Advice,
    BiasUpdate,
    TrajectoryChunk,
    WeightsAnnouncement,
    ImplicitReward,
    PreferenceQuery,
    Preference,
    Evaluation,
    AdviceOutcome,
    Heartbeat,
)

M = TypeVar("M", bound=MessageBase)

_encoder = msgspec.msgpack.Encoder()
_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {t: msgspec.msgpack.Decoder(t) for t in MESSAGE_TYPES}
_decoders[Message] = msgspec.msgpack.Decoder(Message)


def encode(message: MessageBase) -> bytes:
    return _encoder.encode(message)


def decode(data: bytes, expected: type[M]) -> M:
    """Decode `data` as an `expected` message; any problem (bad bytes, wrong type or shape) is a `WireError`."""
    try:
        return _decoders[expected].decode(data)
    except (msgspec.DecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise WireError(f"not a valid {getattr(expected, '__name__', 'ALA message')}: {exc}") from exc


def decode_any(data: bytes) -> Message:
    """Decode any ALA message, dispatching on its `type` tag."""
    return decode(data, Message)  # type: ignore[arg-type]
