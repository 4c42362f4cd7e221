"""Who may publish and subscribe what on the bus: one NATS user per service, with subject permissions that match
the wire (`protos.subjects`), and the broker configuration that enforces them.

Only the router publishes biases, only advisors advice, only actors trajectories, digests and outcomes, only the
learner weights (announcements and the Object Store); everyone else is denied, and the client that tried sees a
permissions violation (counted in `ala_<service>_nats_permission_denied_total`). Anonymous clients cannot connect.

Passwords are random, one file per service (`<dir>/<service>.password`, mode 0600), generated once and reused;
services read theirs from `ALA_NATS_PASSWORD_FILE` (or `ALA_NATS_PASSWORD`). `ala up` hands them out itself.

Known gap: every service may use the JetStream API (`$JS.API.>`), since each provisions the streams it needs at
start; an authenticated service could therefore manage streams. Only subjects that carry data are split by role.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from protos.subjects import WEIGHTS_BUCKET

USERS = ("advisor", "router", "actor", "learner", "evaluator")
"""One user per service; `ala up`, compose and Helm give each service its own."""

ANY_RUN = "ala.*"


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


# What every service needs: its heartbeats, everyone's heartbeats, the JetStream API and its replies.
_COMMON = Permissions(
    publish=("$JS.API.>", "$JS.ACK.>", "_INBOX.>"),
    subscribe=(f"{ANY_RUN}.heartbeat.>", "_INBOX.>"),
)

PERMISSIONS: dict[str, Permissions] = {
    "router": Permissions(
        publish=(f"{ANY_RUN}.bias.*",),
        subscribe=(f"{ANY_RUN}.advice.*", f"{ANY_RUN}.outcome.*", f"{ANY_RUN}.weights"),
    ),
    "advisor": Permissions(
        publish=(f"{ANY_RUN}.advice.*", f"{ANY_RUN}.digest-request.*", f"{ANY_RUN}.implicit-reward"),
        subscribe=(f"{ANY_RUN}.digest.*",),
    ),
    "actor": Permissions(
        publish=(f"{ANY_RUN}.trajectories.*", f"{ANY_RUN}.digest.*", f"{ANY_RUN}.outcome.*"),
        subscribe=(f"{ANY_RUN}.bias.*", f"{ANY_RUN}.digest-request.*", f"{ANY_RUN}.weights"),
    ),
    "learner": Permissions(
        publish=(f"{ANY_RUN}.weights", f"$O.{WEIGHTS_BUCKET}.>"),
        subscribe=(f"{ANY_RUN}.implicit-reward",),
    ),
    "evaluator": Permissions(
        publish=(f"{ANY_RUN}.eval",),
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
