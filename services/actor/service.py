"""The actor process: for now it announces its action space in heartbeats and serves /metrics; the rollout loop
arrives with its own issue."""

import asyncio

from ala.service import ServiceRuntime, run_until_signalled
from services.actor.envs import action_space_of
from services.actor.metrics import REGISTRY, SERVICE
from services.actor.settings import ActorSettings


async def serve(settings: ActorSettings, stop: asyncio.Event) -> None:
    action_space = action_space_of(settings.env_id)
    async with ServiceRuntime(settings, SERVICE, REGISTRY, action_space=action_space, num_bots=settings.num_bots):
        await stop.wait()


def main() -> None:
    run_until_signalled(serve, ActorSettings())
