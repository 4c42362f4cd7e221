"""One TOML file configures a deployment; a misspelt key or ALA_* variable stops start-up with the nearest name."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ala import settings_file
from ala.cli import app, config_sections
from services import SERVICE_NAMES
from services.actor.settings import ActorSettings
from services.advisor.settings import AdvisorSettings
from services.learner.settings import LearnerSettings

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT / "deploy" / "lab.toml"


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A private copy of the environment, without ALA_* variables, that the CLI and the settings read and write."""
    private = {name: value for name, value in os.environ.items() if not name.startswith("ALA_")}
    monkeypatch.setattr(os, "environ", private)
    return private


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), terminal_width=240)
    return result.exit_code, result.output


def test_a_misspelt_variable_stops_start_up_with_the_nearest_name(environ: dict[str, str]) -> None:
    environ["ALA_LERNER_GAMMA"] = "0.9"
    code, output = _run("config", "show", "learner")
    assert code == 2
    assert "ALA_LERNER_GAMMA; did you mean 'ALA_LEARNER_GAMMA'?" in output


def test_a_misspelt_key_in_the_file_stops_start_up_with_the_nearest_name(
    environ: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "lab.toml"
    config.write_text("[learner]\nlerning_rate = 1e-3\n")
    code, output = _run("--config", str(config), "config", "show", "learner")
    assert code == 2
    assert "[learner] has no setting 'lerning_rate'; did you mean 'learning_rate'?" in output
    config.write_text("[lerner]\ngamma = 0.9\n")
    assert "did you mean 'learner'?" in _run("--config", str(config), "config", "show")[1]
    config.write_text('[[advisor.advisors]]\nname = "a"\nbakend = "expert"\n')
    assert (
        "[[advisor.advisors]] (backend embedded) has no key 'bakend'; did you mean 'backend'?"
        in _run("--config", str(config), "config", "show", "advisor")[1]
    )


def test_each_advisor_table_takes_only_its_backends_keys(environ: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "lab.toml"
    config.write_text('[[advisor.advisors]]\nname = "a"\nbackend = "opena"\n')
    assert (
        "[[advisor.advisors]] has no backend 'opena'; did you mean 'openai'?"
        in _run("--config", str(config), "config", "show", "advisor")[1]
    )
    config.write_text('[[advisor.advisors]]\nname = "a"\nbackend = "openai"\nwrong_probability = 0.5\n')
    assert (
        "[[advisor.advisors]] (backend openai) has no key 'wrong_probability' (only backend adversarial has it)"
        in _run("--config", str(config), "config", "show", "advisor")[1]
    )
    config.write_text('[[advisor.advisors]]\nname = "a"\nbackend = "openai"\nmodle = "x"\n')
    assert (
        "(backend openai) has no key 'modle'; did you mean 'model'?"
        in _run("--config", str(config), "config", "show", "advisor")[1]
    )
    # The same through the environment: the typed spec refuses another backend's key, in a sentence.
    environ["ALA_ADVISOR_ADVISORS"] = '[{"name": "a", "backend": "expert", "temperature": 0.1}]'
    done = subprocess.run(
        [sys.executable, "-m", "ala", "config", "show", "advisor"], env=environ, capture_output=True, text=True
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "invalid settings (AdvisorSettings): advisors.0.expert.temperature: Extra inputs" in done.stdout


def test_the_file_sets_each_section_and_the_environment_overrides_it(environ: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "lab.toml"
    config.write_text(
        'run = "lab"\n'
        "[runtime]\nprogress_interval_s = 30\n"
        "[actor]\nnum_bots = 12\nprogress_interval_s = 5\n"
        "[learner]\ngamma = 0.9\n"
        '[[advisor.advisors]]\nname = "planner"\nbackend = "expert"\n'
        '[[advisor.advisors]]\nname = "lab"\nbackend = "openai"\nbase_url = "http://dgx.lab:8000/v1"\n'
    )
    environ["ALA_LEARNER_GAMMA"] = "0.95"
    variables = settings_file.read(config, config_sections(), SERVICE_NAMES)
    settings_file.apply(variables, environ)
    actor, learner, advisor = ActorSettings(), LearnerSettings(), AdvisorSettings()
    assert (actor.run, actor.num_bots, actor.progress_interval_s) == ("lab", 12, 5.0)  # its own table beats runtime
    assert learner.progress_interval_s == 30.0  # [runtime], declared once, reaches every service
    assert learner.gamma == 0.95  # the environment overrides the file
    assert [(spec.name, spec.backend) for spec in advisor.advisors] == [("planner", "expert"), ("lab", "openai")]
    assert advisor.advisors[1].base_url == "http://dgx.lab:8000/v1"


def test_config_show_says_where_each_value_came_from(environ: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "lab.toml"
    config.write_text("[learner]\ngamma = 0.9\nclip_coef = 0.3\n")
    environ["ALA_LEARNER_CLIP_COEF"] = "0.25"
    code, output = _run("--config", str(config), "config", "show", "learner")
    assert code == 0, output
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:4]] for line in output.splitlines()
            if line.startswith("│ ALA_")}  # fmt: skip
    assert rows["ALA_LEARNER_GAMMA"] == ["0.9", "file"]
    assert rows["ALA_LEARNER_CLIP_COEF"] == ["0.25", "environment"]
    assert rows["ALA_LEARNER_ENT_COEF"][1] == "default"


def test_the_lab_file_and_every_deployment_file_name_only_real_settings(environ: dict[str, str]) -> None:
    sections = config_sections()
    variables = settings_file.read(LAB, sections, SERVICE_NAMES)
    settings_file.apply(variables, environ)
    assert AdvisorSettings().advisors[0].backend == "openai"
    known = settings_file.known_variables(sections)
    named: set[str] = set()
    for path in [*(ROOT / "deploy" / "env").glob("*.env"), *(ROOT / "deploy" / "helm" / "ala").glob("values*.yaml")]:
        named |= set(re.findall(r"^\s*(ALA_[A-Z0-9_]+)\s*[=:]", path.read_text(), re.MULTILINE))
    assert len(named) > 20
    assert named - known == set()


def test_experiment_only_settings_live_under_an_experimental_table(environ: dict[str, str], tmp_path: Path) -> None:
    """A knob that exists for experiments (`ala.rl.config.EXPERIMENTAL`) is set under `[<section>.experimental]`,
    so a lab's file shows at a glance what is not production; set beside the production ones, it stops start-up."""
    beside = tmp_path / "beside.toml"
    beside.write_text('[learner]\ncorrection = "shortcut"\n')
    code, output = _run("--config", str(beside), "config", "show", "learner")
    assert code == 2 and "[learner] 'correction' is experimental: set it under [learner.experimental]" in output
    misspelt = tmp_path / "misspelt.toml"
    misspelt.write_text('[learner.experimental]\ncorection = "shortcut"\n')
    code, output = _run("--config", str(misspelt), "config", "show", "learner")
    assert code == 2 and "has no setting 'corection'; did you mean 'correction'?" in output
    good = tmp_path / "good.toml"
    good.write_text('[learner]\ngamma = 0.95\n[learner.experimental]\ncorrection = "shortcut"\n')
    code, output = _run("--config", str(good), "config", "show", "learner")
    assert code == 0, output
    row = next(line for line in output.splitlines() if "ALA_LEARNER_CORRECTION" in line)
    assert "shortcut" in row and "file" in row and "(experiment" in row  # the description column may be cut


def test_settings_nest_by_group_and_a_key_in_the_wrong_group_names_its_own(
    environ: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "lab.toml"
    config.write_text(
        "[learner.ppo]\nlearning_rate = 7e-4\n[learner.checkpoint]\ncheckpoint_every = 2\n"
        "[router.trust_model]\ntrust_initial = 0.3\n[actor.advice]\nmax_abs_bias = 1.5\n"
    )
    code, output = _run("--config", str(config), "config", "show")
    assert code == 0, output
    assert environ["ALA_LEARNER_LEARNING_RATE"] == "0.0007" and environ["ALA_LEARNER_CHECKPOINT_EVERY"] == "2"
    assert environ["ALA_ROUTER_TRUST_INITIAL"] == "0.3" and environ["ALA_ACTOR_MAX_ABS_BIAS"] == "1.5"
    assert "[learner.ppo]" in output and "[router.trust_model]" in output  # config show prints the tree
    config.write_text("[learner.ppo]\ncheckpoint_every = 2\n")
    assert (
        "[learner.ppo] has no setting 'checkpoint_every' (it is in [learner.checkpoint])"
        in _run("--config", str(config), "config", "show")[1]
    )
    config.write_text("[learner.ppo]\nlerning_rate = 2\n")
    assert (
        "[learner.ppo] has no setting 'lerning_rate'; did you mean 'learning_rate'?"
        in _run("--config", str(config), "config", "show")[1]
    )
    config.write_text("[learner.ppoo]\nlearning_rate = 2\n")
    assert "[learner] has no setting 'ppoo'; did you mean 'ppo'?" in _run("--config", str(config), "config", "show")[1]
