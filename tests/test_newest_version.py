"""The followers' one-slot mailbox: the latest offer replaces one not yet taken, and a waiting follower wakes."""

from __future__ import annotations

import asyncio

from ala.weights import NewestVersion
from protos import WeightsAnnouncement


def announcement(version: int) -> WeightsAnnouncement:
    return WeightsAnnouncement(
        run="test", version=version, bucket="b", name=f"test/{version}", sha256="ab" * 32, size=1, created_at=0.0
    )


def test_the_latest_offer_replaces_one_not_taken_and_is_taken_once() -> None:
    newest = NewestVersion()
    assert newest.take() is None
    assert not newest.offer(announcement(3))
    assert newest.offer(announcement(5))  # replaced 3, not taken yet
    taken = newest.take()
    assert taken is not None and taken.version == 5
    assert newest.take() is None


def test_a_waiting_follower_wakes_for_the_next_offer() -> None:
    async def scenario() -> int:
        newest = NewestVersion()
        # The offer comes once the follower below is waiting: next() finds nothing and waits for the event.
        asyncio.get_running_loop().call_soon(newest.offer, announcement(7))
        return (await asyncio.wait_for(newest.next(), 5)).version

    assert asyncio.run(scenario()) == 7
