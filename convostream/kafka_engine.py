"""Real Apache Kafka (KRaft) on loopback: one node for ``convostream broker --engine kafka``, or a
small cluster for failover tests.

Every node is broker and controller at once (combined mode) with its own free ports and a
temporary log directory, formatted with the same cluster id (``StorageTool format``, what
``kafka-storage.sh format`` runs) before ``kafka.Kafka server.properties`` starts it. Replication
settings follow the cluster size: with three nodes, topics have three replicas and
``min.insync.replicas=2``, so ``acks=all`` writes survive losing one broker.

With a :class:`SaslSslListener`, each node also listens for SASL_SSL clients (PLAIN and
SCRAM-SHA-512) on a second port; the brokers, and the topic set-up, keep the PLAINTEXT one.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from convostream.broker import BrokerProcess, create_topics, free_port, wait_until_ready
from convostream.kafka_dist import KAFKA_VERSION, classpath, java_binary
from convostream.logs import get_logger

log = get_logger(__name__)

HEAP = "-Xmx512m"


@dataclass
class KafkaNode:
    """One KRaft node's ports, directory and process."""

    node_id: int
    port: int
    controller_port: int
    directory: Path
    secure_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def properties_file(self) -> Path:
        return self.directory / "server.properties"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crashed machine would vanish."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass(frozen=True)
class SaslSslListener:
    """A SASL_SSL client listener: the broker's key and certificate (a PKCS#12 keystore) and
    its users, by mechanism (SCRAM users are stored when the log directory is formatted)."""

    keystore: Path
    keystore_password: str
    plain_users: Mapping[str, str] = field(default_factory=dict)
    scram_users: Mapping[str, str] = field(default_factory=dict)  # SCRAM-SHA-512


