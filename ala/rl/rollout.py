"""The rollout: N bots, one batched policy forward per step, `logits += bias`, exact log-probabilities.

CleanRL's rollout with ALA's additions; no NATS here. The caller supplies the bias in force before each step
(the actor service reads its bias table; `ala train --local` passes none). The forward is the torch `Agent`'s, or
an ONNX Runtime session's when one is installed with the policy (`set_policy(agent, version, onnx)`): sampling,
log-probabilities and values then all come from the session's output.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np
import torch

from ala.rl.policy import Agent, resolve_device, sample_action
from ala.rl.trajectory import Trajectory

if TYPE_CHECKING:  # the learner and the evaluator roll out with torch alone: no onnxruntime to import for them
    from ala.rl.onnx_policy import OnnxPolicy


@dataclass(frozen=True)
class Episode:
    bot: int
    episode_return: float
    length: int


class Rollout:
    def __init__(
        self, envs: gym.vector.VectorEnv, agent: Agent, num_steps: int, seed: int, device: str = "cpu"
    ) -> None:
        self.envs = envs
        self.num_steps = num_steps
        self.num_bots = envs.num_envs
        self.device = resolve_device(device)
        self.forward_seconds = 0.0
        """The last step's policy forward (torch or ONNX Runtime), without sampling or the env step."""
        self.agent = agent.to(self.device)
        self.onnx: OnnxPolicy | None = None
        self.policy_version = 0
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        obs, _ = envs.reset(seed=seed)
        self.obs = np.asarray(obs, dtype=np.float32)
        self.env_steps = 0
        self.episodes_started = np.zeros(self.num_bots, dtype=np.int64)
        self._returns = np.zeros(self.num_bots)
        self._lengths = np.zeros(self.num_bots, dtype=np.int64)
        self.finished: list[Episode] = []
        """Episodes completed since the caller last cleared this list."""

    def env(self, bot: int) -> gym.Env:
        """Bot `bot`'s own env, for what reads a live env's state (its full state, text, a planner): the one place
        that knows the bots are a `SyncVectorEnv` in this process."""
        return self.envs.envs[bot]  # type: ignore[attr-defined,no-any-return]

    def set_policy(self, agent: Agent, version: int, onnx: OnnxPolicy | None = None) -> None:
        """Swap weights between steps; with `onnx` (the same version as a verified ONNX model), it runs the forward."""
        self.agent = agent
        self.onnx = onnx
        self.policy_version = version

    def collect(self, bias_now: Callable[[], np.ndarray | None] | None = None) -> Trajectory:
        """`num_steps` steps of every bot; `bias_now()` gives the [N, n_actions] bias in force (None: no bias)."""
        trajectory = self.new_trajectory()
        for t in range(self.num_steps):
            self.step(trajectory, t, bias_now() if bias_now else None)
        return self.finish(trajectory)

    def new_trajectory(self) -> Trajectory:
        """Storage for the next chunk; the whole chunk is sampled with the current policy version."""
        trajectory = Trajectory.empty(self.num_steps, self.num_bots, self.agent.spec)
        trajectory.policy_version = self.policy_version
        return trajectory

    def finish(self, trajectory: Trajectory) -> Trajectory:
        trajectory.bootstrap_value[:] = self.forward(self.obs)[1].cpu().numpy()
        return trajectory

    def forward(self, obs: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and values of the policy in use, on this rollout's device."""
        if self.onnx is not None:
            logits, values = self.onnx.run(obs)
            return self._tensor(logits), self._tensor(values)
        with torch.inference_mode():
            return self.agent.logits_and_value(self._tensor(obs))

    def step(
        self,
        trajectory: Trajectory,
        t: int,
        bias: np.ndarray | None,
        advice: np.ndarray | None = None,
        advised: np.ndarray | None = None,
        full_states: np.ndarray | None = None,
    ) -> None:
        """One step of all bots, recorded at row `t` of `trajectory`. `bias` is added to the logits; `advice` (the
        distillation mode) is only recorded, for the learner to distil; `advised` (bool [N]) records which bots had
        advice in force, whatever its value (a zero bias is advice too, and `bias` cannot show it); `full_states`
        (uint8 [N, ...]) records each bot's privileged state before the step, for a review that plans."""
        bias_tensor = self._tensor(bias) if bias is not None and bias.any() else None
        started = time.perf_counter()
        logits, values = self.forward(self.obs)
        self.forward_seconds = time.perf_counter() - started
        with torch.inference_mode():
            sample = sample_action(logits, values, bias_tensor, generator=self.generator)
        actions = sample.action.cpu().numpy()
        next_obs, rewards, terminated, truncated, info = self.envs.step(actions)

        trajectory.observations[t] = self.obs
        trajectory.actions[t] = actions
        trajectory.rewards[t] = rewards
        trajectory.terminated[t] = terminated
        trajectory.truncated[t] = truncated
        trajectory.behaviour_logprob[t] = sample.behaviour_logprob.cpu().numpy()
        trajectory.policy_logprob[t] = sample.policy_logprob.cpu().numpy()
        trajectory.values[t] = sample.value.cpu().numpy()
        if bias is not None:
            trajectory.bias[t] = bias
        if advice is not None:
            if trajectory.advice is None:
                trajectory.advice = np.zeros_like(trajectory.bias)
            trajectory.advice[t] = advice
        if advised is not None:
            if trajectory.advised is None:
                trajectory.advised = np.zeros(trajectory.actions.shape, dtype=np.bool_)
            trajectory.advised[t] = advised
        if full_states is not None:
            if trajectory.full_states is None:
                trajectory.full_states = np.zeros(trajectory.actions.shape + full_states.shape[1:], dtype=np.uint8)
            trajectory.full_states[t] = full_states
        cut = truncated & ~terminated
        if cut.any():  # a time limit is not a terminal state: bootstrap from the final observation
            final_obs = np.stack(info["final_obs"][cut]).astype(np.float32)
            trajectory.final_values[t, cut] = self.forward(final_obs)[1].cpu().numpy()

        self.obs = np.asarray(next_obs, dtype=np.float32)
        self.env_steps += self.num_bots
        self._returns += rewards
        self._lengths += 1
        for bot in np.flatnonzero(terminated | truncated):
            self.finished.append(Episode(int(bot), float(self._returns[bot]), int(self._lengths[bot])))
            self._returns[bot] = 0.0
            self._lengths[bot] = 0
            self.episodes_started[bot] += 1

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device)
