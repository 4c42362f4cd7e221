"""Score a policy alone (no bias) on a fixed set of held-out env seeds: one episode per seed, all seeds stepped
together as one vector env, with sampled and with greedy actions; and, on request, one episode as a video. No NATS
here; the evaluator service wires it."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from ala.envs import EnvAdapter
from ala.rl.policy import Agent

HELD_OUT_SEED = 1_000_000
"""Evaluation seeds start here, far from the actors' training seeds."""


@dataclass(frozen=True)
class Score:
    mean_return: float
    success_rate: float
    """Share of episodes with a positive return (MiniGrid: reached the goal)."""


@dataclass(frozen=True)
class EvaluationResult:
    sampled: Score
    greedy: Score | None
    """None when greedy play was not asked for."""
    episodes: int
    seconds: float


def evaluate(agent: Agent, adapter: EnvAdapter, episodes: int, seed: int = 0, greedy: bool = True) -> EvaluationResult:
    start = time.perf_counter()
    envs = adapter.make_vector(episodes)
    try:
        sampled = _play(agent, envs, greedy=False, seed=seed)
        greedy_score = _play(agent, envs, greedy=True, seed=seed) if greedy else None
    finally:
        envs.close()
    return EvaluationResult(sampled, greedy_score, episodes, time.perf_counter() - start)


def _play(agent: Agent, envs: gym.vector.VectorEnv, greedy: bool, seed: int) -> Score:
    """The first episode of every env, seeded `HELD_OUT_SEED + i`."""
    count = envs.num_envs
    obs, _ = envs.reset(seed=[HELD_OUT_SEED + i for i in range(count)])
    returns, done = np.zeros(count), np.zeros(count, dtype=bool)
    generator = torch.Generator().manual_seed(seed)
    while not done.all():
        with torch.inference_mode():
            actions = agent.act(obs, greedy, generator)
        obs, rewards, terminated, truncated, _ = envs.step(actions)
        returns += np.where(done, 0.0, rewards)
        done |= terminated | truncated
    return Score(float(returns.mean()), float((returns > 0).mean()))


@dataclass(frozen=True)
class RecordedEpisode:
    path: Path
    steps: int
    episode_return: float


def record_episode(agent: Agent, adapter: EnvAdapter, path: Path, seed: int = 0) -> RecordedEpisode:
    """The first held-out episode, played with sampled actions, rendered to the MP4 file `path` by Gymnasium's
    `RecordVideo` (which needs moviepy: `pip install 'ala[video]'`)."""
    from gymnasium.wrappers import RecordVideo  # imports moviepy lazily, on the first frame written

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as folder:
        env = RecordVideo(
            adapter.make(render_mode="rgb_array"),
            str(Path(folder) / "video"),  # a folder of its own: RecordVideo warns when it exists
            episode_trigger=lambda _: True,
            name_prefix="episode",
        )
        try:
            obs, _ = env.reset(seed=HELD_OUT_SEED)
            generator = torch.Generator().manual_seed(seed)
            done, steps, episode_return = False, 0, 0.0
            while not done:
                with torch.inference_mode():
                    action = int(agent.act(np.asarray(obs)[None], greedy=False, generator=generator)[0])
                obs, reward, terminated, truncated, _ = env.step(action)
                done, steps, episode_return = terminated or truncated, steps + 1, episode_return + float(reward)
        finally:
            env.close()  # writes the file
        videos = list((Path(folder) / "video").glob("*.mp4"))
        if len(videos) != 1:
            raise RuntimeError(f"RecordVideo wrote {len(videos)} videos for one episode")
        videos[0].replace(path)
    return RecordedEpisode(path, steps, episode_return)
