"""The actor's preference queries: two distinct bots' states as digests, at the rate set."""

from __future__ import annotations

import asyncio

import numpy as np
from nats.aio.msg import Msg

from ala.bus import Bus
from ala.config import NatsSettings
from ala.envs import adapter_for
from protos import PreferenceQuery, decode, subjects
from services.actor.preferences import PreferenceAsker
from services.actor.states import state_keys
from tests.actor.test_actor_service import _settings
from tests.support import ENV_ID, fresh_agent, rollout


async def test_a_query_carries_two_distinct_bots_states_and_the_rate_is_kept(
    bus: Bus, nats_settings: NatsSettings
) -> None:
    queries: asyncio.Queue[PreferenceQuery] = asyncio.Queue()

    async def on_query(msg: Msg) -> None:
        await queries.put(decode(msg.data, PreferenceQuery))

    await bus.subscribe(subjects.preference_query_wildcard("test"), on_query)
    settings = _settings(nats_settings, num_bots=4, preference_rate_per_s=0.001)  # one token, then ~17 min apart
    adapter = adapter_for(ENV_ID)
    source = rollout(fresh_agent(), bots=4)
    source.collect()
    asker = PreferenceAsker(settings, bus, source, adapter)
    keys = state_keys(adapter, source, "observation")
    assert await asker.maybe_ask(keys)
    assert not await asker.maybe_ask(keys)  # the bucket is empty
    query = await asyncio.wait_for(queries.get(), 10)
    assert query.first.bot != query.second.bot and query.actor == "a1"
    for digest in (query.first, query.second):
        np.testing.assert_array_equal(digest.observation.to_numpy(), source.obs[digest.bot])
        assert digest.full_state is not None and digest.state_key == keys[digest.bot]
    assert queries.empty()
