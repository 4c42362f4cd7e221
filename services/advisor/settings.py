"""Settings of the advisor; every field is also an environment variable `ALA_ADVISOR_<FIELD>`."""

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ala.config import ServiceSettings


class AdvisorSettings(ServiceSettings):
    service: ClassVar[str] = "advisor"
    model_config = SettingsConfigDict(env_prefix="ALA_ADVISOR_")

    metrics_port: int = Field(9101, ge=0, le=65535, description="Port of /metrics (0 = a free one).")
