"""The actor's evidence for trust: control-group episodes and the advisors each advised episode met."""

from __future__ import annotations

import numpy as np

from services.actor.outcomes import OutcomeLedger


def test_episodes_are_credited_to_the_control_group_or_to_every_advisor_they_met() -> None:
    ledger = OutcomeLedger(num_bots=3, control_share=0.0, seed=0)
    ledger.control[:] = [True, False, False]
    ledger.record_step([(), ("expert",), ("expert", "llm")])
    ledger.record_step([(), (), ("llm",)])
    for bot, episode_return in enumerate([0.5, 0.9, 0.2]):
        ledger.end_episode(bot, episode_return)
    outcome = ledger.take("test", "a1")
    assert outcome is not None
    assert (outcome.control.episodes, outcome.control.return_sum) == (1, 0.5)
    assert outcome.advised["expert"].episodes == 2 and np.isclose(outcome.advised["expert"].return_sum, 1.1)
    assert outcome.advised["llm"].episodes == 1 and np.isclose(outcome.advised["llm"].return_sq_sum, 0.04)
    assert ledger.take("test", "a1") is None  # taken: starts afresh
    assert not ledger.control.any()  # new episodes drew again, with share 0


def test_the_control_share_is_drawn_per_episode() -> None:
    ledger = OutcomeLedger(num_bots=1, control_share=0.25, seed=1)
    draws = []
    for _ in range(2000):
        draws.append(bool(ledger.control[0]))
        ledger.end_episode(0, 0.0)
    assert 0.22 < np.mean(draws) < 0.28


def test_a_bias_reaches_the_share_of_episodes_its_reach_names() -> None:
    ledger = OutcomeLedger(num_bots=1, control_share=0.2, seed=2)
    reached = []
    for _ in range(4000):
        reached.append(not ledger.unreached(np.array([0.25]))[0])
        ledger.end_episode(0, 0.0)
    assert 0.17 < np.mean(reached) < 0.23  # 0.8 outside the control group, a quarter of those: 0.2


def test_episodes_are_assigned_to_advisors_at_their_start_and_credited_by_intention_to_treat() -> None:
    ledger = OutcomeLedger(num_bots=4, control_share=0.0, seed=0)
    ledger.control[:] = [True, False, False, False]
    ledger.draw[:] = [0.01, 0.01, 0.5, 0.99]
    ledger.set_reach({"expert": 0.6, "llm": 0.05})  # episodes under way are assigned by their draw
    assert ledger.assigned[1] == {"expert", "llm"} and ledger.assigned[2] == {"expert"} and ledger.assigned[3] == set()
    merged = [("expert", "llm")] * 4
    # A merged bias applies to a bot assigned to any advisor in it; not to control bots nor to unassigned ones.
    assert ledger.unreached(np.ones(4), merged).tolist() == [True, False, False, True]
    assert ledger.unreached(np.ones(4), [("llm",)] * 4).tolist() == [True, False, True, True]
    ledger.record_step([(), (), (), ("expert",)])  # bot 3 "met" advice that could not apply to it
    for bot, episode_return in enumerate([0.5, 0.9, 0.2, 0.7]):
        ledger.end_episode(bot, episode_return)
    outcome = ledger.take("test", "a1")
    assert outcome is not None and outcome.control.episodes == 1
    # Bot 2 met no advice yet counts for the expert, its assignment; bot 3 met advice yet counts for nobody.
    assert outcome.advised["expert"].episodes == 2 and np.isclose(outcome.advised["expert"].return_sum, 1.1)
    assert outcome.advised["llm"].episodes == 1 and np.isclose(outcome.advised["llm"].return_sum, 0.9)
    # New episodes are assigned from the reach in force when they start.
    ledger.set_reach({"expert": 0.0})
    ledger.end_episode(1, 0.0)
    assert ledger.assigned[1] == set()
