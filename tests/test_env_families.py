"""Every environment family ALA claims, through the real stack: advisor (embedded LLM and expert), router, actor
and learner in this process, over a real nats-server. Env steps advance, the learner's weights reach the actor,
no service logs an error, and LLM advisors answer MiniGrid's text but skip envs that have none, counting why."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from ala.config import NatsSettings
from services.actor import metrics as actor_metrics
from services.actor.service import serve as serve_actor
from services.actor.settings import ActorSettings
from services.advisor import metrics as advisor_metrics
from services.advisor.service import serve as serve_advisor
from services.advisor.settings import AdvisorSettings, advisor_spec
from services.learner import metrics as learner_metrics
from services.learner.service import serve as serve_learner
from services.learner.settings import LearnerSettings
from services.router.service import serve as serve_router
from services.router.settings import RouterSettings
from tests.support import running, wait_until

FAMILIES = [
    ("MiniGrid-DoorKey-5x5-v0", True),
    ("BabyAI-GoToRedBall-v0", True),
    ("MiniGrid-KeyCorridorS3R1-v0", True),
    ("CartPole-v1", False),
    ("Acrobot-v1", False),
]


def _value(metric: object) -> float:
    return float(metric._value.get())  # type: ignore[attr-defined]


@pytest.mark.parametrize(("env_id", "has_text"), FAMILIES)
async def test_the_stack_runs_every_family(
    env_id: str, has_text: bool, nats_settings: NatsSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    common = {
        "run": "families",
        "nats": nats_settings,
        "metrics_host": "127.0.0.1",
        "metrics_port": 0,
        "heartbeat_interval_s": 0.2,
    }
    services = [
        (serve_learner, LearnerSettings(**common, instance="l1", checkpoint_dir=tmp_path, fetch_timeout_s=0.1)),
        (serve_router, RouterSettings(**common, instance="r1", api_port=0)),
        (
            serve_advisor,
            AdvisorSettings(
                **common,
                instance="adv1",
                advisors=[advisor_spec(name="llm-0"), advisor_spec(name="expert", backend="expert")],
            ),
        ),
        (serve_actor, ActorSettings(**common, instance="a1", env_id=env_id, num_bots=4, num_steps=16)),
    ]
    steps, loaded = actor_metrics.ENV_STEPS, actor_metrics.WEIGHTS_LOADED
    published = learner_metrics.WEIGHTS_PUBLISHED
    advice = advisor_metrics.ADVICE_PUBLISHED.labels("llm-0")
    no_text = advisor_metrics.DIGESTS_SKIPPED.labels("llm-0", "no_text")
    before = {metric: _value(metric) for metric in (steps, loaded, published, advice, no_text)}

    def grew(metric: object, by: float = 1.0) -> bool:
        return _value(metric) - before[metric] >= by

    caplog.set_level(logging.WARNING)
    async with AsyncExitStack() as stack:
        for serve, settings in services:
            await stack.enter_async_context(running(serve, settings))
        # Without text, the actor stops asking once it has heard that no live advisor reads what its digests carry
        # (the LLM reads text; the expert the full state, which only MiniGrid has).
        unread = actor_metrics.ADVISORS_READING
        await wait_until(
            lambda: (
                grew(published, 3)
                and grew(loaded)
                and grew(steps, 1000)
                and (grew(advice) if has_text else _value(unread) == 0)
            ),
            timeout_s=90,
        )
    if not has_text:
        assert not grew(advice), "an LLM was asked about an env it has no text for"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]
