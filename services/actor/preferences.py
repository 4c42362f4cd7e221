"""The actor's preference queries: two of its bots' states, now, for an advisor to rank (issue 31; Motif, ONI).

At most `preference_rate_per_s` pairs a second (a token bucket), each two distinct bots drawn at random, sent as
`StateDigest`s (with the full state where the actor shares it, so that the planner can rank as the upper bound). The
advisor's answers go to the learner's reward model, not back here: the actor only asks.
"""

from __future__ import annotations

import time

import numpy as np

from ala.bus import Bus
from ala.envs import EnvAdapter
from ala.ratelimit import TokenBucket
from ala.rl.rollout import Rollout
from protos import PreferenceQuery, subjects
from services.actor import metrics
from services.actor.digests import make_digest
from services.actor.settings import ActorSettings


class PreferenceAsker:
    def __init__(self, settings: ActorSettings, bus: Bus, rollout: Rollout, adapter: EnvAdapter) -> None:
        self.settings, self.bus, self.rollout, self.adapter = settings, bus, rollout, adapter
        self.bucket = TokenBucket(settings.preference_rate_per_s, burst=1.0)
        self.rng = np.random.default_rng(settings.rollout_seed + 2)
        self.queries = 0

    async def maybe_ask(self, keys: list[str]) -> bool:
        """Publish one pair if the bucket has a token (and the actor has two bots); whether one went out."""
        if self.rollout.num_bots < 2 or not self.bucket.take():
            return False
        s = self.settings
        first, second = (int(bot) for bot in self.rng.choice(self.rollout.num_bots, 2, replace=False))
        digests = [
            make_digest(
                s.run,
                s.instance,
                self.adapter,
                self.rollout,
                self.rollout.agent.spec,
                bot,
                keys[bot],
                s.digest_full_state,
            )
            for bot in (first, second)
        ]
        query = PreferenceQuery(
            run=s.run, actor=s.instance, query=self.queries, first=digests[0], second=digests[1], created_at=time.time()
        )
        self.queries += 1
        sent = await self.bus.publish(subjects.preference_query_subject(s.run, s.instance), query, "preference-query")
        if sent:
            metrics.PREFERENCE_QUERIES.inc()
        return sent
