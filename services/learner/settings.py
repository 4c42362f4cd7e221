"""Settings of the learner; every field is also an environment variable `ALA_LEARNER_<FIELD>`."""

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import AliasChoices, BaseModel, Field, FilePath, model_validator
from pydantic_settings import SettingsConfigDict

from ala.config import ServiceSettings, tensorboard_dir_field
from ala.rl.config import EXPERIMENTAL, PPOSettings


class LearnerStream(BaseModel):
    """How chunks are fetched and weights published."""

    settings_group: ClassVar[str] = "stream"

    chunks_per_batch: int = Field(1, ge=1, description="Trajectory chunks per PPO update.")
    fetch_timeout_s: float = Field(0.5, gt=0, description="Longest wait for chunks in one fetch.")
    ack_wait_s: float = Field(60.0, gt=0, description="Redelivery of a chunk not acknowledged within this time.")
    publish_every: int = Field(1, ge=1, description="Publish weights every this many updates.")
    onnx_export: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Export published versions to ONNX beside the torch weights, checked with ONNX Runtime, with its"
        " output on the probe batch (~20 ms per version on one core, serial with training): auto, while an actor with"
        " ALA_ACTOR_BACKEND=onnx is heard; always; or never (ONNX actors then export for themselves).",
    )


class LearnerCheckpoint(BaseModel):
    """Where and how often the learner checkpoints (the exactly-once protocol)."""

    settings_group: ClassVar[str] = "checkpoint"

    checkpoint_dir: Path = Field(Path(".ala/checkpoints"), description="Where checkpoints are written.")
    checkpoint_every: int = Field(
        5,
        ge=1,
        description="Checkpoint every this many updates; trained chunks are acknowledged only after the checkpoint"
        " that covers them (exactly once across a crash). Keep it <= max_policy_lag: after a crash, actors' chunks"
        " from up to this many lost versions are still trained.",
    )


class LearnerRanks(BaseModel):
    """Learner ranks on torch.distributed."""

    settings_group: ClassVar[str] = "ranks"

    world_size: int = Field(
        1,
        ge=1,
        le=64,
        validation_alias=AliasChoices("ALA_LEARNER_WORLD_SIZE", "WORLD_SIZE", "world_size"),
        description="Learner ranks training together on torch.distributed (torchrun's WORLD_SIZE works too).",
    )
    rank: int = Field(
        0,
        ge=0,
        validation_alias=AliasChoices("ALA_LEARNER_RANK", "RANK", "rank"),
        description="This learner's rank; rank 0 publishes the weights and is the group's rendezvous (or RANK).",
    )
    local_rank: int = Field(
        0,
        ge=0,
        validation_alias=AliasChoices("ALA_LEARNER_LOCAL_RANK", "LOCAL_RANK", "local_rank"),
        description="This rank's index on its host (or LOCAL_RANK, as torchrun and `ala up` set it): added to the"
        " metrics port, so ranks on one host each serve their own.",
    )
    master_addr: str = Field(
        "127.0.0.1",
        validation_alias=AliasChoices("ALA_LEARNER_MASTER_ADDR", "MASTER_ADDR", "master_addr"),
        description="Rank 0's address, where the ranks meet (or MASTER_ADDR).",
    )
    master_port: int = Field(
        29500,
        ge=1,
        le=65535,
        validation_alias=AliasChoices("ALA_LEARNER_MASTER_PORT", "MASTER_PORT", "master_port"),
        description="Rank 0's rendezvous port (or MASTER_PORT).",
    )
    distributed: Literal["sync", "merge"] = Field(
        "sync",
        description="With several ranks: `sync` averages gradients every minibatch (data parallel); `merge` averages"
        " parameters every `merge_every` updates (ala/rl/distributed.py).",
    )
    merge_every: int = Field(4, ge=1, description="With `distributed=merge`: updates between parameter merges.")
    distributed_timeout_s: float = Field(
        120.0, gt=0, description="A rank blocked this long in a collective (another rank died) fails, and restarts."
    )


