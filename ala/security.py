"""Who may publish and subscribe what on the bus: one NATS user per service, with subject permissions that match
the wire (`protos.subjects`), and the broker configuration that enforces them.

Only the router publishes biases, only advisors advice, only actors trajectories, digests and outcomes, only the
learner weights (announcements and the Object Store); everyone else is denied, and the client that tried sees a
permissions violation (counted in `ala_<service>_nats_permission_denied_total`). Anonymous clients cannot connect.

Passwords are random, one file per service (`<dir>/<service>.password`, mode 0600), generated once and reused;
services read theirs from `ALA_NATS_PASSWORD_FILE` (or `ALA_NATS_PASSWORD`). `ala up` hands them out itself.

JetStream is split by role too. Only the learner, which owns every stream and bucket (it consumes the trajectories
and writes the weights), may manage them: it provisions them at start (`Bus.provision`) and acks its chunks. Every
other service may only read: stream info (it waits for the learner's streams at start, `Bus.await_streams`), the
newest weights announcement, and the weights objects (direct gets, and the ordered consumer an Object Store read
creates). None of them may purge, delete or update a stream, delete the bucket, or touch a consumer of another
stream: a stolen actor credential, on the edge device easiest to take, cannot wipe the run's data
(`tests/test_security.py` tries). The advisor's episode review reads the trajectories as they are published, through
a core subscription, so it needs no JetStream consumer at all.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from protos.subjects import STREAM_NAMES, WEIGHTS_ANNOUNCEMENTS, WEIGHTS_BUCKET, object_stream_name

USERS = ("advisor", "router", "actor", "learner", "evaluator")
"""One user per service; `ala up`, compose and Helm give each service its own."""

ANY_RUN = "ala.*"
STREAMS_OWNER = "learner"
"""The one user that may manage JetStream (create, update, purge or delete streams, buckets and consumers)."""
JS_API = "$JS.API"


def manages_streams(user: str) -> bool:
    """Whether a service connected as `user` provisions the streams: the owner, or anyone on a broker without users
    (a laptop's `ala up --no-auth`, tests), where nothing is split by role."""
    return user in ("", STREAMS_OWNER)


_STREAM_INFO = (f"{JS_API}.INFO", f"{JS_API}.STREAM.NAMES", *(f"{JS_API}.STREAM.INFO.{name}" for name in STREAM_NAMES))
_WEIGHTS_STREAM = object_stream_name(WEIGHTS_BUCKET)
_READ_WEIGHTS = (
    f"{JS_API}.STREAM.MSG.GET.{WEIGHTS_ANNOUNCEMENTS.name}",  # the newest announcement, at start
    f"{JS_API}.DIRECT.GET.{_WEIGHTS_STREAM}.>",  # an object's metadata
    f"{JS_API}.STREAM.MSG.GET.{_WEIGHTS_STREAM}",
    f"{JS_API}.CONSUMER.CREATE.{_WEIGHTS_STREAM}",  # the ordered consumer that reads an object's chunks
    f"{JS_API}.CONSUMER.CREATE.{_WEIGHTS_STREAM}.>",
    f"$JS.FC.{_WEIGHTS_STREAM}.>",  # its flow-control replies
)


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


# What every service needs: its heartbeats, everyone's heartbeats, read-only stream info and request replies.
_COMMON = Permissions(publish=(*_STREAM_INFO, "_INBOX.>"), subscribe=(f"{ANY_RUN}.heartbeat.>", "_INBOX.>"))

PERMISSIONS: dict[str, Permissions] = {
    "router": Permissions(
        publish=(f"{ANY_RUN}.bias.*",),
        subscribe=(f"{ANY_RUN}.advice.*", f"{ANY_RUN}.outcome.*", f"{ANY_RUN}.weights"),
    ),
    "advisor": Permissions(
        publish=(
            f"{ANY_RUN}.advice.*",
            f"{ANY_RUN}.digest-request.*",
            f"{ANY_RUN}.implicit-reward",
            f"{ANY_RUN}.preference",
        ),
        subscribe=(
            f"{ANY_RUN}.digest.*",
            f"{ANY_RUN}.trajectories.*",
            f"{ANY_RUN}.preference-query.*",
            f"{ANY_RUN}.outcome.*",  # the cache tuned by performance reads the episodes' outcomes
        ),
    ),
    "actor": Permissions(
        publish=(
            f"{ANY_RUN}.trajectories.*",
            f"{ANY_RUN}.digest.*",
            f"{ANY_RUN}.outcome.*",
            f"{ANY_RUN}.preference-query.*",
            *_READ_WEIGHTS,
        ),
        subscribe=(f"{ANY_RUN}.bias.*", f"{ANY_RUN}.digest-request.*", f"{ANY_RUN}.weights"),
    ),
    "learner": Permissions(
        publish=(f"{ANY_RUN}.weights", f"$O.{WEIGHTS_BUCKET}.>", f"{JS_API}.>", "$JS.ACK.>"),  # the owner
        subscribe=(f"{ANY_RUN}.implicit-reward", f"{ANY_RUN}.preference"),
    ),
    "evaluator": Permissions(
        publish=(f"{ANY_RUN}.eval", *_READ_WEIGHTS),
        subscribe=(f"{ANY_RUN}.weights",),
    ),
}


@dataclass
class Credentials:
    """Each service's password, kept in `directory`."""

    directory: Path
    passwords: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load_or_create(cls, directory: Path) -> Credentials:
        """Read every service's password file, creating the missing ones (0600) with a random password."""
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        credentials = cls(directory)
        for user in USERS:
            path = credentials.password_file(user)
            if not path.exists():  # written whole, then renamed: a reader never sees a half-written file
                partial = path.with_suffix(".partial")
                partial.touch(mode=0o600)
                partial.write_text(secrets.token_urlsafe(24))
                os.replace(partial, path)
            credentials.passwords[user] = path.read_text().strip()
        return credentials

    def password_file(self, user: str) -> Path:
        return self.directory / f"{user}.password"

    def env(self, user: str) -> dict[str, str]:
        """The variables that connect a service as `user`."""
        return {"ALA_NATS_USER": user, "ALA_NATS_PASSWORD_FILE": str(self.password_file(user))}


def allowed(user: str) -> Permissions:
    """Everything `user` may publish and subscribe: what every service needs, and its own subjects."""
    own = PERMISSIONS[user]
    return Permissions(
        publish=(*_COMMON.publish, f"{ANY_RUN}.heartbeat.{user}.*", *own.publish),
        subscribe=(*_COMMON.subscribe, *own.subscribe),
    )


def permissions_document() -> dict[str, dict[str, list[str]]]:
    """The same rules as data, for brokers this module does not configure (the Helm chart's
    `files/nats-permissions.json`: `python -m ala.security > deploy/helm/ala/files/nats-permissions.json`)."""
    return {
        user: {"publish": list(allowed(user).publish), "subscribe": list(allowed(user).subscribe)} for user in USERS
    }


def _quoted(subjects: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{subject}"' for subject in subjects) + "]"


def render_authorization(credentials: Credentials) -> str:
    """The nats-server `authorization` block: one user per service, allowed exactly its subjects."""
    lines = ["authorization {", "  users = ["]
    for user in USERS:
        rules = allowed(user)
        allow = f"publish: {{allow: {_quoted(rules.publish)}}}, subscribe: {{allow: {_quoted(rules.subscribe)}}}"
        lines.append(f'    {{user: "{user}", password: "{credentials.passwords[user]}", permissions: {{{allow}}}}}')
    lines += ["  ]", "}"]
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(permissions_document(), indent=2))
