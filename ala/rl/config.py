"""The RL core's settings: what a rollout needs (`RolloutSettings`) and what a PPO update needs (`PPOSettings`).

Plain pydantic models: the actor and learner services inherit them into their environment-backed settings
(`ALA_ACTOR_*`, `ALA_LEARNER_*`), and `ala train --local` uses those same settings, so the baseline and the
distributed stack train with identical hyperparameters.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, Field

EXPERIMENTAL: dict[str, bool] = {"experimental": True}
"""Marks a setting that exists for experiments (benchmark arms, diagnostics), not for running a lab: a configuration
file sets it under `[<section>.experimental]` (ala/settings_file.py), and `ala config show` says so."""


class RolloutSettings(BaseModel):
    settings_group: ClassVar[str] = "rollout"
    env_id: str = Field("MiniGrid-DoorKey-8x8-v0", description="Gymnasium environment id every bot runs.")
    num_bots: int = Field(16, ge=1, le=4096, description="Bots (vectorised environments) in this actor.")
    num_steps: int = Field(32, ge=1, description="Steps per bot in one trajectory chunk (T).")
    hidden: int = Field(64, ge=1, description="Hidden units per layer of the policy (announced to the learner).")
    seed: int = Field(1, description="Seed of environments and action sampling.")
    device: str = Field("auto", description="torch device for the policy forward: auto (CUDA when present), cpu, cuda.")
    torch_threads: int = Field(1, ge=1, description="CPU threads for torch.")


class PPOSettings(BaseModel):
    settings_group: ClassVar[str] = "ppo"
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
    target_kl: float = Field(
        0.02,
        ge=0,
        description="Early stopping (SB3's rule): an update stops taking minibatch steps once a minibatch's approximate"
        " KL to the policy before the update exceeds 1.5x this. 0: never (SB3's and CleanRL's default). On by"
        " default here: once a task is learned, per-minibatch normalisation scales advantages of std ~0.005 to unit"
        " size, and on a near-deterministic policy some updates jumped to a KL of 0.1-0.27 and broke it"
        " (evaluation 0.96 to 0.00 on DoorKey-5x5; benchmarks/results/stability-5x5.md).",
    )
    anneal_lr_samples: int = Field(
        0,
        ge=0,
        description="Anneal the learning rate linearly to 0 over this many samples trained (CleanRL anneals over its"
        " run's total steps); 0: constant (SB3's default). A stack has no fixed end: set it to your budget.",
    )
    normalize_obs: bool = Field(
        False,
        description="Normalise observations by running mean and variance (SB3's VecNormalize), kept in the policy's"
        " weights so actors apply what the learner trained on; clipped to +-10. Ignored for one-hot (MiniGrid) codes.",
    )
    normalize_reward: bool = Field(
        False,
        description="Scale rewards by the running standard deviation of the discounted return (VecNormalize's"
        " norm_reward), clipped to +-10, in the learner only: actors and the evaluator report raw returns.",
    )
    adv_norm_floor: float = Field(
        0.0,
        ge=0,
        description="Advantages are normalised per minibatch by max(std, this) on every batch: a floor keeps pure"
        " critic noise (all returns equal, e.g. before any success) from being scaled up to unit size. 0: plain"
        " normalisation. 0.1 on every batch slowed plain PPO on DoorKey-8x8 (0 of 5 seeds to 0.8 within 400k env"
        " steps, final return 0.00, against 1 of 5 and 0.33; floor-8x8.md): see adv_norm_floor_advised.",
    )
    adv_norm_floor_advised: float = Field(
        0.1,
        ge=0,
        description="The floor on batches that advice touched (a step with advice in force, whatever its value: the"
        " actor's `advised` mask; from older actors, a bias on a taken action or advice to distil): there"
        " the scaled-up noise walked policies misled by early bad advice to a no-op they never left (DoorKey-5x5 with"
        " 0.1 on every batch: bad advice reached 0.8 in 15 of 15 runs, against 11 of 15 without; floor2-5x5.md)."
        " Batches without advice, all of them without an advisor, are normalised as plain PPO's.",
    )
    correction: Literal["exact", "shortcut", "none"] = Field(
        "exact",
        json_schema_extra=EXPERIMENTAL,
        description="exact: decoupled PPO with the recorded mu; shortcut: ALA's exp(logp - logp_old - beta*bias[a]);"
        " none: ignore the bias (for comparison only).",
    )
    advantage: Literal["gae", "vtrace"] = Field(
        "gae", json_schema_extra=EXPERIMENTAL, description="Advantage estimator."
    )
    max_weight: float = Field(2.0, gt=0, description="Truncation of the importance weight pi_prox / mu.")
    kl_coef: float = Field(
        0.0,
        ge=0,
        json_schema_extra=EXPERIMENTAL,
        description="Weight of a KL penalty to the policy at the start of the update, KL(pi_prox || pi) estimated per"
        " sample as (r - 1) - log r, added to PPO's loss (the seed's KL to the base beside a learned reward; 0: off).",
    )
    shortcut_beta: float = Field(
        1.0, json_schema_extra=EXPERIMENTAL, description="beta of the shortcut ratio (the bias is already scaled: 1)."
    )
    value_replay: int = Field(
        0,
        ge=0,
        le=1_000_000,
        json_schema_extra=EXPERIMENTAL,
        description="Prioritised replay for the critic only (ala/rl/replay.py): keep this many recent samples with"
        " their value targets; after each update the critic takes value_replay_steps extra steps on samples drawn by"
        " |target - V| (0: off).",
    )
    value_replay_steps: int = Field(
        4, ge=1, json_schema_extra=EXPERIMENTAL, description="With value_replay: critic steps on replay per update."
    )
    value_replay_batch: int = Field(
        256, ge=1, json_schema_extra=EXPERIMENTAL, description="With value_replay: samples per replayed step."
    )
    replay_alpha: float = Field(
        0.6, ge=0, le=1, json_schema_extra=EXPERIMENTAL, description="Priority exponent alpha (Schaul et al.: 0.6)."
    )
    replay_beta: float = Field(
        0.4,
        ge=0,
        le=1,
        json_schema_extra=EXPERIMENTAL,
        description="First importance-sampling exponent beta, annealed to 1 over 1,000 updates (Schaul et al.: 0.4).",
    )
    distill_coef: float = Field(
        1.0,
        ge=0,
        description="Weight of the distillation term (chunks from actors in the distill or both advice modes):"
        " cross-entropy from softmax(advice) to the policy on advised steps, LLM4Teach-style.",
    )
    distill_temperature: float = Field(
        0.25,
        gt=0,
        description="The teacher is softmax(advice / this). The recorded advice is the bias the actor sampled with,"
        " bounded by the router's b_max (2) for safety; as a teacher at temperature 1 it put 0.55 on one advised action"
        " of 7 and 0.075 on each other (entropy ~1.5 nats), and distilling it held the policy that soft. 0.25 puts"
        " 0.99 on the advised action and keeps ties between actions advised alike.",
    )
    distill_horizon: int = Field(
        500, ge=1, description="The distillation weight falls linearly to 0 over this many learner versions."
    )
    max_policy_lag: int = Field(8, ge=0, description="Chunks more than this many versions old are dropped.")
    device: str = Field("auto", description="torch device: auto (CUDA when present), cpu, cuda, cuda:1, ...")
    torch_threads: int = Field(1, ge=1, description="CPU threads for torch.")