class LearnerRewards(BaseModel):
    """Rewards added to the environment's: the advisor's implicit rewards, the exploration bonus, the shaping of the
    reward model learned from preferences."""

    settings_group: ClassVar[str] = "rewards"

    implicit_rewards: bool = Field(
        False,
        json_schema_extra=EXPERIMENTAL,
        description="Add the advisor's bounded implicit rewards (off by default).",
    )
    max_implicit_reward: float = Field(
        0.05, ge=0, json_schema_extra=EXPERIMENTAL, description="Bound on one implicit reward, enforced here too."
    )
    exploration_bonus: float = Field(
        0.0,
        ge=0,
        le=1,
        json_schema_extra=EXPERIMENTAL,
        description="beta of the count-based exploration bonus beta / sqrt(N(s,a,s') + alpha) added to every trained"
        " step's reward (ala/rl/exploration.py; 0: off).",
    )
    exploration_alpha: float = Field(
        1.0,
        gt=0,
        json_schema_extra=EXPERIMENTAL,
        description="The Laplace constant added to every transition count of the exploration bonus.",
    )
    preference_reward: float = Field(
        0.0,
        ge=0,
        le=1,
        json_schema_extra=EXPERIMENTAL,
        description="Scale of the potential of the reward model learned from an advisor's rankings of pairs of"
        " states (ala/rl/preference.py; Motif/ONI): gamma * Phi(s') - Phi(s) with |Phi| <= this is added to every"
        " trained step. 0: off, and rankings are not listened to.",
    )
    preference_capacity: int = Field(
        4096, ge=1, le=1_000_000, json_schema_extra=EXPERIMENTAL, description="Rankings the reward model keeps."
    )
    preference_steps: int = Field(
        8, ge=0, json_schema_extra=EXPERIMENTAL, description="Reward-model minibatch steps before every update."
    )
    preference_model: FilePath | None = Field(
        None,
        json_schema_extra=EXPERIMENTAL,
        description="Start from a reward model fit before the run on a stored dataset (`ala preference fit`, as"
        " Motif does): it shapes from the first chunk, and stays as fit unless rankings arrive. Needs"
        " preference_reward > 0 (unset: the model starts untrained and learns online).",
    )


class LearnerSettings(ServiceSettings, PPOSettings, LearnerStream, LearnerCheckpoint, LearnerRanks, LearnerRewards):
    """The learner service's settings: PPO's (`ala.rl.config`, which `ala train --local` uses too) and its own.
    The network's shape comes from the actors (their heartbeats carry the `PolicySpec`), not from here."""

    service: ClassVar[str] = "learner"
    model_config = SettingsConfigDict(env_prefix="ALA_LEARNER_")

    metrics_port: int = Field(9104, ge=0, le=65535, description="Port of /metrics (0 = a free one).")
    stats_path: Path | None = Field(
        None,
        json_schema_extra=EXPERIMENTAL,
        description="Append every update's statistics (losses, entropy, KL, advantage scale, IS weights) to this"
        " file as one JSON line, with the version and the samples trained: the per-update record Prometheus's"
        " sampled gauge cannot give (unset: none).",
    )
    tensorboard_dir: Path | None = tensorboard_dir_field("learner")

    @model_validator(mode="after")
    def _checkpoint_within_policy_lag(self) -> "LearnerSettings":
        if self.checkpoint_every > max(1, self.max_policy_lag):
            raise ValueError(
                f"checkpoint_every ({self.checkpoint_every}) must be <= max_policy_lag ({self.max_policy_lag}): after"
                " a crash, actors' chunks from the versions lost since the checkpoint must still be trainable"
            )
        return self

    @model_validator(mode="after")
    def _preference_model_has_a_scale(self) -> "LearnerSettings":
        if self.preference_model is not None and self.preference_reward <= 0:
            raise ValueError("preference_model needs preference_reward > 0 (the scale of its shaping)")
        return self

    @model_validator(mode="after")
    def _one_place_per_rank(self) -> "LearnerSettings":
        if self.rank >= self.world_size:
            raise ValueError(f"rank {self.rank} is outside a world of {self.world_size}")
        if self.world_size > 1:  # ranks on one host must not share a heartbeat subject or a metrics port
            self.instance = f"{self.instance}-r{self.rank}"
            if self.metrics_port:
                self.metrics_port += self.local_rank
        return self
