"""The issuing side: build, sign and produce a command, then wait for its one result.

``CommandClient`` is the small Python API for services; ``convostream send-command`` uses it::

    async with CommandClient(bootstrap, issuer="billing", key=key) as client:
        result = await client.send("end_call", "conv_123")
        assert result["status"] == "delivered"
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from convostream import kafka_compat
from convostream.kafka_security import PLAINTEXT, KafkaSecurity
from convostream.logs import get_logger
from convostream.settings import CommonSettings
from schemas.commands import build_command
from schemas.serde import Serde, SerdeError
from schemas.topics import COMMAND_RESULTS, COMMANDS

log = get_logger(__name__)


class CommandTimeout(TimeoutError):
    """No result arrived in time; the command may still be decided later."""


class CommandClient:
    """One producer and one reader of all result partitions, shared by concurrent ``send``s."""

    def __init__(
        self,
        bootstrap: str,
        *,
        issuer: str,
        key: str,
        key_id: str | None = None,
        topic_prefix: str = "",
        serde: Serde | None = None,
        fetch_wait_ms: int | None = None,
        security: KafkaSecurity = PLAINTEXT,
    ) -> None:
        """``fetch_wait_ms`` bounds the result reader's long poll; unset, it follows
        ``CONVOSTREAM_BROKER_COMPAT`` (see ``CommonSettings.fetch_wait_ms``). ``security``:
        TLS and SASL (``CommonSettings.kafka_security()``)."""
        self.bootstrap = bootstrap
        self._security = security
        self.issuer = issuer
        self._key = key
        self._key_id = key_id
        self.commands_topic = COMMANDS.full_name(topic_prefix)
        self.results_topic = COMMAND_RESULTS.full_name(topic_prefix)
        self.serde = serde or Serde()
        self._fetch_wait_ms = CommonSettings().fetch_wait_ms(fetch_wait_ms)
        self._waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._producer: AIOKafkaProducer | None = None
        self._reader: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect; the result reader starts at the end, so it sees every later result."""
        kafka_compat.install()  # services use this client without ``convostream``'s start-up
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            **self._security.client_kwargs(),
            enable_idempotence=True,
            acks="all",
            linger_ms=0,
        )
        self._reader = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            **self._security.client_kwargs(),
            enable_auto_commit=False,
            fetch_max_wait_ms=self._fetch_wait_ms,
        )
        await self._producer.start()
        await self._reader.start()
        partitions = await self._producer.partitions_for(self.results_topic)
        tps = [TopicPartition(self.results_topic, p) for p in sorted(partitions)]
        self._reader.assign(tps)
        await self._reader.seek_to_end(*tps)
        for tp in tps:  # resolve the end offsets now, before any command is produced
            await self._reader.position(tp)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._reader is not None
        while True:
            batch = await self._reader.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    if record.value is None:
                        continue
                    try:
                        result = (await self.serde.resolve(record.value)).record
                    except SerdeError:
                        continue
                    waiter = self._waiters.get(result.get("command_id", ""))
                    if waiter is not None and not waiter.done():
                        waiter.set_result(result)

    async def send(
        self,
        command_type: str,
        conversation_id: str,
        *,
        phone_number: str | None = None,
        text: str | None = None,
        ttl: float = 30.0,
        timeout: float = 30.0,
        command_id: str | None = None,
    ) -> dict[str, Any]:
        """Produce a signed command and return its CommandResult record (``status``...)."""
        command = build_command(
            command_type,
            conversation_id,
            issuer=self.issuer,
            key=self._key,
            key_id=self._key_id,
            phone_number=phone_number,
            text=text,
            ttl=ttl,
            command_id=command_id,
        )
        return await self.send_record(command, timeout=timeout)

    async def send_record(
        self, command: Mapping[str, Any], *, timeout: float = 30.0
    ) -> dict[str, Any]:
        """Produce a prepared record as is (e.g. re-send one, or test a bad signature)."""
        assert self._producer is not None, "call start() first"
        command_id = command["command_id"]
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[command_id] = waiter
        try:
            await self._producer.send_and_wait(
                self.commands_topic,
                self.serde.encode("ControlCommand", command),
                key=command["conversation_id"].encode("utf-8"),
            )
            try:
                return await asyncio.wait_for(asyncio.shield(waiter), timeout)
            except TimeoutError:
                raise CommandTimeout(
                    f"no result for command {command_id} within {timeout:g} s"
                ) from None
        finally:
            if self._waiters.get(command_id) is waiter:
                del self._waiters[command_id]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._reader is not None:
            await self._reader.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def __aenter__(self) -> CommandClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
