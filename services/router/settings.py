"""Settings of the router; every field is also an environment variable `ALA_ROUTER_<FIELD>`.

The fields of `LiveConfig` (strength, b_max, TTLs, quorum, advisor weights, schedule, enabled; declared once, in
`core.py`) are inherited: they set the initial live configuration, which `PUT /config` can then change; e.g.
`ALA_ROUTER_ADVISOR_WEIGHTS='{"llm-0": 0.5}'`.
"""

from typing import ClassVar

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from ala.config import ServiceSettings
from services.router.core import LiveConfig


class RouterApi(BaseModel):
    """The operator HTTP API."""

    settings_group: ClassVar[str] = "api"

    api_host: str = Field("127.0.0.1", description="Interface of the control API (FastAPI).")
    api_port: int = Field(8102, ge=0, le=65535, description="Port of the control API (0 = a free one).")
    api_max_body_bytes: int = Field(
        65_536, ge=1024, description="Control API: larger request bodies are refused with 413 before being read."
    )
    api_rate_per_s: float = Field(20.0, gt=0, description="Control API: requests per second per client (429 beyond).")
    api_burst: int = Field(40, ge=1, description="Control API: requests one client may send at once.")
    token: SecretStr = Field(
        SecretStr(""), description="Bearer token for PUT /config and POST /kill; empty: those endpoints refuse all."
    )
    kill_ttl_s: float = Field(60.0, gt=0, description="How long POST /kill's zero bias overrides actors' biases.")


class RouterSettings(ServiceSettings, LiveConfig, RouterApi):
    """The router's own settings, and the initial live configuration (`LiveConfig`'s fields, declared there only)."""

    service: ClassVar[str] = "router"
    model_config = SettingsConfigDict(env_prefix="ALA_ROUTER_")

    metrics_port: int = Field(9102, ge=0, le=65535, description="Port of /metrics (0 = a free one).")
    trust_interval_s: float = Field(1.0, gt=0, description="Trust moves with the evidence this often.")
    actor_timeout_s: float = Field(30.0, gt=0, description="An actor without a heartbeat for this long is forgotten.")

    def live_config(self) -> LiveConfig:
        return LiveConfig.model_validate(self.model_dump(include=set(LiveConfig.model_fields)))
