"""The advisor process: for now it connects, heartbeats and serves /metrics; its job arrives with its own issue."""

import asyncio

from ala.service import ServiceRuntime, run_until_signalled
from services.advisor.metrics import REGISTRY, SERVICE
from services.advisor.settings import AdvisorSettings


async def serve(settings: AdvisorSettings, stop: asyncio.Event) -> None:
    async with ServiceRuntime(settings, SERVICE, REGISTRY):
        await stop.wait()


def main() -> None:
    run_until_signalled(serve, AdvisorSettings())
