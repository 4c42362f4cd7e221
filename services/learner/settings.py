"""Settings of the learner; every field is also an environment variable `ALA_LEARNER_<FIELD>`."""

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from ala.config import ServiceSettings


class LearnerSettings(ServiceSettings):
    """The learner service's settings; `ala train --local` uses them too."""

    service: ClassVar[str] = "learner"
    model_config = SettingsConfigDict(env_prefix="ALA_LEARNER_")

    env_id: str = Field(
        "MiniGrid-DoorKey-8x8-v0",
        validation_alias=AliasChoices("env_id", "ALA_LEARNER_ENV_ID", "ALA_ENV_ID"),
        description="Environment the actors run, which fixes the network (ALA_ENV_ID sets both).",
    )
    hidden: int = Field(64, ge=1, description="Hidden units per layer of actor and critic.")
    seed: int = Field(1, description="Seed of initial weights and minibatch order.")
    learning_rate: float = Field(5e-4, gt=0, description="Adam learning rate.")
    num_epochs: int = Field(4, ge=1, description="Passes over each batch.")
    num_minibatches: int = Field(4, ge=1, description="Minibatches per pass.")
    gamma: float = Field(0.99, gt=0, le=1, description="Discount.")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    clip_coef: float = Field(0.2, gt=0, description="PPO clip on pi / pi_prox.")
    ent_coef: float = Field(0.01, ge=0, description="Entropy bonus.")
    vf_coef: float = Field(0.5, ge=0, description="Value loss weight.")
    max_grad_norm: float = Field(0.5, gt=0, description="Gradient clipping.")
    correction: Literal["exact", "shortcut", "none"] = Field(
        "exact",
        description="exact: decoupled PPO with the recorded mu; shortcut: ALA's exp(logp - logp_old - beta*bias[a]);"
        " none: ignore the bias (for comparison only).",
    )
    advantage: Literal["gae", "vtrace"] = Field("gae", description="Advantage estimator.")
    max_weight: float = Field(2.0, gt=0, description="Truncation of the importance weight pi_prox / mu.")
    shortcut_beta: float = Field(1.0, description="beta of the shortcut ratio (the bias is already scaled: 1).")
    max_policy_lag: int = Field(8, ge=0, description="Chunks more than this many versions old are dropped.")

    metrics_port: int = Field(9104, ge=0, le=65535, description="Port of /metrics (0 = a free one).")
    chunks_per_batch: int = Field(1, ge=1, description="Trajectory chunks per PPO update.")
    fetch_timeout_s: float = Field(0.5, gt=0, description="Longest wait for chunks in one fetch.")
    ack_wait_s: float = Field(60.0, gt=0, description="Redelivery of a chunk not acknowledged within this time.")
    publish_every: int = Field(1, ge=1, description="Publish weights every this many updates.")
    checkpoint_dir: Path = Field(Path(".ala/checkpoints"), description="Where checkpoints are written.")
    checkpoint_every: int = Field(20, ge=1, description="Checkpoint every this many updates.")
    implicit_rewards: bool = Field(False, description="Add the advisor's bounded implicit rewards (off by default).")
    max_implicit_reward: float = Field(0.05, ge=0, description="Bound on one implicit reward, enforced here too.")
    device: str = Field("auto", description="torch device: auto (CUDA when present), cpu, cuda, cuda:1, ...")
    torch_threads: int = Field(1, ge=1, description="CPU threads for torch.")
