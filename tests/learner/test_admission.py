"""The learner's admission, without NATS: each chunk's verdict (train, drop, refuse for good) and what it counts."""

from __future__ import annotations

import msgspec

from ala.rl.learner import Learner
from ala.rl.trajectory import to_chunk
from protos import encode
from services.learner.admission import Admission, Admitted, Refused
from services.learner.checkpoint import TrainedChunks
from services.learner.implicit import ImplicitRewards
from services.learner.steps import EnvStepLedger
from tests.support import ppo_settings, rollout, spec


def test_each_chunk_is_trained_once_and_bad_or_foreign_ones_are_refused_for_good() -> None:
    learner = Learner(spec(), ppo_settings())
    trained, steps = TrainedChunks(), EnvStepLedger()
    admission = Admission("test", 2, learner, trained, steps, ImplicitRewards(0.05))
    trajectory = rollout(learner.agent, seed=0).collect()
    chunk = to_chunk(trajectory, "test", "a1", 7)

    first = admission.check(encode(chunk))
    assert isinstance(first, Admitted) and first.chunk_id in admission.pending
    assert admission.check(encode(chunk)) == Refused(terminate=False)  # waiting in the batch already
    trained.add(first.chunk_id)
    admission.pending.clear()
    assert admission.check(encode(chunk)) == Refused(terminate=False)  # trained already (a redelivery)

    foreign = msgspec.structs.replace(chunk, run="other", chunk_seq=8)
    ahead = msgspec.structs.replace(chunk, chunk_seq=9, policy_version=learner.version + 3)
    assert admission.check(b"\x00garbage") == Refused(terminate=True)
    assert admission.check(encode(foreign)) == Refused(terminate=True)
    assert admission.check(encode(ahead)) == Refused(terminate=True)  # a version this learner cannot know
    # Steps count once per chunk that reached the version check: the admitted one, its duplicates not, `ahead` yes.
    assert steps.total == 2 * trajectory.num_steps
