"""`Trajectory`: T steps x N bots as numpy arrays, the in-memory form of a `TrajectoryChunk`.

The actor fills one, `to_chunk` puts it on the wire, and the learner's `from_chunk` checks everything a chunk
claims (shapes, dtypes, finite numbers, action range, log-probabilities) before anything is trained on it.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, fields

import numpy as np

from ala.rejection import Rejected
from protos import Array, PolicySpec, TrajectoryChunk

_LOGPROB_TOLERANCE = 1e-4


class BadChunk(Rejected):
    """A decodable chunk whose content cannot be trained on."""


@dataclass
class Trajectory:
    observations: np.ndarray
    """float32 [T, N, obs_dim], as the policy saw them."""
    actions: np.ndarray
    """int64 [T, N]"""
    rewards: np.ndarray
    """float32 [T, N]"""
    terminated: np.ndarray
    """bool [T, N]"""
    truncated: np.ndarray
    """bool [T, N]"""
    behaviour_logprob: np.ndarray
    """float32 [T, N]: log mu(a|s), with the bias."""
    policy_logprob: np.ndarray
    """float32 [T, N]: log pi_old(a|s), without the bias."""
    bias: np.ndarray
    """float32 [T, N, n_actions]"""
    values: np.ndarray
    """float32 [T, N]"""
    final_values: np.ndarray
    """float32 [T, N]: V(final obs) where truncated, else 0."""
    bootstrap_value: np.ndarray
    """float32 [N]"""
    bot_ids: np.ndarray
    """int32 [N]"""
    policy_version: int
    advice: np.ndarray | None = None
    """float32 [T, N, n_actions], distillation mode: advice in force, not applied (the learner distils it)."""
    advised: np.ndarray | None = None
    """bool [T, N]: advice from some advisor was in force, whatever its value (a zero bias counts: `bias` cannot
    show it). None: not recorded (`ala train --local`, older actors)."""
    full_states: np.ndarray | None = None
    """uint8 [T, N, *state_shape]: each bot's privileged full state when it acted, for a review that plans. None:
    not shared (the default)."""

    @property
    def num_steps(self) -> int:
        return int(self.actions.shape[0] * self.actions.shape[1])

    def next_state_known(self) -> np.ndarray:
        """bool [T, N]: what follows the step is known from the chunk alone. A terminated step's successor is the
        episode's end (terminated wins over truncated, as in `ppo.next_values`); any other step's is the next row's
        observation, which a truncated step (its final observation stays at the actor) and the chunk's last step (its
        next observation opens the next chunk) do not have."""
        steps = self.actions.shape[0]
        not_last = np.arange(steps)[:, None] < steps - 1
        return self.terminated | (not_last & ~self.truncated)

    @classmethod
    def empty(cls, steps: int, bots: int, spec: PolicySpec) -> Trajectory:
        def zeros(*shape: int, dtype: type = np.float32) -> np.ndarray:
            return np.zeros(shape, dtype=dtype)

        return cls(
            observations=zeros(steps, bots, spec.obs_dim),
            actions=zeros(steps, bots, dtype=np.int64),
            rewards=zeros(steps, bots),
            terminated=zeros(steps, bots, dtype=np.bool_),
            truncated=zeros(steps, bots, dtype=np.bool_),
            behaviour_logprob=zeros(steps, bots),
            policy_logprob=zeros(steps, bots),
            bias=zeros(steps, bots, spec.n_actions),
            values=zeros(steps, bots),
            final_values=zeros(steps, bots),
            bootstrap_value=zeros(bots),
            bot_ids=np.arange(bots, dtype=np.int32),
            policy_version=0,
        )


def observation_key(observation: np.ndarray) -> str:
    """A short stable key of one observation (sha1 of its float32 bytes), naming a state across services."""
    return hashlib.sha1(np.ascontiguousarray(observation, dtype=np.float32).tobytes()).hexdigest()[:16]


FULL_STATE_KEY_PREFIX = "full:"


def full_state_key(full_state: np.ndarray) -> str:
    """The key of an exact (privileged) state: never equal to an observation's key, whatever the arrays."""
    return FULL_STATE_KEY_PREFIX + observation_key(full_state)


_OPTIONAL_FIELDS = ("advice", "advised", "full_states")
_ARRAY_FIELDS = [f.name for f in fields(Trajectory) if f.name != "policy_version" and f.name not in _OPTIONAL_FIELDS]


