"""`Learner.train(trajectories) -> stats`: one PPO update on data from biased, possibly stale actors. No NATS.
One idea over 300 lines: the update and the corrections it applies are read together, as CleanRL keeps PPO in one file.

Corrections (`settings.correction`):
- `exact` (default): decoupled PPO. `pi_prox` is this learner's policy before the update; each sample is weighted
  by `pi_prox / mu` (truncated at `max_weight`) with `mu` the recorded behaviour probability, and the PPO ratio
  `pi / pi_prox` is clipped. Bias and policy lag are both inside `mu`.
- `shortcut`: ALA's published ratio `exp(logp_new - logp_old - beta * bias[a])`, clipped, unweighted.
- `none`: PPO ratio against the actor's unbiased `pi_old`, ignoring the bias (a baseline that is wrong by design).

Distillation (chunks from actors in `advice_mode=distill`, which record advice without applying it): the loss also
pulls the policy towards `softmax(advice / distill_temperature)` on advised steps, by cross-entropy weighted
`distill_coef`, annealed to 0 over `distill_horizon` versions (LLM4Teach, arXiv 2311.13373). The data is then
on-policy: no bias, `mu = pi_old`.
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
from ala.rl.replay import ValueReplay
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
        agree_mean: Callable[[float], float] | None = None,
    ) -> None:
        """`sync_gradients(agent)` runs between each backward pass and its optimizer step: learner ranks average
        their gradients there (`ala.rl.distributed`); `agree_mean(x)` is the mean of x over those ranks, so that
        they stop an update early (`target_kl`) together."""
        self.settings = settings
        self.sync_gradients = sync_gradients
        self.agree_mean = agree_mean
        self.device = resolve_device(device)
        torch.manual_seed(settings.seed)
        self.agent = Agent(spec).to(self.device)
        self.optimizer = torch.optim.Adam(self.agent.parameters(), lr=settings.learning_rate, eps=1e-5)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.version = 0
        self.samples_trained = 0
        self.return_scale = RunningMoments()
        """Variance of the discounted return (`normalize_reward`)."""
        self._discounted: dict[int, float] = {}
        """The running discounted return of each bot id (`normalize_reward`)."""
        self.replay = (
            ValueReplay(
                settings.value_replay,
                spec.obs_dim,
                settings.replay_alpha,
                settings.replay_beta,
                seed=settings.seed,
                device=self.device,
            )
            if settings.value_replay
            else None
        )
        """Recent samples for the critic's prioritised replay (`value_replay`; None: off)."""

    def is_stale(self, trajectory: Trajectory) -> bool:
        return self.version - trajectory.policy_version > self.settings.max_policy_lag

    def train(self, trajectories: list[Trajectory]) -> dict[str, float]:
        """One update over `trajectories` (callers drop stale ones first); increments `version`."""
        assert trajectories, "nothing to train on"
        s = self.settings
        if s.normalize_obs:
            self.agent.observe(
                np.concatenate([t.observations.reshape(-1, t.observations.shape[-1]) for t in trajectories])
            )
        batch = self._prepare(trajectories)
        learning_rate = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        floor = self.advantage_floor(batch)
        stats: dict[str, list[float]] = {}
        steps, stopped = 0, False
        for _ in range(s.num_epochs):
            order = torch.randperm(len(batch), generator=self.generator).to(self.device)
            # Exactly num_minibatches steps, whatever the batch size: learner ranks averaging gradients must step
            # together (and stop together: `agree_mean`).
            for idx in torch.tensor_split(order, min(s.num_minibatches, len(batch))):
                step_stats = self._minibatch_step(batch, idx, floor)
                for key, value in step_stats.items():
                    stats.setdefault(key, []).append(value)
                stopped = bool(step_stats["losses/stopped"])
                if stopped:
                    break
                steps += 1
            if stopped:
                break
        if self.replay is not None:
            stats["losses/replay_value_loss"] = self._replay_value(batch)
        self.version += 1
        self.samples_trained += len(batch)
        summary = {key: float(np.mean(values)) for key, values in stats.items()}
        weights, truncated = ppo.importance_weights(batch.prox_logprob, batch.behaviour_logprob, s.max_weight)
        variance = torch.var(batch.returns)
        summary |= {
            # The collapse diagnostic (issue 27): how much signal the advantages carry before normalisation, and the
            # largest step any minibatch took.
            "adv/raw_std": float(batch.advantages.std()),
            "adv/raw_abs_mean": float(batch.advantages.abs().mean()),
            "losses/approx_kl_max": float(np.max(stats["losses/approx_kl"])),
            "returns/mean": float(batch.returns.mean()),
            "policy/learning_rate": learning_rate,
            "losses/minibatch_steps": float(steps),
            "losses/stopped": float(stopped),
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

    def _replay_value(self, batch: Batch) -> list[float]:
        """The critic's extra steps on prioritised replay (`ala.rl.replay`); the policy's parameters get no gradient,
        so Adam leaves them as they are. Returns each step's weighted value loss."""
        assert self.replay is not None
        s = self.settings
        with torch.no_grad():
            errors = batch.returns - self.agent.get_value(batch.obs)
        self.replay.add(batch.obs, batch.returns, errors)
        losses = []
        for _ in range(s.value_replay_steps):
            slots, weights = self.replay.sample(min(s.value_replay_batch, self.replay.size))
            index = torch.as_tensor(slots, device=self.device)
            error = self.replay.targets[index] - self.agent.get_value(self.replay.obs[index])
            loss = s.vf_coef * 0.5 * (weights * error**2).mean()
            self._step(loss)
            self.replay.update_priorities(slots, error)
            losses.append(loss.item())
        self.replay.end_update()
        return losses

    def learning_rate(self) -> float:
        """`learning_rate`, annealed linearly to 0 over `anneal_lr_samples` samples trained when that is set."""
        s = self.settings
        if not s.anneal_lr_samples:
            return s.learning_rate
        return s.learning_rate * max(0.0, 1.0 - self.samples_trained / s.anneal_lr_samples)

    def scaled_rewards(self, rewards: np.ndarray, episode_ends: np.ndarray, bot_ids: np.ndarray) -> np.ndarray:
        """`normalize_reward`: rewards [T, N] over the running std of each bot's discounted return (VecNormalize)."""
        gamma = self.settings.gamma
        discounted = np.array([self._discounted.get(int(bot), 0.0) for bot in bot_ids])
        seen = np.empty_like(rewards, dtype=np.float64)
        for t in range(rewards.shape[0]):
            discounted = discounted * gamma + rewards[t]
            seen[t] = discounted
            discounted = np.where(episode_ends[t], 0.0, discounted)
        self._discounted.update(zip(map(int, bot_ids), discounted.tolist(), strict=True))
        self.return_scale.update(seen.reshape(-1))
        return np.clip(rewards / np.sqrt(self.return_scale.var + 1e-8), -10, 10).astype(np.float32)

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
            if s.normalize_reward:
                ends = np.asarray(trajectory.terminated) | np.asarray(trajectory.truncated)
                scaled = self.scaled_rewards(np.asarray(trajectory.rewards), ends, np.asarray(trajectory.bot_ids))
                tensors["rewards"] = torch.as_tensor(scaled, device=self.device)
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
        """One gradient step on rows `idx`; advantages normalised by max(std, `floor`). With `target_kl`, no step
        once this minibatch's KL to the policy before the update exceeds 1.5x it (`losses/stopped` 1)."""
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
        if s.kl_coef:
            to_prox = sample.policy_logprob - batch.prox_logprob[idx]
            loss = loss + s.kl_coef * ((to_prox.exp() - 1) - to_prox).mean()
        distill = self._distillation(batch.advice[idx], sample.logprobs)
        if distill is not None:
            loss = loss + self.distill_weight() * distill
        with torch.no_grad():
            approx_kl = float(((ratio - 1) - log_ratio).mean())
            kl_to_behaviour = (batch.behaviour_logprob[idx] - sample.policy_logprob).mean()
        stats = {
            "losses/policy_loss": policy.loss.item(),
            "losses/value_loss": value_loss.item(),
            "losses/entropy": entropy.item(),
            "losses/approx_kl": approx_kl,
            "losses/clipfrac": float(policy.clipped.float().mean()),
            "losses/kl_to_behaviour": float(kl_to_behaviour),
            "policy/max_prob": float(sample.logprobs.detach().exp().max(-1).values.mean()),
            "adv/minibatch_std": float(batch.advantages[idx].std(unbiased=False)),
        } | ({} if distill is None else {"losses/distill": distill.item()})
        if s.target_kl:
            agreed = approx_kl if self.agree_mean is None else self.agree_mean(approx_kl)
            if agreed > 1.5 * s.target_kl:
                return stats | {"losses/stopped": 1.0}

        grad_norm = self._step(loss)
        return stats | {"losses/grad_norm": grad_norm, "losses/stopped": 0.0}

    def _step(self, loss: torch.Tensor) -> float:
        """One optimizer step on `loss`: gradients averaged over learner ranks, clipped; returns their norm."""
        self.optimizer.zero_grad()
        loss.backward()
        if self.sync_gradients is not None:
            self.sync_gradients(self.agent)
        grad_norm = nn.utils.clip_grad_norm_(self.agent.parameters(), self.settings.max_grad_norm)
        self.optimizer.step()
        return float(grad_norm)

    def distill_weight(self) -> float:
        s = self.settings
        return s.distill_coef * max(0.0, 1.0 - self.version / s.distill_horizon)

    def _distillation(self, advice: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor | None:
        """Cross-entropy from the teacher `softmax(advice / distill_temperature)` to the policy, over advised samples;
        None if none."""
        advised = advice.any(-1)
        if self.distill_weight() == 0 or not advised.any():
            return None
        teacher = torch.softmax(advice[advised] / self.settings.distill_temperature, -1)
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
                "return_scale": self.return_scale.state(),
                "obs_moments": [float(self.agent.obs_moments[0]), *map(torch.as_tensor, self.agent.obs_moments[1:])],
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
        self.return_scale.load(state.get("return_scale", ()))
        if "obs_moments" in state:
            count, mean, var = state["obs_moments"]
            self.agent.obs_moments = (float(count), mean.cpu().numpy(), var.cpu().numpy())


class RunningMoments:
    """Running mean and variance over batches (Chan et al.'s parallel update, as SB3's RunningMeanStd)."""

    def __init__(self) -> None:
        self.count, self.mean, self.var = 0.0, 0.0, 1.0

    def update(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        batch_mean, batch_var, batch_count = float(values.mean()), float(values.var()), float(values.size)
        total = self.count + batch_count
        delta = batch_mean - self.mean
        self.mean += delta * batch_count / total
        self.var = (
            self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        ) / total
        self.count = total

    def state(self) -> list[float]:
        return [self.count, self.mean, self.var]

    def load(self, state: list[float] | tuple[float, ...]) -> None:
        if state:
            self.count, self.mean, self.var = (float(x) for x in state)
