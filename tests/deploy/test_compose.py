"""The compose files: valid alone and in every combination a user runs, and saying what docs/deployment.md says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.deploy.conftest import ROOT, run, tool

COMBINATIONS = [
    ["docker-compose.yml"],
    ["docker-compose.yml", "compose.cpu.yml"],
    ["docker-compose.yml", "deploy/compose/lab-dgx.yml"],
    ["docker-compose.yml", "deploy/compose/lab-rtx.yml"],
    ["docker-compose.yml", "deploy/compose/lab-jetson.yml"],
    ["docker-compose.yml", "compose.cpu.yml", "compose.scale.yml"],
    ["docker-compose.yml", "compose.cpu.yml", "compose.config.yml"],
]


def config(files: list[str]) -> dict:
    args = [arg for file in files for arg in ("-f", file)]
    return json.loads(run(tool("docker-compose"), *args, "config", "--format", "json", env_host="dgx.lab"))


@pytest.mark.parametrize("files", COMBINATIONS, ids=lambda files: "+".join(f.split("/")[-1] for f in files))
def test_every_combination_is_valid(files: list[str]) -> None:
    args = [arg for file in files for arg in ("-f", file)]
    run(tool("docker-compose"), *args, "config", "-q", env_host="dgx.lab")


@pytest.mark.parametrize("files", COMBINATIONS, ids=lambda files: "+".join(f.split("/")[-1] for f in files))
def test_every_combination_matches_the_compose_specification(files: list[str], tmp_path: Path) -> None:
    """The merged model (overrides use `!reset`/`!override`, YAML tags the schema checker cannot read alone)."""
    merged = tmp_path / "merged.json"
    merged.write_text(json.dumps(config(files)))
    run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(merged))
    if files == ["docker-compose.yml"]:
        run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(ROOT / files[0]))


def test_the_cpu_override_runs_everything_without_a_gpu_or_vllm() -> None:
    services = config(["docker-compose.yml", "compose.cpu.yml"])["services"]
    assert "vllm" not in services  # behind a profile
    assert set(services) == {"nats", "advisor", "router", "actor", "learner", "evaluator", "prometheus", "grafana"}
    for name, service in services.items():
        assert "devices" not in json.dumps(service.get("deploy", {})), f"{name} still reserves a GPU"
        if name not in ("prometheus", "grafana"):
            assert service["image"] == "ala:cpu", name
    assert "embedded" in services["advisor"]["environment"]["ALA_ADVISOR_ADVISORS"]
    assert set(services["advisor"]["depends_on"]) == {"nats"}


def test_the_full_file_waits_for_health_and_reserves_gpus() -> None:
    services = config(["docker-compose.yml"])["services"]
    for name in ("advisor", "router", "actor", "learner", "evaluator"):
        service = services[name]
        assert service["depends_on"]["nats"]["condition"] == "service_healthy", name
        assert service["healthcheck"]["test"][-1] == "ala.probe", name
        port = service["environment"]["ALA_HEALTH_PORT"]
        assert service["environment"][f"ALA_{name.upper()}_METRICS_PORT"] == port, name
        assert service["restart"] == "unless-stopped"
    assert services["advisor"]["depends_on"]["vllm"]["condition"] == "service_healthy"
    for name in ("vllm", "actor", "learner"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"], name


def test_each_lab_host_points_its_services_at_the_one_broker() -> None:
    for host, service in (("lab-dgx.yml", "advisor"), ("lab-jetson.yml", "actor")):
        services = config(["docker-compose.yml", f"deploy/compose/{host}"])["services"]
        assert services[service]["environment"]["ALA_NATS_URL"] == "nats://dgx.lab:4222"


def test_every_service_connects_as_its_own_user_with_the_password_the_broker_wrote() -> None:
    services = config(["docker-compose.yml", "compose.cpu.yml"])["services"]
    assert services["nats"]["environment"]["ALA_BROKER_AUTH"] == "true"
    assert services["nats"]["environment"]["ALA_BROKER_SECRETS_DIR"] == "/secrets"
    for name in ("advisor", "router", "actor", "learner", "evaluator"):
        env = services[name]["environment"]
        assert env["ALA_NATS_USER"] == name
        assert env["ALA_NATS_PASSWORD_FILE"] == f"/secrets/{name}.password"
        mounts = {(v["source"], v["target"], v.get("read_only", False)) for v in services[name]["volumes"]}
        assert ("secrets", "/secrets", True) in mounts, name
        assert env["ALA_NATS_TLS_CA_FILE"] == "/secrets/tls/ca.pem"  # the CA the broker made in that volume
    assert services["nats"]["environment"]["ALA_BROKER_TLS_DIR"] == "/secrets/tls"


def test_the_scale_override_runs_three_routed_nats_nodes_r3_clients_and_two_learner_ranks() -> None:
    services = config(["docker-compose.yml", "compose.cpu.yml", "compose.scale.yml"])["services"]
    nodes = ("nats", "nats-1", "nats-2")
    routes = {services[node]["environment"]["ALA_BROKER_CLUSTER_ROUTES"] for node in nodes}
    assert routes == {",".join(f"nats-route://{node}:6222" for node in nodes)}
    assert len({services[node]["environment"]["ALA_BROKER_SERVER_NAME"] for node in nodes}) == 3
    assert len({json.dumps(services[node]["volumes"][0]) for node in nodes}) == 3  # a JetStream store each
    for name in ("advisor", "router", "actor", "learner", "learner-1", "evaluator"):
        env = services[name]["environment"]
        assert env["ALA_NATS_URL"] == ",".join(f"nats://{node}:4222" for node in nodes), name
        assert env["ALA_NATS_REPLICAS"] == "3", name
        assert {services[name]["depends_on"][node]["condition"] for node in nodes} == {"service_healthy"}, name
    ranks = [services[name]["environment"] for name in ("learner", "learner-1")]
    assert [(r["RANK"], r["WORLD_SIZE"], r["MASTER_ADDR"]) for r in ranks] == [
        ("0", "2", "learner"),
        ("1", "2", "learner"),
    ]
    assert "ports" not in services["actor"]  # `--scale actor=N` needs no host port per actor


def test_the_settings_file_overlay_gives_every_service_the_file_and_keeps_what_they_had() -> None:
    plain = config(["docker-compose.yml", "compose.cpu.yml"])["services"]
    services = config(["docker-compose.yml", "compose.cpu.yml", "compose.config.yml"])["services"]
    for name in ("advisor", "router", "actor", "learner", "evaluator"):
        assert services[name]["environment"]["ALA_CONFIG"] == "/etc/ala/ala.toml"
        mounts = {volume["target"]: volume for volume in services[name]["volumes"]}
        assert mounts["/etc/ala/ala.toml"]["source"] == str(ROOT / "deploy" / "lab.toml")
        assert mounts["/etc/ala/ala.toml"].get("read_only")
        before = {volume["target"] for volume in plain[name].get("volumes", [])}
        assert before <= set(mounts), name  # the secrets and checkpoints volumes stay
