"""The learner process: for now it connects, heartbeats and serves /metrics; its job arrives with its own issue."""

import asyncio

from ala.service import ServiceRuntime, run_until_signalled
from services.learner.metrics import REGISTRY, SERVICE
from services.learner.settings import LearnerSettings


async def serve(settings: LearnerSettings, stop: asyncio.Event) -> None:
    async with ServiceRuntime(settings, SERVICE, REGISTRY):
        await stop.wait()


def main() -> None:
    run_until_signalled(serve, LearnerSettings())