@dataclass
class KafkaBroker(BrokerProcess):
    """Apache Kafka on 127.0.0.1; ``nodes`` brokers (1 by default). A (sync) context manager.

    ``port`` is the first node's client port (0: free ports). ``properties`` are added to every
    node's ``server.properties`` (tests lower ``group.min.session.timeout.ms``, for instance).
    ``advertised_port`` sends the clients of a single node to another port (a test's proxy that
    can cut the broker off); the proxy must be up before :meth:`start`.
    """

    port: int = 0
    nodes: int = 1
    host: str = "127.0.0.1"
    prefix: str = ""
    create: bool = True
    quiet: bool = True
    heap: str = HEAP
    version: str = KAFKA_VERSION
    properties: Mapping[str, str] = field(default_factory=dict)
    sasl_ssl: SaslSslListener | None = None
    advertised_port: int = 0
    _nodes: list[KafkaNode] = field(default_factory=list, init=False, repr=False)
    _root: Path | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{self.host}:{n.port}" for n in self._nodes) or f"{self.host}:{self.port}"

    @property
    def secure_bootstrap(self) -> str:
        """The SASL_SSL listeners (``sasl_ssl`` set)."""
        return ",".join(f"{self.host}:{n.secure_port}" for n in self._nodes)

    @property
    def replication(self) -> int:
        return min(3, self.nodes)

    def node(self, index: int) -> KafkaNode:
        return self._nodes[index]

    def start(self, timeout: float = 120.0) -> KafkaBroker:
        java = java_binary()
        cp = classpath(self.version)
        self._root = Path(tempfile.mkdtemp(prefix="convostream-kafka-"))
        try:
            self._nodes = [
                KafkaNode(
                    node_id=i + 1,
                    port=(self.port if i == 0 and self.port else free_port(self.host)),
                    controller_port=free_port(self.host),
                    directory=self._root / f"node-{i + 1}",
                    secure_port=free_port(self.host) if self.sasl_ssl else 0,
                )
                for i in range(self.nodes)
            ]
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            for node in self._nodes:
                node.directory.mkdir(parents=True)
                node.properties_file.write_text(self._server_properties(node))
                self._run_tool(java, cp, node, cluster_id)
            for node in self._nodes:
                self._launch(java, cp, node)
            asyncio.run(self._ready(timeout))
        except BaseException:
            self.stop()
            raise
        log.info("kafka ready", bootstrap=self.bootstrap, nodes=self.nodes, version=self.version)
        return self

    def restart(self, index: int) -> None:
        """Start a stopped or killed node again on its ports and data."""
        self._launch(java_binary(), classpath(self.version), self._nodes[index])

    def _server_properties(self, node: KafkaNode) -> str:
        voters = ",".join(f"{n.node_id}@{self.host}:{n.controller_port}" for n in self._nodes)
        replication = self.replication
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{self.host}:{node.port},"
            f"CONTROLLER://{self.host}:{node.controller_port}",
            "advertised.listeners": self._advertised(node),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(node.directory / "data"),
            "num.partitions": "1",
            "default.replication.factor": str(replication),
            "min.insync.replicas": str(min(2, replication)),
            "offsets.topic.replication.factor": str(replication),
            "transaction.state.log.replication.factor": str(replication),
            "transaction.state.log.min.isr": str(min(2, replication)),
            "auto.create.topics.enable": "false",
            "log.segment.bytes": str(64 * 1024 * 1024),
            **self.properties,
        }
        if self.sasl_ssl is not None:
            props.update(self._sasl_ssl_properties(node, self.sasl_ssl))
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def _advertised(self, node: KafkaNode) -> str:
        return f"PLAINTEXT://{self.host}:{self.advertised_port or node.port}"

    def _sasl_ssl_properties(self, node: KafkaNode, listener: SaslSslListener) -> dict[str, str]:
        secure = f"SASL_SSL://{self.host}:{node.secure_port}"
        prefix = "listener.name.sasl_ssl."
        plain_users = "".join(f' user_{u}="{p}"' for u, p in listener.plain_users.items())
        return {
            "listeners": f"PLAINTEXT://{self.host}:{node.port},{secure},"
            f"CONTROLLER://{self.host}:{node.controller_port}",
            "advertised.listeners": f"{self._advertised(node)},{secure}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,"
            "CONTROLLER:PLAINTEXT",
            "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-512",
            prefix + "ssl.keystore.type": "PKCS12",
            prefix + "ssl.keystore.location": str(listener.keystore),
            prefix + "ssl.keystore.password": listener.keystore_password,
            prefix + "plain.sasl.jaas.config": "org.apache.kafka.common.security.plain."
            f"PlainLoginModule required{plain_users};",
            prefix + "scram-sha-512.sasl.jaas.config": "org.apache.kafka.common.security.scram."
            "ScramLoginModule required;",
        }

    def _run_tool(self, java: str, cp: str, node: KafkaNode, cluster_id: str) -> None:
        cmd = [java, "-Xmx256m", "-cp", cp, "kafka.tools.StorageTool", "format"]
        # "=": a random id may begin with "-", which argparse would take for an option
        cmd += [f"--cluster-id={cluster_id}", "-c", str(node.properties_file)]
        for user, password in (self.sasl_ssl.scram_users if self.sasl_ssl else {}).items():
            cmd += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]"]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"kafka storage format failed: {result.stdout}{result.stderr}")

    def _launch(self, java: str, cp: str, node: KafkaNode) -> None:
        cmd = [
            java,
            self.heap,
            "-Djava.awt.headless=true",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
            "-cp",
            cp,
            "kafka.Kafka",
            str(node.properties_file),
        ]
        with (node.directory / "kafka.log").open("ab") as out:
            node.proc = subprocess.Popen(
                cmd,
                stdout=out if self.quiet else None,
                stderr=out if self.quiet else None,
            )

    async def _ready(self, timeout: float) -> None:
        for node in self._nodes:
            await wait_until_ready(f"{self.host}:{node.port}", timeout)
        if self.create:
            await create_topics(self.bootstrap, prefix=self.prefix, replication=self.replication)

    def log_text(self) -> str:
        """Every node's broker log (warnings and errors), for test failures."""
        return "\n".join(
            (n.directory / "kafka.log").read_text(errors="replace")
            for n in self._nodes
            if (n.directory / "kafka.log").exists()
        )

    def running(self) -> bool:
        return any(n.running() for n in self._nodes)

    def wait(self) -> int:
        """Block until the first node exits; its exit code."""
        for node in self._nodes:
            if node.proc is not None:
                return node.proc.wait()
        return 0

    def terminate(self) -> None:
        """Ask every node to stop (safe from a signal handler)."""
        for node in self._nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30.0) -> None:
        self.terminate()
        for node in self._nodes:
            if node.proc is None:
                continue
            try:
                node.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                node.kill()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
            log.info("kafka stopped", bootstrap=self.bootstrap)