def wire_observations(observations: np.ndarray) -> np.ndarray:
    """The narrowest lossless form for the wire: uint8 when every value is an integer in [0, 255] (MiniGrid's
    object, colour and state codes: a quarter of the bytes), else the float32 the policy saw. The learner decodes to
    float32, so it trains on exactly what the policy read."""
    if observations.size and observations.min() >= 0 and observations.max() <= 255:
        narrow = observations.astype(np.uint8)
        if np.array_equal(narrow, observations):
            return narrow
    return observations


def to_chunk(trajectory: Trajectory, run: str, actor: str, chunk_seq: int) -> TrajectoryChunk:
    arrays = {name: Array.from_numpy(getattr(trajectory, name)) for name in _ARRAY_FIELDS}
    arrays["observations"] = Array.from_numpy(wire_observations(trajectory.observations))
    return TrajectoryChunk(
        run=run,
        actor=actor,
        chunk_seq=chunk_seq,
        policy_version=trajectory.policy_version,
        created_at=time.time(),
        advice=None if trajectory.advice is None else Array.from_numpy(trajectory.advice),
        advised=None if trajectory.advised is None else Array.from_numpy(trajectory.advised),  # |b1: 1 byte a step
        full_states=None if trajectory.full_states is None else Array.from_numpy(trajectory.full_states),
        **arrays,
    )


def from_chunk(chunk: TrajectoryChunk, spec: PolicySpec) -> Trajectory:
    """The chunk's arrays, checked against the policy; raises `BadChunk` with a metric-ready reason."""
    arrays = {name: getattr(chunk, name).to_numpy() for name in _ARRAY_FIELDS}
    if arrays["observations"].dtype == np.uint8:  # the lossless wire form of small integer codes
        arrays["observations"] = arrays["observations"].astype(np.float32)
    steps, bots = arrays["actions"].shape if arrays["actions"].ndim == 2 else (0, 0)
    if steps == 0 or bots == 0:
        raise BadChunk("shape", f"actions must be [T>0, N>0], got {arrays['actions'].shape}")
    expected = {
        "observations": ((steps, bots, spec.obs_dim), np.float32),
        "actions": ((steps, bots), np.int64),
        "rewards": ((steps, bots), np.float32),
        "terminated": ((steps, bots), np.bool_),
        "truncated": ((steps, bots), np.bool_),
        "behaviour_logprob": ((steps, bots), np.float32),
        "policy_logprob": ((steps, bots), np.float32),
        "bias": ((steps, bots, spec.n_actions), np.float32),
        "values": ((steps, bots), np.float32),
        "final_values": ((steps, bots), np.float32),
        "bootstrap_value": ((bots,), np.float32),
        "bot_ids": ((bots,), np.int32),
    }
    if chunk.advice is not None:
        arrays["advice"] = chunk.advice.to_numpy()
        expected["advice"] = ((steps, bots, spec.n_actions), np.float32)
    if chunk.advised is not None:
        arrays["advised"] = chunk.advised.to_numpy()
        expected["advised"] = ((steps, bots), np.bool_)
    if chunk.full_states is not None:
        arrays["full_states"] = chunk.full_states.to_numpy()
        full = arrays["full_states"]
        if full.ndim < 3 or full.shape[:2] != (steps, bots) or full.dtype != np.uint8:
            raise BadChunk("shape", f"full_states is {full.dtype}{list(full.shape)}, expected uint8[T, N, ...]")
    for name, (shape, dtype) in expected.items():
        array = arrays[name]
        if array.shape != shape or array.dtype != dtype:
            raise BadChunk(
                "shape", f"{name} is {array.dtype}{list(array.shape)}, expected {np.dtype(dtype)}{list(shape)}"
            )
        if array.dtype == np.float32 and not np.isfinite(array).all():
            raise BadChunk("non_finite", f"{name} has NaN or infinite values")
    if arrays["actions"].min() < 0 or arrays["actions"].max() >= spec.n_actions:
        raise BadChunk("action_range", f"actions outside [0, {spec.n_actions})")
    for name in ("behaviour_logprob", "policy_logprob"):
        if arrays[name].max() > _LOGPROB_TOLERANCE:
            raise BadChunk("logprob", f"{name} has positive log-probabilities")
    return Trajectory(policy_version=chunk.policy_version, **arrays)
