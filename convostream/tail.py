"""``convostream tail``: decoded records of a topic as JSON lines, for operators and scripts.

It reads without a consumer group (every partition assigned), so it never moves anyone's
committed offsets and can run beside the pipeline at any time.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from typing import Any

import click
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from pydantic import Field

from convostream import readiness, runtime
from convostream.broker import partitions_of
from convostream.settings import CommonSettings, ConfigError, load_settings, settings_options
from schemas.avro_schemas import SCHEMA_NAMES, short_name, timestamp_fields
from schemas.clock import micros_to_iso
from schemas.registry import Retry
from schemas.serde import Decoded, Serde, SerdeError, open_serde
from schemas.topics import MONITOR_EVENTS, Topic, lookup

_POLL_MS = 200
# tail only reads: it registers nothing and looks ids up with GET; a registry that stays down
# for this long shows as _error on the record instead of stalling the output forever
_REGISTRY_RETRY = Retry(give_up_after=30.0)


class TailSettings(CommonSettings):
    tail_topic: str = Field(
        MONITOR_EVENTS.name,
        description="Topic to print, with or without the prefix (the TOPIC argument).",
        json_schema_extra={"cli": False},
    )
    tail_from_beginning: bool = Field(
        True,
        description="Start at the earliest offset; --no-from-beginning (or --latest): only new.",
        json_schema_extra={"flag": "--from-beginning"},
    )
    tail_max: int | None = Field(
        None, ge=1, description="Stop after N records.", json_schema_extra={"flag": "--max"}
    )
    tail_timeout: float | None = Field(
        None,
        gt=0,
        description="Stop after SECONDS without a new record.",
        json_schema_extra={"flag": "--timeout"},
    )
    tail_follow: bool = Field(
        True,
        description="Wait for new records; --no-follow stops at the end offsets seen at start.",
        json_schema_extra={"flag": "--follow"},
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):  # a union branch that is a record: (full name, fields)
        name, fields = value
        return {"_record": short_name(name), **_jsonable(fields)}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return _b64(value)
    return value


def _iso(micros: Any) -> Any:
    if not isinstance(micros, int):
        return micros
    try:
        return micros_to_iso(micros)
    except OverflowError:  # outside datetime's range: show the number rather than fail
        return micros


def render(message: ConsumerRecord[bytes, bytes], decoded: Decoded | SerdeError | None) -> bytes:
    """One output line: Kafka coordinates, then the record's fields or ``_error``.

    Timestamps become ISO-8601 UTC; ``bytes`` (keys that are not UTF-8, DeadLetter.raw, values
    that failed to decode) become base64; a payload record gains ``_record``, its record name.
    """
    out: dict[str, Any] = {
        "_topic": message.topic,
        "_partition": message.partition,
        "_offset": message.offset,
    }
    key = message.key
    try:
        out["_key"] = None if key is None else key.decode("utf-8")
    except UnicodeDecodeError:
        out["_key"] = None
        out["_key_base64"] = _b64(key)
    if decoded is None:
        out["_tombstone"] = True
    elif isinstance(decoded, SerdeError):
        out["_error"] = f"{type(decoded).__name__}: {decoded}"
        out["_value_base64"] = _b64(message.value or b"")
    else:
        name, record, schema_id = decoded
        out["_schema"] = name
        out["_schema_id"] = schema_id
        stamps = timestamp_fields(name) if name in SCHEMA_NAMES else frozenset()
        for field, value in record.items():
            out[field] = _iso(value) if field in stamps else _jsonable(value)
    return orjson.dumps(out)


async def _decode(serde: Serde, value: bytes | None) -> Decoded | SerdeError | None:
    if value is None:
        return None
    try:
        return await serde.resolve(value)
    except SerdeError as exc:
        return exc


def _write(lines: list[bytes]) -> bool:
    """Write lines to stdout; False once the reader went away (``tail | head``)."""
    try:
        sys.stdout.buffer.write(b"\n".join(lines) + b"\n")
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        # stop writing to the closed pipe, also at interpreter exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return False
    return True


async def _partitions(
    consumer: AIOKafkaConsumer, name: str, bootstrap: str
) -> list[TopicPartition]:
    if name not in await consumer.topics():
        raise click.ClickException(f"topic {name!r} does not exist on the broker at {bootstrap}")
    return await partitions_of(consumer, name)


async def _at_end(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int] | None) -> bool:
    if ends is None:
        return False
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True


async def _tail(settings: TailSettings, topic: Topic, stop: asyncio.Event) -> None:
    name = topic.full_name(settings.topic_prefix)
    serde = await open_serde(
        settings.schema_registry_url, retry=_REGISTRY_RETRY, access=settings.registry_access()
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        **settings.kafka_security().client_kwargs(),
        group_id=None,
        enable_auto_commit=False,
    )
    try:
        try:
            await consumer.start()
        except KafkaError as exc:
            refused = await readiness.refusal(settings.kafka_bootstrap, settings.kafka_security())
            if refused is not None:
                raise ConfigError(refused) from None
            raise click.ClickException(
                f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}"
            ) from None
        partitions = await _partitions(consumer, name, settings.kafka_bootstrap)
        consumer.assign(partitions)
        if settings.tail_from_beginning:
            await consumer.seek_to_beginning(*partitions)
        else:
            await consumer.seek_to_end(*partitions)
        ends = None if settings.tail_follow else await consumer.end_offsets(partitions)
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        left = settings.tail_max
        while not stop.is_set() and left != 0 and not await _at_end(consumer, ends):
            batch = await consumer.getmany(timeout_ms=_POLL_MS, max_records=left)
            if not batch:
                if settings.tail_timeout and loop.time() - idle_since >= settings.tail_timeout:
                    return
                continue
            idle_since = loop.time()
            lines = [
                render(message, await _decode(serde, message.value))
                for messages in batch.values()
                for message in messages
            ]
            if left is not None:
                lines = lines[:left]
                left -= len(lines)
            if not _write(lines):
                return
    finally:
        await consumer.stop()
        await serde.close()


@click.command()
@click.argument("topic", required=False)
@click.option(
    "--latest", is_flag=True, default=False, help="Only new records (--no-from-beginning)."
)
@settings_options(TailSettings)
def tail(topic: str | None, latest: bool, **values: Any) -> None:
    """Print decoded records of TOPIC, one JSON object per line.

    TOPIC defaults to convai.monitor.events [env: CONVOSTREAM_TAIL_TOPIC]; the configured
    prefix is optional.

    Each line has _topic, _partition, _offset, _key (UTF-8; _key_base64 when not), _schema and
    _schema_id, then the record's fields. Timestamps are ISO-8601 UTC, bytes are base64, and a
    union record (MonitorEvent.payload) carries its record name in _record. A value that cannot
    be decoded is printed with _error and _value_base64 instead; tail never stops on one.
    """
    if topic is not None:
        values["tail_topic"] = topic
    if latest:
        values["tail_from_beginning"] = False
    settings = load_settings(TailSettings, values)
    try:
        entry = lookup(settings.tail_topic, settings.topic_prefix)
    except KeyError as exc:
        raise click.UsageError(str(exc.args[0])) from None
    runtime.setup(settings)
    runtime.run_until_signal(lambda stop: _tail(settings, entry, stop))
