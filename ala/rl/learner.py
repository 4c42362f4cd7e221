"""`Learner.train(trajectories) -> stats`: one PPO update on data from biased, possibly stale actors. No NATS.

Corrections (`settings.correction`):
- `exact` (default): decoupled PPO. `pi_prox` is this learner's policy before the update; each sample is weighted
  by `pi_prox / mu` (truncated at `max_weight`) with `mu` the recorded behaviour probability, and the PPO ratio
  `pi / pi_prox` is clipped. Bias and policy lag are both inside `mu`.
- `shortcut`: ALA's published ratio `exp(logp_new - logp_old - beta * bias[a])`, clipped, unweighted.
- `none`: PPO ratio against the actor's unbiased `pi_old`, ignoring the bias (a baseline that is wrong by design).

Distillation (chunks from actors in `advice_mode=distill`, which record advice without applying it): the loss also
pulls the policy towards `softmax(advice)` on advised steps, by cross-entropy weighted `distill_coef`, annealed to 0
over `distill_horizon` versions (LLM4Teach, arXiv 2311.13373). The data is then on-policy: no bias, `mu = pi_old`.
Actors in `advice_mode=both` apply the bias and record it as advice: the correction above handles the bias, and the
same term distils the advice that trust let reach each episode.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ala.rl import ppo
from ala.rl.config import PPOSettings
from ala.rl.policy import Agent, resolve_device
from ala.rl.trajectory import Trajectory
from protos import PolicySpec


@dataclass
class Batch:
    """Flattened tensors of several trajectories, advantages computed per trajectory."""

    obs: torch.Tensor
    actions: torch.Tensor
    behaviour_logprob: torch.Tensor
    policy_logprob: torch.Tensor
    prox_logprob: torch.Tensor
    bias_taken: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    values: torch.Tensor
    version_lag: torch.Tensor
    advice: torch.Tensor
    """[B, n_actions]: advice to distil (zeros where none)."""
    advised: torch.Tensor
    """bool [B]: advice was in force at the step (`advised_steps`)."""

    def __len__(self) -> int:
        return int(self.actions.shape[0])


def advised_steps(trajectory: Trajectory, bias_taken: torch.Tensor, advice: torch.Tensor) -> torch.Tensor:
    """bool [T, N]: steps with advice in force. The actor's `advised` mask says so whatever the advice's value (the
    null advisor's zero bias is invisible in `bias`, yet must get the advised floor, so that advice can be compared
    with it rather than with the floor); chunks without the mask fall back to what shows: a non-zero bias on the
    taken action or advice to distil. Either evidence counts, so the mask can only add advised steps."""
    shown = (bias_taken != 0) | advice.any(dim=-1)
    if trajectory.advised is None:
        return shown
    return shown | torch.as_tensor(np.array(trajectory.advised, dtype=np.bool_), device=shown.device)


class Learner:
    def __init__(
        self,
        spec: PolicySpec,
        settings: PPOSettings,
        device: str = "cpu",
        sync_gradients: Callable[[nn.Module], None] | None = None,
    ) -> None:
        """`sync_gradients(agent)` runs between each backward pass and its optimizer step: learner ranks average
        their gradients there (`ala.rl.distributed`)."""
        self.settings = settings
        self.sync_gradients = sync_gradients
        self.device = resolve_device(device)
        torch.manual_seed(settings.seed)
        self.agent = Agent(spec).to(self.device)
        self.optimizer = torch.optim.Adam(self.agent.parameters(), lr=settings.learning_rate, eps=1e-5)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.version = 0
        self.samples_trained = 0

    def is_stale(self, trajectory: Trajectory) -> bool:
        return self.version - trajectory.policy_version > self.settings.max_policy_lag

    def train(self, trajectories: list[Trajectory]) -> dict[str, float]:
        """One update over `trajectories` (callers drop stale ones first); increments `version`."""
        assert trajectories, "nothing to train on"
        batch = self._prepare(trajectories)
        s = self.settings
        floor = self.advantage_floor(batch)
        stats: dict[str, list[float]] = {}
        for _ in range(s.num_epochs):
            order = torch.randperm(len(batch), generator=self.generator).to(self.device)
            # Exactly num_minibatches steps, whatever the batch size: learner ranks averaging gradients must step
            # together.
            for idx in torch.tensor_split(order, min(s.num_minibatches, len(batch))):
                step_stats = self._minibatch_step(batch, idx, floor)
                for key, value in step_stats.items():
                    stats.setdefault(key, []).append(value)
        self.version += 1
        self.samples_trained += len(batch)
        summary = {key: float(np.mean(values)) for key, values in stats.items()}
        weights, truncated = ppo.importance_weights(batch.prox_logprob, batch.behaviour_logprob, s.max_weight)
        variance = torch.var(batch.returns)
        summary |= {
            "is/weight_mean": float(weights.mean()),
            "is/weight_max": float(torch.exp(batch.prox_logprob - batch.behaviour_logprob).max()),
            "is/fraction_truncated": float(truncated.float().mean()),
            "lag/version_diff_avg": float(batch.version_lag.float().mean()),
            "lag/version_diff_max": float(batch.version_lag.max()),
            "losses/explained_variance": float(1 - torch.var(batch.returns - batch.values) / variance)
            if variance > 0
            else float("nan"),
            "samples": float(len(batch)),
        }
        return summary

    def advantage_floor(self, batch: Batch) -> float:
        """The advised floor applies to batches that advice touched (any step with advice in force): there early bad
        advice walked policies to a no-op; data without advice is normalised as plain PPO's."""
        s = self.settings
        return max(s.adv_norm_floor, s.adv_norm_floor_advised if bool(batch.advised.any()) else 0.0)

    def _prepare(self, trajectories: list[Trajectory]) -> Batch:
        s = self.settings
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in Batch.__dataclass_fields__}
        for trajectory in trajectories:
            tensors = {
                name: torch.as_tensor(np.array(getattr(trajectory, name)), device=self.device)
                for name in (
                    "observations",
                    "actions",
                    "rewards",
                    "terminated",
                    "truncated",
                    "behaviour_logprob",
                    "policy_logprob",
                    "bias",
                    "values",
                    "final_values",
                    "bootstrap_value",
                )
            }
            steps, bots = tensors["actions"].shape
            obs = tensors["observations"].reshape(steps * bots, -1)
            actions = tensors["actions"].reshape(-1)
            with torch.no_grad():
                prox = self.agent.get_action_and_value(obs, action=actions).policy_logprob.reshape(steps, bots)
            next_value = ppo.next_values(
                tensors["values"],
                tensors["bootstrap_value"],
                tensors["terminated"],
                tensors["truncated"],
                tensors["final_values"],
            )
            episode_ends = tensors["terminated"] | tensors["truncated"]
            if s.advantage == "vtrace":
                log_rhos = prox - tensors["behaviour_logprob"]
                returns, advantages = ppo.vtrace(
                    tensors["rewards"],
                    tensors["values"],
                    next_value,
                    episode_ends,
                    log_rhos,
                    s.gamma,
                    # exact: the loss weighs each sample by pi_prox/mu already; weighting here too would square it
                    weight_advantages=s.correction != "exact",
                )
            else:
                advantages = ppo.gae(
                    tensors["rewards"], tensors["values"], next_value, episode_ends, s.gamma, s.gae_lambda
                )
                returns = advantages + tensors["values"]
            bias_taken = tensors["bias"].gather(-1, tensors["actions"].unsqueeze(-1)).squeeze(-1)
            advice = (
                torch.zeros_like(tensors["bias"])
                if trajectory.advice is None
                else torch.as_tensor(np.array(trajectory.advice), device=self.device)
            )
            flat = {
                "obs": obs,
                "actions": actions,
                "behaviour_logprob": tensors["behaviour_logprob"].reshape(-1),
                "policy_logprob": tensors["policy_logprob"].reshape(-1),
                "prox_logprob": prox.reshape(-1),
                "bias_taken": bias_taken.reshape(-1),
                "advantages": advantages.reshape(-1),
                "returns": returns.reshape(-1),
                "values": tensors["values"].reshape(-1),
                "version_lag": torch.full(
                    (steps * bots,), self.version - trajectory.policy_version, device=self.device
                ),
                "advice": advice.reshape(steps * bots, -1),
                "advised": advised_steps(trajectory, bias_taken, advice).reshape(-1),
            }
            for name, tensor in flat.items():
                parts[name].append(tensor)
        return Batch(**{name: torch.cat(tensors) for name, tensors in parts.items()})

    def _minibatch_step(self, batch: Batch, idx: torch.Tensor, floor: float) -> dict[str, float]:
        """One gradient step on rows `idx`; advantages normalised by max(std, `floor`)."""
        s = self.settings
        sample = self.agent.get_action_and_value(batch.obs[idx], action=batch.actions[idx])
        advantages = batch.advantages[idx]
        advantages = (advantages - advantages.mean()) / (advantages.std(unbiased=False).clamp(min=floor) + 1e-8)

        if s.correction == "exact":
            log_ratio = sample.policy_logprob - batch.prox_logprob[idx]
            weights, _ = ppo.importance_weights(batch.prox_logprob[idx], batch.behaviour_logprob[idx], s.max_weight)
        elif s.correction == "shortcut":
            shortcut = ppo.shortcut_ratio(
                sample.policy_logprob, batch.policy_logprob[idx], batch.bias_taken[idx], s.shortcut_beta
            )
            log_ratio = torch.log(shortcut)
            weights = torch.ones_like(log_ratio)
        else:
            log_ratio = sample.policy_logprob - batch.policy_logprob[idx]
            weights = torch.ones_like(log_ratio)
        ratio = log_ratio.exp()
        policy = ppo.clipped_policy_loss(ratio, advantages, weights, s.clip_coef)
        value_loss = 0.5 * ((sample.value - batch.returns[idx]) ** 2).mean()
        entropy = sample.entropy.mean()
        loss = policy.loss - s.ent_coef * entropy + s.vf_coef * value_loss
        distill = self._distillation(batch.advice[idx], sample.logprobs)
        if distill is not None:
            loss = loss + self.distill_weight() * distill

        self.optimizer.zero_grad()
        loss.backward()
        if self.sync_gradients is not None:
            self.sync_gradients(self.agent)
        nn.utils.clip_grad_norm_(self.agent.parameters(), s.max_grad_norm)
        self.optimizer.step()
        with torch.no_grad():
            approx_kl = ((ratio - 1) - log_ratio).mean()
            kl_to_behaviour = (batch.behaviour_logprob[idx] - sample.policy_logprob).mean()
        return {
            "losses/policy_loss": policy.loss.item(),
            "losses/value_loss": value_loss.item(),
            "losses/entropy": entropy.item(),
            "losses/approx_kl": float(approx_kl),
            "losses/clipfrac": float(policy.clipped.float().mean()),
            "losses/kl_to_behaviour": float(kl_to_behaviour),
        } | ({} if distill is None else {"losses/distill": distill.item()})

    def distill_weight(self) -> float:
        s = self.settings
        return s.distill_coef * max(0.0, 1.0 - self.version / s.distill_horizon)

    def _distillation(self, advice: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor | None:
        """Cross-entropy from the teacher `softmax(advice)` to the policy, over advised samples; None if none."""
        advised = advice.any(-1)
        if self.distill_weight() == 0 or not advised.any():
            return None
        teacher = torch.softmax(advice[advised], -1)
        return -(teacher * logprobs[advised]).sum(-1).mean()

    def checkpoint(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(
            {
                "agent": self.agent.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "version": self.version,
                "samples_trained": self.samples_trained,
                "generator": self.generator.get_state(),
            },
            buffer,
        )
        return buffer.getvalue()

    def restore(self, data: bytes) -> None:
        state = torch.load(io.BytesIO(data), map_location=self.device, weights_only=True)
        self.agent.load_state_dict(state["agent"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.version = int(state["version"])
        self.samples_trained = int(state["samples_trained"])
        self.generator.set_state(state["generator"].cpu())  # map_location moved it; generators live on the CPU
