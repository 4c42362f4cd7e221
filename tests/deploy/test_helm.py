"""The Helm chart: lint --strict (values.schema.json), and every per-hardware rendering valid Kubernetes."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, run, tool

CHART = DEPLOY / "helm" / "ala"
HARDWARE = {
    "defaults": [],
    "dgx": ["values-dgx.yaml"],
    "rtx": ["values-rtx.yaml"],
    "jetson": ["values-jetson.yaml"],
    "lab": ["values-rtx.yaml", "values-dgx.yaml", "values-jetson.yaml"],
    "scale": ["values-scale.yaml"],
}


def render(values: list[str], *extra: str) -> list[dict]:
    args = [arg for file in values for arg in ("-f", str(CHART / file))]
    manifests = run(tool("helm"), "template", "ala", str(CHART), "--namespace", "ala", *args, *extra)
    return [doc for doc in yaml.safe_load_all(manifests) if doc]


def workloads(docs: list[dict]) -> dict[str, dict]:
    return {
        doc["metadata"]["name"]: doc
        for doc in docs
        if doc["kind"] in ("Deployment", "StatefulSet") and doc["metadata"]["labels"].get("app.kubernetes.io/part-of")
    }


@pytest.mark.parametrize("hardware", HARDWARE)
def test_lint_and_render_valid_kubernetes(hardware: str, tmp_path) -> None:
    args = [arg for file in HARDWARE[hardware] for arg in ("-f", str(CHART / file))]
    run(tool("helm"), "lint", "--strict", str(CHART), *args)
    manifests = tmp_path / "manifests.yaml"
    manifests.write_text(yaml.safe_dump_all(render(HARDWARE[hardware])))
    output = run(tool("kubernetes-validate"), "--strict", "-k", "1.30.0", str(manifests))
    assert "passed" in output


def test_the_schema_refuses_values_a_typo_would_make() -> None:
    helm = tool("helm")
    for bad in ("services.router.metricsPort=0", "services.routr.enabled=true", "run=two words"):
        with pytest.raises(AssertionError, match="schema"):
            run(helm, "lint", "--strict", str(CHART), "--set", bad)


def test_each_hardware_file_places_its_services_and_the_lab_combines_them() -> None:
    alone = workloads(render(HARDWARE["dgx"]))
    assert {"ala-advisor", "ala-vllm", "ala-router", "ala-actor"} <= set(alone)  # an overlay: the rest stay
    assert "nodeSelector" not in alone["ala-actor"]["spec"]["template"]["spec"]
    lab = workloads(render(HARDWARE["lab"]))
    placed = {name: doc["spec"]["template"]["spec"].get("nodeSelector", {}) for name, doc in lab.items()}
    # GFD's label values (cited in each values file): the DGX Spark's GB10, the RTX 5090, the Jetson AGX Orin.
    spark = {"kubernetes.io/arch": "arm64", "nvidia.com/gpu.product": "NVIDIA-GB10"}
    assert placed["ala-advisor"] == placed["ala-vllm"] == spark
    for name in ("ala-router", "ala-learner", "ala-evaluator"):
        assert placed[name] == {"nvidia.com/gpu.product": "NVIDIA-GeForce-RTX-5090"}, name
    actor = lab["ala-actor"]["spec"]["template"]["spec"]
    assert actor["runtimeClassName"] == "nvidia"
    assert actor["nodeSelector"] == {"kubernetes.io/arch": "arm64", "nvidia.com/gpu.product": "Orin"}
    (container,) = actor["containers"]
    assert container["image"] == "ala:jetson" and container["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["ALA_NATS_URL"] == "nats://ala-nats:4222"
    assert env["ALA_HEALTH_PORT"] == env["ALA_ACTOR_METRICS_PORT"] == "9103"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    (learner_container,) = lab["ala-learner"]["spec"]["template"]["spec"]["containers"]
    assert learner_container["image"] == "ala:cuda"
    learner = lab["ala-learner"]
    assert learner["kind"] == "StatefulSet" and learner["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    assert learner["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    # Each actor replica seeds its environments from its pod index (distinct, reproducible): a StatefulSet's label.
    assert lab["ala-actor"]["kind"] == "StatefulSet" and lab["ala-actor"]["spec"]["podManagementPolicy"] == "Parallel"
    (replica,) = [item for item in container["env"] if item["name"] == "ALA_ACTOR_REPLICA"]
    assert replica["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    only_actor = workloads(
        render([], *[f"--set=services.{s}.enabled=false" for s in ("advisor", "router", "learner", "evaluator")])
    )
    assert set(only_actor) == {"ala-actor"}


def test_nats_comes_from_the_official_chart_with_jetstream_and_the_monitoring_objects_carry_our_rules() -> None:
    docs = render(HARDWARE["rtx"])
    config = next(doc for doc in docs if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "ala-nats-config")
    assert "jetstream" in config["data"]["nats.conf"] and '"max_payload": 8MB' in config["data"]["nats.conf"]
    rule = next(doc for doc in docs if doc["kind"] == "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    monitor = next(doc for doc in docs if doc["kind"] == "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["interval"] == "5s"
    # The rules' job=~"ala-.+" holds whatever the release is called: the job is ala-<component>.
    (job,) = [rule for rule in endpoint["relabelings"] if rule["targetLabel"] == "job"]
    assert job["replacement"] == "ala-$1"
    assert job["sourceLabels"] == ["__meta_kubernetes_service_label_app_kubernetes_io_component"]
    dashboards = next(doc for doc in docs if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "ala-dashboards")
    assert set(dashboards["data"]) == {"ala-budgets.json", "ala-training.json", "ala-advice.json"}
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"


def _nats_server(config: Path, server_log: list[bytes]) -> subprocess.Popen[bytes]:
    """nats-server on `config`, once it says it is ready (it exits, failing this, if it cannot start); its log keeps
    draining into `server_log`."""
    from ala.broker import find_nats_server

    server = subprocess.Popen([str(find_nats_server()), "-c", str(config)], stderr=subprocess.PIPE)
    assert server.stderr is not None
    for line in server.stderr:
        if b"Server is ready" in line:
            break
    else:
        raise AssertionError(f"nats-server did not start on {config}")
    threading.Thread(target=lambda: server_log.extend(server.stderr or []), daemon=True).start()
    return server


def test_the_charts_nats_users_work_on_a_real_nats_server(tmp_path) -> None:
    """The Secret's auth.conf, included as the NATS chart includes it, runs on nats-server: each service logs in
    with its password from the Secret and gets exactly the permissions of ala/security.py."""
    import asyncio

    from ala.broker import find_nats_server
    from ala.security import permissions_document
    from tests.support import free_port

    docs = render([])
    secret = next(doc for doc in docs if doc["kind"] == "Secret" and doc["metadata"]["name"] == "ala-nats-auth")
    assert json.loads((CHART / "files" / "nats-permissions.json").read_text()) == permissions_document()
    (tmp_path / "nats-auth").mkdir()
    (tmp_path / "nats-auth" / "auth.conf").write_text(secret["stringData"]["auth.conf"])
    (tmp_path / "nats-config").mkdir()
    port = free_port()
    config = tmp_path / "nats-config" / "nats.conf"
    config.write_text(f"listen: 127.0.0.1:{port}\ninclude ../nats-auth/auth.conf\n")
    run(str(find_nats_server()), "-t", "-c", str(config))
    server_log: list[bytes] = []
    server = _nats_server(config, server_log)

    async def check() -> None:
        import nats

        async def connect(user: str):
            return await nats.connect(f"nats://127.0.0.1:{port}", user=user, password=secret["stringData"][user])

        # Events, not polling with a short deadline: on a loaded 2-core machine the violation can take seconds.
        violation: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        routed: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))
            if "permissions violation" in str(exc).lower() and not violation.done():
                violation.set_result(str(exc))

        router, actor = await connect("router"), await connect("actor")
        actor_errors = await nats.connect(
            f"nats://127.0.0.1:{port}", user="actor", password=secret["stringData"]["actor"], error_cb=on_error
        )
        received = []

        async def on_bias(msg) -> None:
            received.append(msg.data)
            if not routed.done():
                routed.set_result(msg.data)

        await actor.subscribe("ala.lab.bias.a1", cb=on_bias)
        await actor.flush()
        await actor_errors.publish("ala.lab.bias.a1", b"forged")
        await actor_errors.flush()
        # Core NATS delivers at most once: CI once saw the router's single message not arrive within 60 s (with
        # the violation reported), so the router publishes again each second until one does; none may be forged.
        deadline = asyncio.get_running_loop().time() + 60
        while not routed.done() and asyncio.get_running_loop().time() < deadline:
            await router.publish("ala.lab.bias.a1", b"routed")
            await router.flush()
            await asyncio.wait({routed}, timeout=1)
        # asyncio.wait cancels nothing, so what is missing is reported as it is (wait_for's cancel once made a
        # missing event look done).
        await asyncio.wait({violation}, timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
        missing = [name for name, event in (("routed", routed), ("violation", violation)) if not event.done()]
        assert not missing, f"no {missing} in 60 s; errors: {errors}; server log: {server_log[-20:]}"
        await router.flush()  # a forged message, had it passed, would have arrived before this round trip ends
        await actor.flush()
        assert received and set(received) == {b"routed"}
        for client in (router, actor, actor_errors):
            await client.close()

    try:
        asyncio.run(check())
    finally:
        server.terminate()
        server.wait()


def test_the_scale_values_run_a_3_node_nats_cluster_r3_and_learner_ranks_that_find_rank_0() -> None:
    docs = render(HARDWARE["scale"])
    nats = next(doc for doc in docs if doc["kind"] == "StatefulSet" and doc["metadata"]["name"] == "ala-nats")
    assert nats["spec"]["replicas"] == 3
    config = next(doc for doc in docs if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "ala-nats-config")
    assert '"cluster"' in config["data"]["nats.conf"] and "routes" in config["data"]["nats.conf"]
    found = workloads(docs)
    for name, workload in found.items():
        env = {e["name"]: e for e in workload["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["ALA_NATS_REPLICAS"]["value"] == "3", name
    assert found["ala-actor"]["spec"]["replicas"] == 4
    learner = found["ala-learner"]
    assert learner["spec"]["replicas"] == 2
    env = {e["name"]: e for e in learner["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["WORLD_SIZE"]["value"] == "2"
    assert env["RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    assert env["MASTER_ADDR"]["value"] == "ala-learner-0.ala-learner"
    service = next(doc for doc in docs if doc["kind"] == "Service" and doc["metadata"]["name"] == "ala-learner")
    assert service["spec"]["clusterIP"] == "None" and learner["spec"]["serviceName"] == "ala-learner"


def test_the_advisor_asks_its_own_releases_vllm_on_a_pinned_image() -> None:
    """A release not called `ala` still finds its vLLM: the URL is rendered from the release name."""
    manifests = run(
        tool("helm"), "template", "lab1", str(CHART), "--namespace", "ala", "-f", str(CHART / "values-dgx.yaml")
    )
    docs = {doc["metadata"]["name"]: doc for doc in yaml.safe_load_all(manifests) if doc}
    (advisor,) = docs["lab1-advisor"]["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in advisor["env"]}
    (spec,) = json.loads(env["ALA_ADVISOR_ADVISORS"])
    assert spec["base_url"] == "http://lab1-vllm:8000/v1" and "lab1-vllm" in docs
    (vllm,) = docs["lab1-vllm"]["spec"]["template"]["spec"]["containers"]
    assert vllm["image"] == "nvcr.io/nvidia/vllm:26.05-py3" and vllm["command"] == ["vllm", "serve"]
    (default_vllm,) = workloads(render([], "--set=vllm.enabled=true"))["ala-vllm"]["spec"]["template"]["spec"][
        "containers"
    ]
    assert not default_vllm["image"].endswith(":latest") and "command" not in default_vllm


def test_the_charts_tls_secret_serves_on_a_real_nats_server(tmp_path) -> None:
    """TLS on by default: the chart's generated Secret is what the NATS chart serves with, and ALA's own client,
    trusting only the ca.crt the services mount, connects to it by name."""
    import asyncio

    from cryptography import x509
    from prometheus_client import CollectorRegistry

    from ala.bus import Bus
    from ala.config import NatsSettings
    from ala.metrics import bus_metrics
    from tests.support import free_port

    docs = render([])
    secret = next(doc for doc in docs if doc["kind"] == "Secret" and doc["metadata"]["name"] == "ala-nats-tls")
    files = {key: base64.b64decode(value) for key, value in secret["data"].items()}
    certificate = x509.load_pem_x509_certificate(files["tls.crt"])
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"ala-nats", "ala-nats.ala.svc", "localhost"} <= set(names.get_values_for_type(x509.DNSName))
    config = next(doc for doc in docs if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "ala-nats-config")
    assert '"cert_file": "/etc/nats-certs/nats/tls.crt"' in config["data"]["nats.conf"]
    actor = workloads(docs)["ala-actor"]["spec"]["template"]["spec"]
    (container,) = actor["containers"]
    assert {"name": "ALA_NATS_TLS_CA_FILE", "value": "/etc/ala-tls/ca.crt"} in container["env"]
    (volume,) = [v for v in actor["volumes"] if v["name"] == "nats-ca"]
    assert volume["secret"] == {"secretName": "ala-nats-tls", "items": [{"key": "ca.crt", "path": "ca.crt"}]}

    for key, value in files.items():
        (tmp_path / key).write_bytes(value)
    port = free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(
        f'listen: 127.0.0.1:{port}\ntls {{ cert_file: "{tmp_path / "tls.crt"}", key_file: "{tmp_path / "tls.key"}" }}\n'
    )
    server = _nats_server(conf, [])

    async def connect() -> None:
        settings = NatsSettings(url=f"nats://localhost:{port}", tls_ca_file=str(tmp_path / "ca.crt"))
        bus = await asyncio.wait_for(Bus.connect(settings, "t", bus_metrics("t", CollectorRegistry())), 30)
        assert bus.is_connected and bus.nc.connected_url is not None
        await bus.drain()

    try:
        asyncio.run(connect())
    finally:
        server.terminate()
        server.wait()


def test_the_settings_file_reaches_every_service_as_ala_config(tmp_path) -> None:
    """`--set-file config=deploy/lab.toml`: one ConfigMap with the file, mounted in every service, ALA_CONFIG naming
    it; a changed file changes the pods' checksum, so they restart to read it."""
    lab = CHART.parents[1] / "lab.toml"
    extra = ("--set-file", f"config={lab}")
    run(tool("helm"), "lint", "--strict", str(CHART), *extra)
    docs = render(HARDWARE["lab"], *extra)
    (config,) = [doc for doc in docs if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "ala-config"]
    assert config["data"]["ala.toml"] == lab.read_text()
    checksums = set()
    services = {name: workload for name, workload in workloads(docs).items() if not name.endswith("-vllm")}
    assert len(services) == 5
    for name, workload in services.items():
        pod = workload["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        assert {"name": "ALA_CONFIG", "value": "/etc/ala/ala.toml"} in container["env"], name
        assert {"name": "config", "mountPath": "/etc/ala", "readOnly": True} in container["volumeMounts"], name
        assert {"name": "config", "configMap": {"name": "ala-config"}} in pod["spec"]["volumes"], name
        checksums.add(pod["metadata"]["annotations"]["checksum/config"])
    assert len(checksums) == 1
    without = render(HARDWARE["lab"])
    assert not [doc for doc in without if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "ala-config"]
    manifests = tmp_path / "manifests.yaml"
    manifests.write_text(yaml.safe_dump_all(docs))
    assert "passed" in run(tool("kubernetes-validate"), "--strict", "-k", "1.30.0", str(manifests))
