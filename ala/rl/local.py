"""`ala train --local`: the rollout and the learner's update in one process, no broker (CleanRL-style).

The baseline for speed and learning: the distributed stack runs exactly this code, split across processes.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ala.envs import adapter_for
from ala.rl.config import PPOSettings, RolloutSettings
from ala.rl.evaluate import EvaluationResult, evaluate
from ala.rl.learner import Learner
from ala.rl.policy import Agent
from ala.rl.rollout import Rollout


@dataclass
class Progress:
    env_steps: int
    updates: int
    steps_per_s: float
    mean_return: float
    """Mean return of the last 100 episodes (nan until 100 have ended, so a few lucky ones cannot count)."""
    stats: dict[str, float]
    evaluation: EvaluationResult | None = None
    """Set on updates that were evaluated (`evaluate_every`)."""
    train_seconds: float = 0.0
    """Seconds since the start, less the time spent evaluating."""


@dataclass
class LocalRun:
    curve: list[tuple[int, float]] = field(default_factory=list)
    """(env steps when the episode ended, its return) for every finished episode."""
    env_steps: int = 0
    seconds: float = 0.0
    agent: Agent | None = None
    """The trained policy (`ala.rl.saved.save_policy` keeps it)."""
    version: int = 0
    """Updates made."""


def train_local(
    actor: RolloutSettings,
    learner: PPOSettings,
    total_steps: int,
    on_update: Callable[[Progress], bool | None] | None = None,
    evaluate_every: int = 0,
    eval_episodes: int = 32,
) -> LocalRun:
    """Train until `total_steps` env steps, or until `on_update` returns True. With `evaluate_every`, the policy
    alone is scored on held-out seeds every that many updates (`ala.rl.evaluate`, as the evaluator service does),
    its time kept out of `train_seconds`."""
    torch.set_num_threads(actor.torch_threads)
    adapter = adapter_for(actor.env_id)
    envs = adapter.make_vector(actor.num_bots)
    trainer = Learner(adapter.policy_spec(envs.envs[0], actor.hidden), learner, device=learner.device)
    rollout = Rollout(envs, trainer.agent, actor.num_steps, actor.seed, device=str(trainer.device))
    run, recent = LocalRun(), deque[float](maxlen=100)
    start, eval_seconds = time.perf_counter(), 0.0
    while rollout.env_steps < total_steps:
        stats = trainer.train([rollout.collect()])
        rollout.set_policy(trainer.agent, trainer.version)
        for episode in rollout.finished:
            run.curve.append((rollout.env_steps, episode.episode_return))
            recent.append(episode.episode_return)
        rollout.finished.clear()
        evaluation = None
        if evaluate_every and trainer.version % evaluate_every == 0:
            evaluation = evaluate(trainer.agent, adapter, eval_episodes, seed=actor.seed, greedy=False)
            eval_seconds += evaluation.seconds
        elapsed = time.perf_counter() - start
        mean_return = float(np.mean(recent)) if len(recent) == recent.maxlen else float("nan")
        progress = Progress(
            rollout.env_steps,
            trainer.version,
            rollout.env_steps / (elapsed - eval_seconds),
            mean_return,
            stats,
            evaluation,
            elapsed - eval_seconds,
        )
        if on_update is not None and on_update(progress):
            break
    run.env_steps, run.seconds = rollout.env_steps, time.perf_counter() - start
    run.agent, run.version = trainer.agent, trainer.version
    rollout.envs.close()
    return run
