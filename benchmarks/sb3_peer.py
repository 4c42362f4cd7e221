"""The peer: Stable-Baselines3 PPO on a MiniGrid task, run as a whole process (imports included) until the mean
return of its last 100 training episodes reaches a threshold; prints one JSON line with its env steps.

Settings as measured in the brief: batch 256, 4 epochs, learning rate 7e-4, entropy 0.01; 8 envs of 128 steps per
rollout, MlpPolicy on the flattened 7x7x3 view as float32 codes (what the policy sees, not normalised uint8).

    python -m benchmarks.sb3_peer --seed 1 [--env-id MiniGrid-DoorKey-5x5-v0] [--threshold 0.8]
"""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

STARTED = time.perf_counter()


def main(
    seed: Annotated[int, typer.Option()] = 1,
    env_id: Annotated[str, typer.Option()] = "MiniGrid-DoorKey-5x5-v0",
    threshold: Annotated[float, typer.Option()] = 0.8,
    max_steps: Annotated[int, typer.Option()] = 300_000,
) -> None:
    import gymnasium as gym
    import minigrid  # noqa: F401  (registers the MiniGrid envs)
    import numpy as np
    from gymnasium.wrappers import FlattenObservation, TransformObservation
    from minigrid.wrappers import ImgObsWrapper
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    def make() -> gym.Env:
        env = FlattenObservation(ImgObsWrapper(gym.make(env_id)))
        space = gym.spaces.Box(0.0, 255.0, env.observation_space.shape, np.float32)
        return TransformObservation(env, lambda obs: obs.astype(np.float32), space)

    class StopAtThreshold(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.reached_at: int | None = None

        def _on_step(self) -> bool:  # False stops training: at the first step after the threshold was reached
            return self.reached_at is None

        def _on_rollout_end(self) -> None:
            returns = [info["r"] for info in self.model.ep_info_buffer]
            if len(returns) == self.model.ep_info_buffer.maxlen and np.mean(returns) >= threshold:
                self.reached_at = self.num_timesteps

    envs = make_vec_env(make, n_envs=8, seed=seed)
    model = PPO(
        "MlpPolicy",
        envs,
        n_steps=128,
        batch_size=256,
        n_epochs=4,
        learning_rate=7e-4,
        ent_coef=0.01,
        seed=seed,
        verbose=0,
    )
    callback = StopAtThreshold()
    model.learn(max_steps, callback=callback)
    print(
        json.dumps(
            {"seed": seed, "env_steps": callback.reached_at, "seconds_in_process": time.perf_counter() - STARTED}
        )
    )


if __name__ == "__main__":
    typer.run(main)
