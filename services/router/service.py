"""The router process: for now it connects, heartbeats and serves /metrics; its job arrives with its own issue."""

import asyncio

from ala.service import ServiceRuntime, run_until_signalled
from services.router.metrics import REGISTRY, SERVICE
from services.router.settings import RouterSettings


async def serve(settings: RouterSettings, stop: asyncio.Event) -> None:
    async with ServiceRuntime(settings, SERVICE, REGISTRY):
        await stop.wait()


def main() -> None:
    run_until_signalled(serve, RouterSettings())
