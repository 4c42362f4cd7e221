"""The learning benchmark's arms are data (benchmarks/arms.toml), checked as a configuration file is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ala.settings_file import ConfigError
from benchmarks.learning_value import ARMS, SERVICES, load_arms


def test_every_arm_is_an_overlay_of_known_settings_and_advised_arms_run_the_advisor() -> None:
    assert {"plain", "expert", "wrong", "null", "llm-options", "ranks2-sync"} <= set(ARMS)
    assert ARMS["plain"].env == {} and "advisor" not in ARMS["plain"].services
    expert = ARMS["expert"]
    assert expert.services == SERVICES
    assert json.loads(expert.env["ALA_ADVISOR_ADVISORS"]) == [{"backend": "expert", "name": "expert"}]
    assert expert.env["ALA_ADVISOR_CACHE"] == "false" and expert.env["ALA_ACTOR_JUDGE_RATE"] == "0.05"
    assert ARMS["null"].env["ALA_ROUTER_TRUST"] == "false"
    assert ARMS["ranks2-merge"].env == {"ALA_UP_LEARNER_RANKS": "2", "ALA_LEARNER_DISTRIBUTED": "merge"}
    assert ARMS["llm-cache"].env["ALA_ADVISOR_CACHE"] == "true"  # an arm's own value wins over the advised default


def test_a_misspelt_key_in_an_arm_stops_the_benchmark_with_the_nearest_name(tmp_path: Path) -> None:
    arms = tmp_path / "arms.toml"
    arms.write_text('[expert-slow]\nadvisor.advisors = [{ backend = "expert" }]\nrouter.b_maks = 3\n')
    with pytest.raises(
        ConfigError, match=r"arms.toml \[expert-slow\]: \[router\] has no setting 'b_maks'; did you mean"
    ):
        load_arms(arms)


def test_a_dataset_is_collected_under_a_named_arm_with_full_states_on_request() -> None:
    import typer

    from benchmarks.offline_prior import DATASET_ARM, dataset_overlay

    assert dataset_overlay(None, False) == DATASET_ARM
    overlay = dataset_overlay("llm-options", True)
    assert overlay["advisor"]["advisors"] == [{"backend": "embedded", "advice": "options"}]
    assert overlay["actor"]["experimental"]["chunk_full_states"] is True
    assert "actor" not in dataset_overlay("llm-options", False)
    with pytest.raises(typer.BadParameter, match=r"no arm 'llm-option' in arms\.toml"):
        dataset_overlay("llm-option", False)
