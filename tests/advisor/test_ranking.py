"""Ranking pairs of states for the reward model: the planner by plan length, the embedded LLM by text, and the
advisor service answering the actors' queries on the bus."""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
import numpy as np
import pytest
from nats.aio.msg import Msg
from pydantic import ValidationError

from ala.bus import Bus
from ala.config import NatsSettings
from ala.envs import adapter_for
from protos import Preference, PreferenceQuery, StateDigest, decode, encode, subjects
from services.advisor import metrics
from services.advisor.backends import BackendError
from services.advisor.ranking import Ranker
from services.advisor.service import serve
from services.advisor.settings import AdvisorSettings, advisor_spec
from tests.advisor.test_advisor_service import _settings
from tests.support import ENV_ID, digest_of, running


def _start_and_three_steps_along_the_plan(seed: int = 0) -> tuple[StateDigest, StateDigest]:
    adapter = adapter_for(ENV_ID)
    env = adapter.make()
    obs, _ = env.reset(seed=seed)
    start = digest_of(env, obs)
    for _ in range(3):
        action = adapter.expert_action(env)
        assert action is not None
        obs, *_ = env.step(action)
    return start, digest_of(env, obs, bot=1)


async def test_the_planner_prefers_the_state_with_fewer_steps_to_the_goal_and_calls_equal_ones_a_tie() -> None:
    ranker = Ranker(advisor_spec(name="planner", backend="expert"))
    start, closer = _start_and_three_steps_along_the_plan()
    assert await ranker.rank(start, closer) == 1
    assert await ranker.rank(closer, start) == 0
    assert await ranker.rank(start, start) is None


async def test_the_embedded_llm_answers_a_or_b_and_needs_text() -> None:
    ranker = Ranker(advisor_spec(name="llm", backend="embedded"))
    start, closer = _start_and_three_steps_along_the_plan()
    assert await ranker.rank(start, closer) in (0, 1)
    with pytest.raises(BackendError, match="text"):
        await ranker.rank(start, msgspec.structs.replace(closer, text=""))
    await ranker.close()


def test_a_backend_that_cannot_rank_is_refused_in_the_settings() -> None:
    with pytest.raises(ValidationError, match="cannot rank"):
        AdvisorSettings(preference_ranker={"backend": "random", "name": "r"})


async def test_the_advisor_answers_queries_with_the_ranked_observations(bus: Bus, nats_settings: NatsSettings) -> None:
    rankings: asyncio.Queue[Preference] = asyncio.Queue()

    async def on_ranking(msg: Msg) -> None:
        await rankings.put(decode(msg.data, Preference))

    await bus.subscribe(subjects.preference_subject("test"), on_ranking)
    settings = _settings(nats_settings, advisors=[], preference_ranker={"backend": "expert", "name": "planner"})
    start, closer = _start_and_three_steps_along_the_plan()
    query = PreferenceQuery(run="test", actor="a1", query=4, first=start, second=closer, created_at=0.0)
    undecodable = metrics.PREFERENCES.labels("undecodable")
    before = undecodable._value.get()
    subject = subjects.preference_query_subject("test", "a1")
    async with running(serve, settings):
        ranking = None
        while ranking is None:  # core NATS: ask again until the just-started advisor has subscribed
            await bus.publish(subject, query, "preference-query")
            with contextlib.suppress(TimeoutError):
                ranking = await asyncio.wait_for(rankings.get(), 0.5)
        await bus.publish_bytes(subject, encode(query)[:-3], "preference-query")
        for _ in range(50):  # the garbage is counted before the next good query is answered (one at a time)
            await bus.publish(subject, query, "preference-query")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rankings.get(), 0.5)
            if undecodable._value.get() > before:
                break
    assert (ranking.query, ranking.preferred, ranking.source) == (4, 1, "planner")
    np.testing.assert_array_equal(ranking.first.to_numpy(), start.observation.to_numpy())
    np.testing.assert_array_equal(ranking.second.to_numpy(), closer.observation.to_numpy())
    assert undecodable._value.get() == before + 1
