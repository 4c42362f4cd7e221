"""Settings of the learner; every field is also an environment variable `ALA_LEARNER_<FIELD>`."""

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ala.config import ServiceSettings


class LearnerSettings(ServiceSettings):
    service: ClassVar[str] = "learner"
    model_config = SettingsConfigDict(env_prefix="ALA_LEARNER_")

    metrics_port: int = Field(9104, ge=0, le=65535, description="Port of /metrics (0 = a free one).")
