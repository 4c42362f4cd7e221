"""Every NATS subject, JetStream stream and bucket name in ALA, in one place.

Subjects are `ala.<run>.<kind>.<who>`, so one broker can host several runs and a service subscribes to its run with
a wildcard. Nothing outside this module builds a subject string. See `protos/README.md` for the table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
BROADCAST = "all"
"""Actor token meaning 'every actor of the run' in bias subjects."""


def check_token(value: str, what: str = "name") -> str:
    """A run, actor, advisor or instance name must be one NATS subject token: letters, digits, `_` and `-`."""
    if not _TOKEN.match(value):
        raise ValueError(f"{what} {value!r} must be 1-64 characters of letters, digits, '_' or '-'")
    return value


def _subject(run: str, kind: str, *who: str) -> str:
    return ".".join(["ala", check_token(run, "run"), kind, *who])


# Core NATS: low latency, at most once.
def digest_subject(run: str, actor: str) -> str:
    """actor → advisor: `StateDigest`s of one actor's bots."""
    return _subject(run, "digest", check_token(actor, "actor"))


def digest_wildcard(run: str) -> str:
    return _subject(run, "digest", "*")


def digest_request_subject(run: str, actor: str) -> str:
    """advisor → actor: `DigestRequest`s (digests on demand)."""
    return _subject(run, "digest-request", check_token(actor, "actor"))


def advice_subject(run: str, advisor: str) -> str:
    """advisor → router: `Advice` from one advisor."""
    return _subject(run, "advice", check_token(advisor, "advisor"))


def advice_wildcard(run: str) -> str:
    return _subject(run, "advice", "*")


def bias_subject(run: str, actor: str) -> str:
    """router → actor: `BiasUpdate`s for one actor (`BROADCAST` reaches every actor)."""
    return _subject(run, "bias", check_token(actor, "actor"))


def implicit_reward_subject(run: str) -> str:
    """advisor → learner: `ImplicitReward`s from critical-state review."""
    return _subject(run, "implicit-reward")


def preference_query_subject(run: str, actor: str) -> str:
    """actor → advisor: `PreferenceQuery`s (pairs of states to rank)."""
    return _subject(run, "preference-query", check_token(actor, "actor"))


def preference_query_wildcard(run: str) -> str:
    return _subject(run, "preference-query", "*")


def preference_subject(run: str) -> str:
    """advisor → learner: `Preference`s (ranked pairs, for the reward model)."""
    return _subject(run, "preference")


def evaluation_subject(run: str) -> str:
    """evaluator → anyone: `Evaluation`s of policy versions."""
    return _subject(run, "eval")


def outcome_subject(run: str, actor: str) -> str:
    """actor → router: `AdviceOutcome`s (episode returns with and without advice)."""
    return _subject(run, "outcome", check_token(actor, "actor"))


def outcome_wildcard(run: str) -> str:
    return _subject(run, "outcome", "*")


def heartbeat_subject(run: str, service: str, instance: str) -> str:
    """every service: `Heartbeat`s."""
    return _subject(run, "heartbeat", check_token(service, "service"), check_token(instance, "instance"))


def heartbeat_wildcard(run: str, service: str = "") -> str:
    """Every heartbeat of the run, or of one service's instances."""
    return (
        _subject(run, "heartbeat", check_token(service, "service"), "*") if service else _subject(run, "heartbeat", ">")
    )


# JetStream: durable, at least once, de-duplicated by Nats-Msg-Id.
def trajectory_subject(run: str, actor: str) -> str:
    """actor → learner: `TrajectoryChunk`s, stored in `TRAJECTORIES`."""
    return _subject(run, "trajectories", check_token(actor, "actor"))


def trajectory_wildcard(run: str) -> str:
    return _subject(run, "trajectories", "*")


def trajectory_msg_id(run: str, actor: str, chunk_seq: int) -> str:
    """The `Nats-Msg-Id` of a chunk: a retried publish of the same chunk is stored once."""
    return f"{run}.{actor}.{chunk_seq}"


def weights_subject(run: str) -> str:
    """learner → actors: `WeightsAnnouncement`s, stored in `WEIGHTS_ANNOUNCEMENTS` (last one kept)."""
    return _subject(run, "weights")


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    max_msgs_per_subject: int = -1
    """-1 keeps everything (within limits); 1 keeps only the newest message per subject."""
    max_age_s: float = 0.0
    """0 keeps messages until consumed by limits."""
    duplicate_window_s: float = 120.0


TRAJECTORIES = StreamSpec(name="ALA_TRAJECTORIES", subjects=("ala.*.trajectories.*",), max_age_s=24 * 3600)
WEIGHTS_ANNOUNCEMENTS = StreamSpec(name="ALA_WEIGHTS", subjects=("ala.*.weights",), max_msgs_per_subject=1)
STREAMS: tuple[StreamSpec, ...] = (TRAJECTORIES, WEIGHTS_ANNOUNCEMENTS)

WEIGHTS_BUCKET = "ala_weights"
"""JetStream Object Store bucket holding policy weights, one object per `<run>/<version>` (torch) and its ONNX export
`<run>/<version>.onnx`."""
OBJECT_BUCKETS: tuple[str, ...] = (WEIGHTS_BUCKET,)


def object_stream_name(bucket: str) -> str:
    """The JetStream stream that stores an Object Store bucket (JetStream's own naming)."""
    return f"OBJ_{bucket}"


STREAM_NAMES: tuple[str, ...] = (*(spec.name for spec in STREAMS), *map(object_stream_name, OBJECT_BUCKETS))
"""Every JetStream stream ALA uses, buckets' included: what the owner provisions and the others wait for."""


def weights_object_name(run: str, version: int) -> str:
    return f"{check_token(run, 'run')}/{version}"


def onnx_object_name(run: str, version: int) -> str:
    """The same version exported to ONNX, beside the torch weights."""
    return f"{weights_object_name(run, version)}.onnx"
