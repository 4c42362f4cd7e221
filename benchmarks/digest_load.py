"""Eight actors' digest traffic through the advisor and the router: rate, loss and memory over a sustained run.

The load test of the router fed it advice directly; the digests that produce advice never took part. Here this
process plays 8 actors, each publishing at its default cap (`ALA_ACTOR_DIGEST_RATE_PER_S`, 200/s: 1,600 digests/s
together) real DoorKey-8x8 digests (text, observation, full state) of its bots, with its heartbeats. `ala advisor`
(the privileged planner as its backend, per-step advice: the fastest backend, so that the plumbing is what is
measured) and `ala router` run as their own processes. At the end, every digest sent is accounted for:

- received by the advisor (`ala_advisor_digests_total`), or lost on the bus;
- answered (a backend answer; the planner's is a plan, advice for several states along it), replaced by a newer
  digest of the same bot in its queue (the advisor asks about each bot's latest state only, counted in
  `ala_advisor_digests_dropped_total`), skipped (counted), or still queued;
- the router's advice in, accepted, and bias updates out, which this process also receives.

Memory: each process's resident set before and after (flat: nothing grows without bound).

    python -m benchmarks.digest_load [--actors 8] [--rate 200] [--seconds 60]
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from ala.broker import EmbeddedBroker, free_port
from ala.config import BrokerSettings
from ala.envs import adapter_for
from benchmarks.report import command_line, provenance, write_report
from benchmarks.scrape import metrics_text, sample
from protos import StateDigest, encode, subjects
from tests.support import actor_heartbeat, digest_of, spec

RUN = "bench"
ENV_ID = "MiniGrid-DoorKey-8x8-v0"
BOTS = 16
"""Bots per actor: the advisor keeps one waiting digest per bot."""
STATES = 64
ADVISORS = [{"name": "planner", "backend": "expert", "advice": "actions"}]


def digest_pool(actor: str, seed: int) -> list[StateDigest]:
    """`STATES` digests of real DoorKey-8x8 states along a seeded random walk, spread over the actor's bots."""
    adapter = adapter_for(ENV_ID)
    env = adapter.make()
    observation, _ = env.reset(seed=seed)
    pool = []
    for step in range(STATES):
        digest = digest_of(env, observation, bot=step % BOTS, env_id=ENV_ID)
        pool.append(msgspec.structs.replace(digest, run=RUN, actor=actor))
        observation, _, terminated, truncated, _ = env.step(int(env.action_space.sample()))
        if terminated or truncated:
            observation, _ = env.reset(seed=seed + step + 1)
    env.close()
    return pool


