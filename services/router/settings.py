"""Settings of the router; every field is also an environment variable `ALA_ROUTER_<FIELD>`."""

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ala.config import ServiceSettings


class RouterSettings(ServiceSettings):
    service: ClassVar[str] = "router"
    model_config = SettingsConfigDict(env_prefix="ALA_ROUTER_")

    metrics_port: int = Field(9102, ge=0, le=65535, description="Port of /metrics (0 = a free one).")
