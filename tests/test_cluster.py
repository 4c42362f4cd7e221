"""A real 3-node NATS cluster on loopback with replicated (R3) JetStream: kill -9 a node under load."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from ala.broker import BrokerCluster, ClusterNode, EmbeddedBroker, render_config
from ala.bus import MSG_ID_HEADER, Bus
from ala.config import BrokerSettings, NatsSettings
from ala.metrics import bus_metrics
from protos import subjects
from services.actor import metrics as actor_metrics
from services.actor.service import serve as serve_actor
from services.actor.settings import ActorSettings
from services.learner import metrics as learner_metrics
from services.learner.checkpoint import read_checkpoint
from services.learner.service import serve as serve_learner
from services.learner.settings import LearnerSettings
from tests.support import ENV_ID, free_port, running, wait_until

RUN = "test"


def _cluster_settings(store_dir: Path) -> BrokerSettings:
    return BrokerSettings(
        port=-1, monitor_port=-1, cluster_port=-1, cluster_size=3, store_dir=store_dir, auth=False, ready_timeout_s=30
    )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[BrokerCluster]:
    with BrokerCluster(_cluster_settings(tmp_path / "nats")) as started:
        yield started


async def _connect(url: str) -> Bus:
    settings = NatsSettings(url=url, replicas=3, reconnect_time_wait_s=0.05, publish_timeout_s=1.0)
    return await Bus.connect(settings, "test", bus_metrics("test", CollectorRegistry()))


def _stream_last_seq(node: EmbeddedBroker, stream: str) -> int:
    """The last sequence of `stream` in this node's own replica (its monitoring endpoint, not the leader's)."""
    with urllib.request.urlopen(f"{node.monitor_url}/jsz?streams=true", timeout=2) as response:
        jsz = json.loads(response.read())
    for account in jsz.get("account_details", []):
        for detail in account.get("stream_detail", []):
            if detail["name"] == stream:
                return int(detail["state"]["last_seq"])
    return -1


async def _stored_chunk_ids(bus: Bus) -> list[str]:
    """The `Nats-Msg-Id` of every chunk the trajectory stream holds for this run, in stream order."""
    consumer = await bus.js.pull_subscribe(subjects.trajectory_wildcard(RUN), stream=subjects.TRAJECTORIES.name)
    ids: list[str] = []
    try:
        stored = (await bus.js.stream_info(subjects.TRAJECTORIES.name)).state.messages
        while len(ids) < stored:
            for msg in await consumer.fetch(min(256, stored - len(ids)), timeout=5):
                ids.append((msg.headers or {})[MSG_ID_HEADER])
                await msg.ack()
    finally:
        await consumer.unsubscribe()
    return ids


def test_every_node_gets_its_name_and_a_route_to_every_node(tmp_path: Path) -> None:
    node = ClusterNode("ala-1", "ala", 6223, ("nats-route://127.0.0.1:6222", "nats-route://127.0.0.1:6223"))
    config = render_config(BrokerSettings(), tmp_path, 4223, 8223, node=node)
    assert 'server_name: "ala-1"' in config
    assert 'listen: "127.0.0.1:6223"' in config
    assert 'routes: ["nats-route://127.0.0.1:6222", "nats-route://127.0.0.1:6223"]' in config


async def test_nodes_started_one_by_one_from_a_route_list_form_one_cluster(tmp_path: Path) -> None:
    """How compose and a lab's three machines run it: each host's `ala nats` is one node given every route."""
    route_ports = [free_port() for _ in range(3)]
    routes = ",".join(f"nats-route://127.0.0.1:{port}" for port in route_ports)
    nodes = [
        BrokerCluster(
            BrokerSettings(
                port=-1,
                monitor_port=-1,
                cluster_port=route_port,
                cluster_routes=routes,
                server_name=f"host-{i}",
                store_dir=tmp_path / f"host-{i}",
                auth=False,
                ready_timeout_s=30,
            )
        )
        for i, route_port in enumerate(route_ports)
    ]
    try:
        for node in nodes:
            node.start()  # each alone: it does not wait for peers that start after it
        members = [broker for node in nodes for broker in node.nodes]
        nodes[0].wait_current(members)
        bus = await _connect(members[2].url)
        try:
            await bus.provision()
            info = await bus.js.stream_info(subjects.TRAJECTORIES.name)
            peers = {info.cluster.leader, *(replica.name for replica in info.cluster.replicas or [])}  # type: ignore[union-attr]
            assert peers == {"host-0", "host-1", "host-2"}
        finally:
            await bus.drain()
    finally:
        for node in nodes:
            node.stop()


async def test_streams_and_the_weights_bucket_are_replicated_on_three_nodes(cluster: BrokerCluster) -> None:
    bus = await _connect(cluster.url)
    try:
        await bus.provision()
        for stream in (
            subjects.TRAJECTORIES.name,
            subjects.WEIGHTS_ANNOUNCEMENTS.name,
            f"OBJ_{subjects.WEIGHTS_BUCKET}",
        ):
            info = await bus.js.stream_info(stream)
            assert info.config.num_replicas == 3
            assert info.cluster is not None and info.cluster.leader
            assert len(info.cluster.replicas or []) == 2  # the leader's two followers
    finally:
        await bus.drain()


async def test_a_node_killed_under_load_loses_no_acknowledged_chunk_trains_none_twice_and_catches_up(
    cluster: BrokerCluster, tmp_path: Path
) -> None:
    """The actor publishes and the learner trains through the cluster, both given only the address of the node that
    leads the trajectory stream; that node is killed; both fail over to the survivors (learned from the cluster, not
    configured) and carry on; the node restarts and catches up with what it missed."""
    bus = await _connect(cluster.url)
    await bus.provision()
    stream = subjects.TRAJECTORIES.name
    leader = (await bus.js.stream_info(stream)).cluster
    assert leader is not None
    victim = next(node for node in cluster.nodes if node.node is not None and node.node.server_name == leader.leader)
    nats = NatsSettings(url=victim.url, replicas=3, reconnect_time_wait_s=0.05, publish_timeout_s=1.0)
    common: dict[str, object] = {"run": RUN, "nats": nats, "metrics_host": "127.0.0.1", "metrics_port": 0}
    actor = ActorSettings(env_id=ENV_ID, num_bots=4, num_steps=32, instance="a1", seed=1, **common)
    learner = LearnerSettings(
        checkpoint_dir=tmp_path / "checkpoints", fetch_timeout_s=0.1, seed=1, instance="l1", **common
    )
    trained_before = learner_metrics.CHUNKS_TRAINED._value.get()  # counters are per process, shared by tests
    shipped_before, stale_before = actor_metrics.CHUNKS_SHIPPED._value.get(), learner_metrics.CHUNKS_STALE._value.get()
    reconnects = (actor_metrics.SERVICE.bus.reconnects, learner_metrics.SERVICE.bus.reconnects)
    reconnects_before = [counter._value.get() for counter in reconnects]

    def trained() -> float:
        return learner_metrics.CHUNKS_TRAINED._value.get() - trained_before

    async with running(serve_learner, learner), running(serve_actor, actor):
        await wait_until(lambda: trained() >= 3, 60)
        victim.kill()
        at_kill = trained()
        await wait_until(lambda: trained() >= at_kill + 5, 60)  # the survivors elected a leader; training goes on
        # Both services were connected to the victim alone: they found the survivors by themselves.
        assert all(counter._value.get() > before for counter, before in zip(reconnects, reconnects_before, strict=True))
        victim.start()
        deadline = time.monotonic() + 30
        while not await asyncio.to_thread(victim.is_current):  # JetStream caught up with the meta leader
            assert time.monotonic() < deadline, "the restarted node did not catch up"
        after_rejoin = trained()
        await wait_until(lambda: trained() >= after_rejoin + 2, 60)

    # Everything the actor had acknowledged is stored once, with no gap; the rejoined node holds all of it.
    ids = await _stored_chunk_ids(bus)
    shipped = actor_metrics.CHUNKS_SHIPPED._value.get() - shipped_before
    seqs = [int(chunk_id.rsplit(".", 1)[1]) for chunk_id in ids]
    assert len(ids) == len(set(ids)) == shipped
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    leader_last = (await bus.js.stream_info(stream)).state.last_seq
    await wait_until(lambda: _stream_last_seq(victim, stream) == leader_last, 20)
    # Every stored chunk was trained once, dropped as stale, or is still waiting: none trained twice, none lost.
    saved = read_checkpoint(tmp_path / "checkpoints" / RUN / "latest.pt")
    assert saved is not None
    trained_ids = saved[0]["trained_ids"]
    assert len(trained_ids) == len(set(trained_ids)) and set(trained_ids) <= set(ids)
    consumer = await bus.js.consumer_info(stream, f"learner-{RUN}")
    assert consumer.num_ack_pending == 0
    stale = learner_metrics.CHUNKS_STALE._value.get() - stale_before
    assert len(trained_ids) + stale + consumer.num_pending == len(ids)
    await bus.drain()
