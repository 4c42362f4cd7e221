"""Settings of the learner; every field is also an environment variable `ALA_LEARNER_<FIELD>`."""

from pathlib import Path
from typing import ClassVar

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from ala.config import ServiceSettings
from ala.rl.config import PPOSettings


class LearnerSettings(ServiceSettings, PPOSettings):
    """The learner service's settings: PPO's (`ala.rl.config`, which `ala train --local` uses too) and its own.
    The network's shape comes from the actors (their heartbeats carry the `PolicySpec`), not from here."""

    service: ClassVar[str] = "learner"
    model_config = SettingsConfigDict(env_prefix="ALA_LEARNER_")

    metrics_port: int = Field(9104, ge=0, le=65535, description="Port of /metrics (0 = a free one).")
    chunks_per_batch: int = Field(1, ge=1, description="Trajectory chunks per PPO update.")
    fetch_timeout_s: float = Field(0.5, gt=0, description="Longest wait for chunks in one fetch.")
    ack_wait_s: float = Field(60.0, gt=0, description="Redelivery of a chunk not acknowledged within this time.")
    publish_every: int = Field(1, ge=1, description="Publish weights every this many updates.")
    checkpoint_dir: Path = Field(Path(".ala/checkpoints"), description="Where checkpoints are written.")
    checkpoint_every: int = Field(
        5,
        ge=1,
        description="Checkpoint every this many updates; trained chunks are acknowledged only after the checkpoint"
        " that covers them (exactly once across a crash). Keep it <= max_policy_lag: after a crash, actors' chunks"
        " from up to this many lost versions are still trained.",
    )
    implicit_rewards: bool = Field(False, description="Add the advisor's bounded implicit rewards (off by default).")
    max_implicit_reward: float = Field(0.05, ge=0, description="Bound on one implicit reward, enforced here too.")

    @model_validator(mode="after")
    def _checkpoint_within_policy_lag(self) -> "LearnerSettings":
        if self.checkpoint_every > max(1, self.max_policy_lag):
            raise ValueError(
                f"checkpoint_every ({self.checkpoint_every}) must be <= max_policy_lag ({self.max_policy_lag}): after"
                " a crash, actors' chunks from the versions lost since the checkpoint must still be trainable"
            )
        return self
