"""Learner ranks on torch.distributed (gloo, real processes): the collectives, then two learner services sharing
one JetStream consumer through a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry
from torch import nn

from ala.broker import EmbeddedBroker
from ala.bus import Bus
from ala.config import NatsSettings
from ala.metrics import bus_metrics
from ala.rl.distributed import join, leave
from ala.rl.learner import Learner
from ala.rl.trajectory import to_chunk
from protos import WeightsAnnouncement, decode, encode, subjects
from protos.messages import TrajectoryChunk
from services.learner.checkpoint import checkpoint_path, read_checkpoint
from services.learner.settings import LearnerSettings
from tests.support import actor_heartbeat, free_port, rollout, scrape, spec, wait_until

CHUNKS = 8


def _collectives(rank: int, port: int, results: dict[int, list[float]]) -> None:
    """One rank of `test_ranks_average_gradients_merge_parameters_and_agree` (a spawned process)."""
    ranks = join(rank, 2, "127.0.0.1", port, "sync", 1, 30.0, torch.device("cpu"))
    module = nn.Linear(2, 1)
    nn.init.constant_(module.weight, float(rank))  # rank 0: zeros, rank 1: ones
    for p in module.parameters():
        p.grad = torch.full_like(p, 2.0 * rank)
    ranks.average_gradients(module)
    gradient = float(module.weight.grad[0, 0])  # type: ignore[index]
    merging = type(ranks)(ranks.rank, ranks.world_size, "merge", 2, ranks.device)
    skipped = merging.merge_parameters(module, version=1)
    merged = merging.merge_parameters(module, version=2)
    weight = float(module.weight[0, 0])
    stopping, settled = ranks.agree(stopping=rank == 1, settled_seq=10 + rank)
    ids = ranks.gather_ids([f"chunk-{rank}"])
    results[rank] = [gradient, float(skipped), float(merged), weight, float(stopping), float(settled), len(ids)]
    leave()


def test_ranks_average_gradients_merge_parameters_and_agree() -> None:
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_collectives, args=(free_port(), results), nprocs=2, join=True)
        # gradient mean of 0 and 2; merge only on its period; weights mean of 0 and 1; one stopping rank stops all
        for rank in (0, 1):
            assert results[rank] == [1.0, 0.0, 1.0, 0.5, 1.0, 11.0, 2]


def _env(nats_server: EmbeddedBroker, tmp_path: Path, scheme: str, master_port: int) -> dict[str, str]:
    return dict(
        os.environ,
        ALA_RUN="test",
        ALA_NATS_URL=nats_server.url,
        ALA_LEARNER_CHECKPOINT_DIR=str(tmp_path / "checkpoints"),
        ALA_LEARNER_CHECKPOINT_EVERY="2",
        ALA_LEARNER_SEED="3",
        ALA_LEARNER_FETCH_TIMEOUT_S="0.1",
        ALA_LEARNER_DISTRIBUTED=scheme,
        ALA_LEARNER_MERGE_EVERY="2",
        WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(master_port),
    )


def _parameters(state: dict[str, object]) -> torch.Tensor:
    learner = Learner(spec(), LearnerSettings())
    learner.restore(state["learner"])  # type: ignore[arg-type]
    return nn.utils.parameters_to_vector(learner.agent.parameters()).detach()


@pytest.mark.parametrize("scheme", ["sync", "merge"])
def test_two_ranks_share_the_chunks_train_each_once_and_end_equal(
    nats_server: EmbeddedBroker, tmp_path: Path, scheme: str
) -> None:
    """Two learner ranks, one consumer: each chunk is trained by one rank, once; only rank 0 publishes; every
    checkpoint lists every rank's chunks; the ranks' parameters are equal after each update (sync) or after each
    merge (merge: 8 chunks = 4 updates per rank = 2 merges, the last at the end); a SIGTERM stops both cleanly."""
    env = _env(nats_server, tmp_path, scheme, free_port())
    ports = [free_port(), free_port()]
    trajectory = rollout(Learner(spec(), LearnerSettings(seed=3)).agent, seed=0).collect()

    async def scenario() -> None:
        bus = await Bus.connect(NatsSettings(url=nats_server.url), "test", bus_metrics("t", CollectorRegistry()))
        await bus.provision()
        versions: list[int] = []
        announced = asyncio.Event()

        async def on_weights(msg: Msg) -> None:
            versions.append(decode(msg.data, WeightsAnnouncement).version)
            announced.set()

        await bus.subscribe(subjects.weights_subject("test"), on_weights)
        ranks = []
        for rank in (0, 1):
            log = (tmp_path / f"rank{rank}.log").open("w")
            rank_env = env | {"RANK": str(rank), "ALA_LEARNER_METRICS_PORT": str(ports[rank])}
            ranks.append(
                await asyncio.create_subprocess_exec(sys.executable, "-m", "ala", "learner", env=rank_env, stderr=log)
            )
        try:
            async with asyncio.timeout(60):
                while not announced.is_set():  # play the actor: a heartbeat with the spec until version 0 is out
                    heartbeat = actor_heartbeat(policy=spec())
                    await bus.publish(subjects.heartbeat_subject("test", "actor", "a1"), heartbeat, kind="heartbeat")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(announced.wait(), 0.2)
            for seq in range(CHUNKS):
                chunk: TrajectoryChunk = to_chunk(trajectory, "test", "a1", seq)
                subject = subjects.trajectory_subject("test", "a1")
                await bus.publish_durable(subject, encode(chunk), f"test.a1.{seq}", kind="trajectory")

            def trained(port: int) -> float:
                return scrape(port).get("ala_learner_chunks_trained_total[]", 0.0)

            await wait_until(lambda: trained(ports[0]) + trained(ports[1]) == CHUNKS, 60)
            assert trained(ports[0]) == trained(ports[1]) == CHUNKS / 2  # lockstep: one chunk per rank per update
            await wait_until(lambda: CHUNKS // 2 in versions, 60)  # rank 0 announces every version
            assert scrape(ports[1])["ala_learner_weights_published_total[]"] == 0  # rank 1 never does
        finally:
            for process in ranks:
                process.send_signal(signal.SIGTERM)
            codes = [await asyncio.wait_for(process.wait(), 60) for process in ranks]
            await bus.drain()
        assert codes == [0, 0]

    asyncio.run(scenario())
    checkpoints = []
    for rank in (0, 1):
        settings = LearnerSettings(checkpoint_dir=tmp_path / "checkpoints", run="test", rank=rank, world_size=2)
        saved = read_checkpoint(checkpoint_path(settings))
        assert saved is not None
        checkpoints.append(saved[0])
    expected_ids = {f"test.a1.{seq}" for seq in range(CHUNKS)}
    for state in checkpoints:
        assert sorted(state["trained_ids"]) == sorted(expected_ids)  # every chunk, once, in both checkpoints
    assert torch.equal(_parameters(checkpoints[0]), _parameters(checkpoints[1]))
