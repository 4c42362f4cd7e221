"""Prometheus rules and Grafana dashboards: valid, tested, and about metrics that exist."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from typing import Any

import promql_parser
import yaml

from services import SERVICE_NAMES
from tests.deploy.conftest import DEPLOY, run, tool

PROMETHEUS = DEPLOY / "prometheus"


def test_prometheus_config_and_rules_are_valid_and_every_alert_fires_in_its_unit_test() -> None:
    promtool = tool("promtool")
    run(promtool, "check", "config", "prometheus.yml", cwd=PROMETHEUS)
    run(promtool, "check", "rules", "rules.yml", cwd=PROMETHEUS)
    run(promtool, "test", "rules", "rules_test.yml", cwd=PROMETHEUS)
    rules = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    tests = yaml.safe_load((PROMETHEUS / "rules_test.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}
    tested = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")  # a test that expects it to fire, not only one that expects silence
    }
    assert alerts == tested, f"alerts without a firing test: {sorted(alerts - tested)}"


def exported_metrics() -> set[str]:
    """Every series name the services' registries expose (counters with _total, histograms with _bucket...)."""
    names = {"up"}
    for service in SERVICE_NAMES:
        registry = importlib.import_module(f"services.{service}.metrics").REGISTRY
        for collector in list(registry._collector_to_names):
            names.update(registry._collector_to_names[collector])
    return names


def recorded_metrics() -> set[str]:
    rules = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    return {rule["record"] for group in rules["groups"] for rule in group["rules"] if "record" in rule}


def selectors(node: Any) -> list[Any]:
    """Every vector selector in a parsed PromQL expression."""
    if type(node).__name__ == "VectorSelector":
        return [node]
    found = []
    for attribute in ("args", "expr", "lhs", "rhs", "param", "vector_selector"):
        child = getattr(node, attribute, None)
        for item in child if isinstance(child, list) else [child]:
            if item is not None:
                found += selectors(item)
    return found


def metric_names(expression: str) -> set[str]:
    names = set()
    for selector in selectors(promql_parser.parse(expression)):
        if selector.name:
            names.add(selector.name)
        else:  # {__name__=~"ala_.+_nats_connected"}: names come from the regex, checked against real ones below
            names.add("re:" + str(selector.matchers))
    return names


def test_every_query_parses_and_names_only_metrics_the_services_export() -> None:
    known = exported_metrics() | recorded_metrics()
    rules = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    boards = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
    assert len(boards) == 3
    for board in boards:
        panels = json.loads(board.read_text())["panels"]
        expressions += [target["expr"] for panel in panels for target in panel["targets"]]
    unknown = set()
    for expression in expressions:
        for name in metric_names(expression):
            if name.startswith("re:"):
                assert "nats_connected" in name or "nats_publish_seconds_bucket" in name, name
                continue
            if name not in known:
                unknown.add(name)
    assert not unknown, f"queries name metrics nobody exports: {sorted(unknown)}"
    assert {"ala_router_processing_seconds_bucket", "ala_actor_env_steps_total"} <= exported_metrics()


def test_the_committed_dashboards_are_what_the_builder_writes() -> None:
    spec = importlib.util.spec_from_file_location("dashboards", DEPLOY / "grafana" / "build.py")
    assert spec is not None and spec.loader is not None
    builder = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = builder  # its dataclasses look their module up there
    spec.loader.exec_module(builder)
    for board in builder.DASHBOARDS:
        committed = json.loads((DEPLOY / "grafana" / "dashboards" / f"{board['uid']}.json").read_text())
        assert committed == board, f"{board['uid']}: run python deploy/grafana/build.py"