async def play_actors(url: str, actors: int, rate: float, seconds: float, ports: dict[str, int]) -> dict[str, float]:
    """Heartbeats until both services know every actor, then each actor's digests at `rate`/s for `seconds`;
    bias updates counted as they arrive."""
    nc = NatsClient()
    await nc.connect(url, pending_size=256 * 1024 * 1024)
    names = [f"a{i}" for i in range(1, actors + 1)]
    pools = {name: [encode(d) for d in digest_pool(name, seed)] for seed, name in enumerate(names, start=1)}
    policy = spec(ENV_ID)
    biases = 0

    async def on_bias(msg: Msg) -> None:
        nonlocal biases
        biases += 1

    for name in names:
        await nc.subscribe(subjects.bias_subject(RUN, name), cb=on_bias, pending_msgs_limit=10_000_000)

    async def heartbeats() -> None:
        for name in names:
            heartbeat = actor_heartbeat(run=RUN, instance=name, num_bots=BOTS, created_at=time.time(), policy=policy)
            await nc.publish(subjects.heartbeat_subject(RUN, "actor", name), encode(heartbeat))

    deadline = time.monotonic() + 60
    while sample(metrics_text(ports["router"]), "ala_router_actors") < actors:
        assert time.monotonic() < deadline, "the router did not hear every actor"
        await heartbeats()
        await asyncio.sleep(0.2)  # heartbeat pacing, as an actor's own interval
    sent, start, next_heartbeat = 0, time.perf_counter(), 0.0
    while (elapsed := time.perf_counter() - start) < seconds:
        if elapsed >= next_heartbeat:
            await heartbeats()
            next_heartbeat += 1.0
        due = int(elapsed * rate * actors)
        while sent < due:
            name = names[sent % actors]
            pool = pools[name]
            await nc.publish(subjects.digest_subject(RUN, name), pool[(sent // actors) % len(pool)])
            sent += 1
        await asyncio.sleep(0.001)  # pacing: digests go out on the actors' clock
    await nc.flush()
    settle_until = time.monotonic() + 10  # the advisor works off its queue (each bot's latest digest)
    while sample(metrics_text(ports["advisor"]), "ala_advisor_queue_depth") > 0:  # polling its /metrics
        if time.monotonic() > settle_until:
            break
        await asyncio.sleep(0.1)
    await nc.flush()
    await nc.drain()
    return {"sent": sent, "sent_per_s": sent / seconds, "biases": biases}


def main(
    actors: Annotated[int, typer.Option(help="Actors played by this process.")] = 8,
    rate: Annotated[float, typer.Option(help="Digests per second per actor (the actor's default cap).")] = 200.0,
    seconds: Annotated[float, typer.Option(help="Duration of the sustained run.")] = 60.0,
    out: Annotated[Path, typer.Option(help="Markdown report; JSON beside it.")] = Path(
        "benchmarks/results/digest-load.md"
    ),
) -> None:
    ports = {"advisor": free_port(), "router": free_port()}
    with (
        tempfile.TemporaryDirectory() as scratch,
        EmbeddedBroker(BrokerSettings(port=-1, monitor_port=-1, auth=False, store_dir=Path(scratch))) as broker,
    ):
        env = dict(
            os.environ,
            ALA_NATS_URL=broker.url,
            ALA_RUN=RUN,
            ALA_ADVISOR_METRICS_PORT=str(ports["advisor"]),
            ALA_ADVISOR_ADVISORS=json.dumps(ADVISORS),
            ALA_ROUTER_METRICS_PORT=str(ports["router"]),
            ALA_ROUTER_API_PORT="0",
        )
        processes = {
            service: subprocess.Popen([sys.executable, "-m", "ala", service], env=env)
            for service in ("advisor", "router")
        }
        try:
            while not all(metrics_text(port) for port in ports.values()):
                time.sleep(0.2)  # polling the services' /metrics until both serve it
            before = {service: metrics_text(port) for service, port in ports.items()}
            load = asyncio.run(play_actors(broker.url, actors, rate, seconds, ports))
            after = {service: metrics_text(port) for service, port in ports.items()}
        finally:
            for process in processes.values():
                process.send_signal(signal.SIGTERM)
                process.wait(30)

    def delta(service: str, name: str, labels: dict[str, str] | None = None) -> float:
        return sample(after[service], name, labels) - sample(before[service], name, labels)

    received = delta("advisor", "ala_advisor_digests_total")
    answered = delta("advisor", "ala_advisor_llm_seconds_count")  # backend answers, one per digest asked about
    answered += delta("advisor", "ala_advisor_cache_hits_total")  # answers from the cache (LLM backends only)
    failed = delta("advisor", "ala_advisor_backend_failures_total")
    published = delta("advisor", "ala_advisor_advice_published_total")  # a planner's answer is a plan: several
    replaced = delta("advisor", "ala_advisor_digests_dropped_total")
    skipped = delta("advisor", "ala_advisor_digests_skipped_total")
    rejected = delta("advisor", "ala_advisor_digests_rejected_total")
    queued = sample(after["advisor"], "ala_advisor_queue_depth")
    unaccounted = received - answered - failed - replaced - skipped - rejected - queued
    router_in = delta("router", "ala_router_advice_total")
    accepted = delta("router", "ala_router_advice_accepted_total")
    router_rejected = delta("router", "ala_router_rejected_total")
    biases_out = delta("router", "ala_router_bias_updates_total")
    rss = {
        service: (
            sample(before[service], "process_resident_memory_bytes") / 2**20,
            sample(after[service], "process_resident_memory_bytes") / 2**20,
        )
        for service in ports
    }
    figures = {
        **load,
        "received": received,
        "answered": answered,
        "published": published,
        "replaced": replaced,
        "skipped": skipped,
        "failed": failed,
        "rejected": rejected,
        "queued": queued,
        "unaccounted": unaccounted,
        "router_in": router_in,
        "accepted": accepted,
        "router_rejected": router_rejected,
        "biases_out": biases_out,
        "rss_mb": rss,
    }
    lines = [
        f"# Digest traffic of {actors} actors through the advisor and the router ({seconds:.0f} s)",
        "",
        provenance(command_line(), {"advisor": {"ALA_ADVISOR_ADVISORS": json.dumps(ADVISORS)}, "router": {}}),
        "",
        f"{actors} actors played by one process, {BOTS} bots each, {rate:g} digests/s each ({rate * actors:,.0f}/s"
        f" together), real {ENV_ID} digests (text, observation, full state); `ala advisor` (planner backend, per-step"
        " advice) and `ala router` as their own processes on one embedded nats-server, all on this machine's cores.",
        "",
        "| stage | count | per second |",
        "|---|---:|---:|",
        f"| digests sent | {load['sent']:,.0f} | {load['sent_per_s']:,.0f} |",
        f"| received by the advisor | {received:,.0f} | {received / seconds:,.0f} |",
        f"| lost on the bus (sent - received) | {load['sent'] - received:,.0f} | |",
        f"| answered (backend answers) | {answered:,.0f} | {answered / seconds:,.0f} |",
        f"| replaced by a newer digest of the same bot (counted) | {replaced:,.0f} | |",
        f"| skipped, failed or undecodable (counted) | {skipped + failed + rejected:,.0f} | |",
        f"| still queued at the end | {queued:,.0f} | |",
        f"| unaccounted for | {unaccounted:,.0f} | |",
        f"| advice published (a planner's answer: a plan) | {published:,.0f} | {published / seconds:,.0f} |",
        f"| advice received by the router | {router_in:,.0f} | {router_in / seconds:,.0f} |",
        f"| accepted / rejected | {accepted:,.0f} / {router_rejected:,.0f} | |",
        f"| bias updates published by the router | {biases_out:,.0f} | {biases_out / seconds:,.0f} |",
        f"| bias updates received by the actors' subscriber | {load['biases']:,.0f} | |",
        "",
        "| process | resident set before (MB) | after (MB) |",
        "|---|---:|---:|",
        *(f"| {service} | {rss[service][0]:.0f} | {rss[service][1]:.0f} |" for service in ports),
        "",
    ]
    write_report("\n".join(lines), out)
    out.with_suffix(".json").write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    typer.run(main)
