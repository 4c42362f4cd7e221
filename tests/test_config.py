from __future__ import annotations

import pytest
from pydantic import ValidationError

from ala.config import BrokerSettings, NatsSettings
from services.actor.settings import ActorSettings
from services.router.settings import RouterSettings


def test_defaults_run_on_a_laptop(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ALA_RUN", "ALA_NATS_URL", "ALA_ROUTER_METRICS_PORT"):
        monkeypatch.delenv(name, raising=False)
    settings = RouterSettings()
    assert settings.run == "dev"
    assert settings.nats.url == "nats://127.0.0.1:4222"
    assert settings.nats.reconnect_time_wait_s < 1
    assert settings.metrics_port == 9102


def test_environment_sets_shared_and_service_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALA_RUN", "exp-42")
    monkeypatch.setenv("ALA_NATS_URL", "nats://a:4222, nats://b:4222")
    monkeypatch.setenv("ALA_ROUTER_METRICS_PORT", "9999")
    monkeypatch.setenv("ALA_ACTOR_NUM_BOTS", "20")
    router, actor = RouterSettings(), ActorSettings()
    assert router.run == actor.run == "exp-42"
    assert router.nats.servers == ["nats://a:4222", "nats://b:4222"]
    assert router.metrics_port == 9999 and actor.metrics_port == 9103
    assert actor.num_bots == 20


def test_invalid_values_are_refused_with_the_field_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALA_RUN", "has.dot")
    with pytest.raises(ValidationError, match="ALA_RUN"):
        RouterSettings()
    monkeypatch.delenv("ALA_RUN")
    monkeypatch.setenv("ALA_NATS_PUBLISH_TIMEOUT_S", "0")
    with pytest.raises(ValidationError, match="publish_timeout_s"):
        NatsSettings()
    monkeypatch.setenv("ALA_BROKER_MAX_PAYLOAD_BYTES", str(128 * 1024 * 1024))
    with pytest.raises(ValidationError, match="max_payload_bytes"):
        BrokerSettings()


def test_the_actors_onnx_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ActorSettings().backend == "torch"
    monkeypatch.setenv("ALA_ACTOR_BACKEND", "onnx")
    monkeypatch.setenv("ALA_ACTOR_ONNX_PROVIDERS", '["CUDAExecutionProvider", "CPUExecutionProvider"]')
    monkeypatch.setenv("ALA_ACTOR_ONNX_THREADS", "2")
    actor = ActorSettings()
    assert actor.backend == "onnx" and actor.onnx_threads == 2 and actor.onnx_atol == 1e-5
    assert actor.onnx_providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setenv("ALA_ACTOR_BACKEND", "tensorrt")
    with pytest.raises(ValidationError, match="backend"):
        ActorSettings()


def test_actor_replicas_get_distinct_seeds_that_are_the_same_on_every_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALA_ACTOR_REPLICA", raising=False)
    # A lone actor (any host name without a replica number) runs the seed it was given, as `ala train --local` does.
    assert ActorSettings(seed=7, instance="laptop").rollout_seed == 7
    # StatefulSet pods (and named actors) take their number; replica 0 keeps the seed.
    pods = [ActorSettings(seed=7, instance=f"ala-actor-{i}").rollout_seed for i in range(8)]
    assert pods[0] == 7 and len(set(pods)) == 8
    assert pods == [ActorSettings(seed=7, instance=f"ala-actor-{i}").rollout_seed for i in range(8)]
    assert ActorSettings(seed=8, instance="ala-actor-3").rollout_seed != pods[3]
    # compose --scale: hosts named by container id are told apart by it.
    containers = {ActorSettings(seed=7, instance=name).rollout_seed for name in ("3f2a9c0e1b7d", "9e8d7c6b5a41")}
    assert len(containers) == 2 and 7 not in containers
    # Helm sets the replica from the pod index, whatever the pod is called.
    monkeypatch.setenv("ALA_ACTOR_REPLICA", "3")
    assert ActorSettings(seed=7, instance="anything").rollout_seed == pods[3]
    assert all(0 <= seed < 2**31 for seed in pods)
