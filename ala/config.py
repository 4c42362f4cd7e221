"""Settings shared by every service: the run, the NATS connection and the embedded broker.

Each service adds its own `ServiceSettings` subclass (env prefix `ALA_<SERVICE>_`) in its folder. Shared settings
read unprefixed names (`ALA_RUN`, `ALA_NATS_URL`, ...) so that one environment configures a whole deployment.
Settings are built in `main` (or a test), never at import.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, ClassVar

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from protos.subjects import check_token


class NatsSettings(BaseSettings):
    """How a service reaches the broker."""

    model_config = SettingsConfigDict(env_prefix="ALA_NATS_", extra="ignore")

    url: str = Field("nats://127.0.0.1:4222", description="Broker URL(s), comma-separated for a cluster.")
    user: str = Field("", description="User name, when the broker requires one.")
    password: SecretStr = Field(SecretStr(""), description="Password for `user`.")
    password_file: str = Field(
        "", description="A file holding the password for `user` (as `ala up`, compose and Helm hand them out)."
    )
    creds_file: str = Field("", description="NATS credentials file (JWT + nkey), instead of user/password.")
    tls_ca_file: str = Field(
        "", description="Connect with TLS, trusting this CA (`ala tls generate` writes one as ca.pem); empty: no TLS."
    )
    connect_timeout_s: float = Field(2.0, gt=0, description="Timeout of one connection attempt.")
    reconnect_time_wait_s: float = Field(0.25, gt=0, description="Pause between reconnect attempts (never gives up).")
    publish_timeout_s: float = Field(2.0, gt=0, description="Bound on every publish; JetStream waits this for its ack.")
    drain_timeout_s: float = Field(5.0, gt=0, description="Longest wait for in-flight messages when stopping.")
    replicas: int = Field(
        1,
        ge=1,
        le=5,
        description="JetStream replicas of ALA's streams and weights bucket (3 on a 3-node cluster: any one node may"
        " die without losing an acknowledged message). At most the cluster's size.",
    )
    pending_size_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="Client buffer for core publishes while disconnected."
    )

    def login_password(self) -> str:
        """`password`, or the contents of `password_file` when one is named (read at each connect: a tiny file)."""
        if self.password_file:
            return Path(self.password_file).read_text().strip()
        return self.password.get_secret_value()

    @property
    def servers(self) -> list[str]:
        return [u.strip() for u in self.url.split(",") if u.strip()]


class BrokerSettings(BaseSettings):
    """The embedded `nats-server` that `ala nats` and `ala up` run on a laptop."""

    model_config = SettingsConfigDict(env_prefix="ALA_BROKER_", extra="ignore")

    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(4222, ge=-1, le=65535, description="Client port; -1 picks a free one.")
    monitor_port: int = Field(8222, ge=-1, le=65535, description="HTTP monitoring port (/healthz, /varz); -1 = free.")
    store_dir: Path = Field(Path(".ala/nats"), description="JetStream file storage and the generated config.")
    max_payload_bytes: int = Field(
        8 * 1024 * 1024, gt=0, le=64 * 1024 * 1024, description="Largest message, sized for trajectory chunks."
    )
    max_file_store_bytes: int = Field(10 * 1024**3, gt=0, description="JetStream disk quota.")
    max_memory_store_bytes: int = Field(256 * 1024**2, gt=0, description="JetStream memory quota.")
    ready_timeout_s: float = Field(15.0, gt=0, description="How long to wait for the server to report healthy.")
    auth: bool = Field(
        True,
        description="One user per service with subject permissions (ala/security.py); false: anyone may connect and"
        " publish anything.",
    )
    tls_dir: Path | None = Field(
        None,
        description="Serve TLS with the certificate in this directory (`ala tls generate --dir ...`); none: plain.",
    )
    tls_hosts: list[str] = Field(
        [],
        description="Names and addresses the broker's certificate is for, besides localhost and nats: used when"
        " tls_dir holds no certificate yet, which the broker then generates once (as the passwords).",
    )
    secrets_dir: Path | None = Field(
        None, description="The services' password files (created once, mode 0600); default: <store_dir>/secrets."
    )
    cluster_size: int = Field(
        1,
        ge=1,
        le=7,
        description="Nodes of a NATS cluster with clustered JetStream (3 for replicated streams: ALA_NATS_REPLICAS=3);"
        " node i uses port+i, monitor_port+i, cluster_port+i and <store_dir>/node-i.",
    )
    cluster_port: int = Field(6222, ge=-1, le=65535, description="Route port of the first cluster node (-1: free).")
    cluster_name: str = Field("ala", description="The cluster's name (nats-server `cluster.name`).")
    cluster_routes: str = Field(
        "",
        description="One node of a cluster spread over hosts: every node's route URL, comma-separated (e.g."
        " nats-route://nats-0:6222,nats-route://nats-1:6222,...); this node listens on cluster_port. Empty: the"
        " `cluster_size` nodes on this host.",
    )
    server_name: str = Field("", description="This node's unique name in a cluster spread over hosts.")

    @property
    def replicas(self) -> int:
        """The JetStream replicas services should ask for on this cluster (ALA_NATS_REPLICAS): 3 where there are 3
        nodes or more, so any one node may die; fewer on a smaller one."""
        return min(3, self.cluster_size)

    @property
    def routes(self) -> tuple[str, ...]:
        return tuple(route.strip() for route in self.cluster_routes.split(",") if route.strip())

    @property
    def secrets_path(self) -> Path:
        return self.secrets_dir if self.secrets_dir is not None else self.store_dir / "secrets"


class ServiceSettings(BaseSettings):
    """What every service has. Subclasses set `service` and the env prefix `ALA_<SERVICE>_`."""

    service: ClassVar[str] = "service"
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    run: str = Field("dev", validation_alias="ALA_RUN", description="Run name: the second token of every subject.")
    instance: str = Field(
        default_factory=lambda: socket.gethostname().split(".")[0].replace("_", "-")[:40] or "local",
        description="This process's name within its service; defaults to the host name.",
    )
    metrics_host: str = Field("0.0.0.0", description="Interface of the Prometheus /metrics endpoint.")
    metrics_port: int = Field(0, ge=0, le=65535, description="Port of /metrics (0 = a free one, logged at start).")
    heartbeat_interval_s: float = Field(2.0, gt=0, description="Seconds between heartbeats.")
    liveness_timeout_s: float = Field(
        15.0, gt=0, description="/healthz fails once the service's event loop has not turned for this long."
    )
    log_level: str = Field("INFO", validation_alias="ALA_LOG_LEVEL", description="Logging level of ALA's own code.")
    third_party_log_level: str = Field(
        "WARNING",
        validation_alias="ALA_THIRD_PARTY_LOG_LEVEL",
        description="Logging level of libraries (nats-py, uvicorn, httpx; llama.cpp: WARNING and above show only its"
        " errors, INFO its per-request lines).",
    )
    third_party_log_file: str = Field(
        "",
        validation_alias="ALA_THIRD_PARTY_LOG_FILE",
        description="Send library logs (and native stderr such as llama.cpp's) to this file instead of the console.",
    )
    progress_interval_s: float = Field(
        10.0, ge=0, description="Seconds between this service's progress lines on the console (0: none)."
    )
    nats: NatsSettings = Field(default_factory=NatsSettings, description="Broker connection (ALA_NATS_*).")

    @field_validator("run", "instance")
    @classmethod
    def _one_subject_token(cls, value: str, info: ValidationInfo) -> str:
        return check_token(value, info.field_name or "name")


def tensorboard_dir_field(service: str) -> Any:  # a pydantic FieldInfo, typed Any as Field() is
    """The `tensorboard_dir` setting of a service that writes TensorBoard scalars (`ala.tensorboard`): its own
    variable, or ALA_TENSORBOARD_DIR for the learner and the evaluator at once."""
    return Field(
        None,
        validation_alias=AliasChoices(
            "tensorboard_dir", f"ALA_{service.upper()}_TENSORBOARD_DIR", "ALA_TENSORBOARD_DIR"
        ),
        description="Write TensorBoard scalars under <dir>/<run>/ (off when unset; ALA_TENSORBOARD_DIR works too).",
    )
