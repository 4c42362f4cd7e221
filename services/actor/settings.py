"""Settings of the actor; every field is also an environment variable `ALA_ACTOR_<FIELD>`."""

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ala.config import ServiceSettings


class ActorSettings(ServiceSettings):
    service: ClassVar[str] = "actor"
    model_config = SettingsConfigDict(env_prefix="ALA_ACTOR_")

    metrics_port: int = Field(9103, ge=0, le=65535, description="Port of /metrics (0 = a free one).")
    env_id: str = Field("MiniGrid-DoorKey-8x8-v0", description="Gymnasium environment id every bot runs.")
    num_bots: int = Field(8, ge=1, le=4096, description="Bots (vectorised environments) in this actor.")
