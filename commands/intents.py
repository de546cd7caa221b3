"""The worker's reader of the whole ``convai.command-intents`` topic (every partition).

It feeds each intent, in log order, into the ledger, so every worker knows every command id
claimed by any worker (see ``ledger.py``), and lets the worker wait until it has read up to a
given offset: its own intent (to confirm its claim) or the end offsets seen on an assignment.
Reading starts at the claim horizon (``offsets_for_times``), not at the beginning of the
topic's retention: older intents belong to commands that are expired by now.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from commands.decide import command_key
from commands.ledger import CommandLedger, read_source
from convostream.kafka_security import KafkaSecurity
from convostream.logs import get_logger
from schemas.serde import Serde, SerdeError

log = get_logger(__name__)


class IntentTail:
    """``await start(partitions, since_ms)``, then ``await caught_up(...)`` as needed."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        serde: Serde,
        ledger: CommandLedger,
        fetch_wait_ms: int,
        security: KafkaSecurity,
    ) -> None:
        self.topic = topic
        self.serde = serde
        self.ledger = ledger
        self._bootstrap = bootstrap
        self._security = security
        self._fetch_wait_ms = fetch_wait_ms
        self._consumer: AIOKafkaConsumer | None = None
        self._positions: dict[int, int] = {}
        self._moved = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def start(self, partitions: Iterable[int], since_ms: int) -> None:
        """Assign ``partitions`` at the first offset written at or after ``since_ms``."""
        self._consumer = consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            **self._security.client_kwargs(),
            enable_auto_commit=False,
            fetch_max_wait_ms=self._fetch_wait_ms,
        )
        await consumer.start()
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            # None: nothing that recent, so start at the end (some brokers answer offset 0
            # instead, which only means reading more)
            at = found.get(tp)
            consumer.seek(tp, ends[tp] if at is None else at.offset)
            self._positions[tp.partition] = await consumer.position(tp)
        log.info("command intents reader started", topic=self.topic, positions=self._positions)
        self._task = asyncio.create_task(self._run(consumer))

    async def end_offsets(self) -> dict[int, int]:
        assert self._consumer is not None, "call start() first"
        tps = [TopicPartition(self.topic, p) for p in self._positions]
        ends = await self._consumer.end_offsets(tps)
        return {tp.partition: offset for tp, offset in ends.items()}

    async def caught_up(self, targets: dict[int, int], timeout: float) -> bool:
        """True once this reader's position is at or past ``targets`` (partition -> offset)."""

        def reached() -> bool:
            return all(self._positions.get(p, 0) >= o for p, o in targets.items())

        async with self._moved:
            try:
                await asyncio.wait_for(self._moved.wait_for(reached), timeout)
            except TimeoutError:
                return False
        return True

    def failure(self) -> BaseException | None:
        """Why the reader stopped, if it did (the worker must not decide without it)."""
        if self._task is None or not self._task.done() or self._task.cancelled():
            return None
        return self._task.exception() or RuntimeError("the intents reader stopped")

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    await self._note(record)
            for tp in consumer.assignment():
                self._positions[tp.partition] = await consumer.position(tp)
            async with self._moved:
                self._moved.notify_all()

    async def _note(self, record: ConsumerRecord[bytes, bytes]) -> None:
        source = read_source(record.headers)
        if source is None or record.value is None:
            return
        try:
            command = (await self.serde.resolve(record.value)).record
        except SerdeError:
            return  # not written by a worker; it cannot claim a command id
        at = (record.partition, record.offset)
        self.ledger.note_intent(at, source, command_key(command), command["expires_at"])

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
