"""Avro values in the Confluent wire format: byte 0, 4-byte big-endian schema id, datum.

It sits on the hot path (tens of thousands of records per second), so everything per schema is
prepared once: the 5-byte header and parsed schema per name for writing, and the
(writer, reader) pair per schema id for reading. ``encode``/``decode`` never do I/O; an id the
registry has not seen yet is looked up once with ``await serde.resolve(data)``.

Records are plain dicts: timestamps are ``int`` microseconds (see ``schemas.avro_schemas``),
``bytes`` fields are ``bytes``, and the ``MonitorEvent.payload`` union is in fastavro tuple
notation ``(full record name, fields)``, as built by ``schemas.payloads.monitor_payload``.
Reading data written with an older schema version yields records of the current schema
(fields added since then get their defaults).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from io import BytesIO
from typing import Any, NamedTuple, cast

from fastavro import schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import SchemaParseException, UnknownType

from schemas.avro_schemas import (
    SCHEMA_NAMES,
    canonical_form,
    fingerprint,
    fingerprint_of,
    parsed,
    wire_schema,
)
from schemas.errors import (
    CorruptMessage,
    EncodeError,
    RegistryError,
    SerdeError,
    TruncatedMessage,
    UnknownMagicByte,
    UnknownSchemaId,
)
from schemas.registry import (
    ANONYMOUS,
    KEEP_TRYING,
    PinnedRegistry,
    RegistryAccess,
    Retry,
    SchemaRegistry,
    WriterSchema,
    registry_from_settings,
)
from schemas.topics import Topic

__all__ = [
    "CorruptMessage",
    "Decoded",
    "EncodeError",
    "RegistryError",
    "Serde",
    "SerdeError",
    "TruncatedMessage",
    "UnknownMagicByte",
    "UnknownSchemaId",
    "open_serde",
]

MAGIC = 0
HEADER_SIZE = 5


class Decoded(NamedTuple):
    """A decoded value: unpack as ``name, record, schema_id = serde.decode(data)``."""

    schema_name: str
    record: dict[str, Any]
    schema_id: int


# (schema name, writer schema, reader schema or None when the writer is the current schema)
_ReadPlan = tuple[str, dict[str, Any], dict[str, Any] | None]


class Serde:
    """Encoder/decoder bound to one registry; cheap to share between tasks of one process."""

    def __init__(self, registry: SchemaRegistry | None = None) -> None:
        self.registry: SchemaRegistry = registry if registry is not None else PinnedRegistry.load()
        self._writers: dict[str, tuple[bytes, dict[str, Any]]] = {}
        self._readers: dict[int, _ReadPlan] = {}

    def encode(self, schema_name: str, record: Mapping[str, Any]) -> bytes:
        """Wire-format bytes of ``record`` written with the current schema ``schema_name``."""
        writer = self._writers.get(schema_name)
        if writer is None:
            writer = self._writer(schema_name)
        header, schema = writer
        buf = BytesIO()
        buf.write(header)
        try:
            schemaless_writer(buf, schema, record)
        except (ValueError, TypeError, AttributeError, KeyError, OverflowError) as exc:
            raise EncodeError(f"record does not fit schema {schema_name}: {exc}") from exc
        return buf.getvalue()

    def _writer(self, schema_name: str) -> tuple[bytes, dict[str, Any]]:
        if schema_name not in SCHEMA_NAMES:
            known = ", ".join(SCHEMA_NAMES)
            raise EncodeError(f"unknown schema {schema_name!r}; known schemas: {known}")
        schema_id = self.registry.writer_id(schema_name)
        writer = (bytes([MAGIC]) + schema_id.to_bytes(4, "big"), parsed(schema_name))
        self._writers[schema_name] = writer
        return writer

    def decode(self, data: bytes) -> Decoded:
        """Decode wire-format bytes; raises a :class:`SerdeError` subclass saying why not."""
        if not data:
            raise TruncatedMessage("empty value: expected a 5-byte Confluent header and a datum")
        if data[0] != MAGIC:
            raise UnknownMagicByte(
                f"magic byte 0x{data[0]:02x} found, expected 0x00 (Confluent wire format); "
                f"value starts with {data[:16]!r}"
            )
        if len(data) < HEADER_SIZE:
            raise TruncatedMessage(
                f"{len(data)} bytes: expected at least {HEADER_SIZE} (magic byte and schema id)"
            )
        schema_id = int.from_bytes(data[1:HEADER_SIZE], "big")
        plan = self._readers.get(schema_id)
        if plan is None:
            plan = self._plan(schema_id)
        name, writer, reader = plan
        buf = BytesIO(data)
        buf.seek(HEADER_SIZE)
        try:
            record = cast(  # every writer schema is a record (the registries ensure it)
                dict[str, Any], schemaless_reader(buf, writer, reader, return_record_name=True)
            )
        except EOFError:
            raise TruncatedMessage(
                f"{name} datum (schema id {schema_id}) ends early: {len(data)} bytes in all"
            ) from None
        except (SchemaResolutionError, ValueError, IndexError, TypeError) as exc:
            raise CorruptMessage(
                f"bytes do not match {name} (schema id {schema_id}): {exc}"
            ) from None
        extra = len(data) - buf.tell()
        if extra:
            raise CorruptMessage(
                f"{extra} bytes left after the {name} datum (schema id {schema_id}): expected "
                "none; the value was written with another schema than its id says"
            )
        return Decoded(name, record, schema_id)

    def _plan(self, schema_id: int) -> _ReadPlan:
        found = self.registry.known(schema_id)
        if found is None:
            raise UnknownSchemaId(
                schema_id, "not seen yet; `await serde.resolve(data)` looks it up"
            )
        plan = _read_plan(found)
        self._readers[schema_id] = plan
        return plan

    async def resolve(self, data: bytes) -> Decoded:
        """Like :meth:`decode`, but first fetches a writer schema the registry has not seen."""
        try:
            return self.decode(data)
        except UnknownSchemaId as exc:
            await self.registry.fetch(exc.schema_id)
            return self.decode(data)

    def is_current(self, schema_id: int, schema_name: str) -> bool:
        """True when ``schema_id`` (already decoded once) is exactly the current ``schema_name``:
        its data can then be read field by field in the current schema's layout."""
        plan = self._readers.get(schema_id)
        return plan is not None and plan[0] == schema_name and plan[2] is None

    async def close(self) -> None:
        await self.registry.close()

    async def __aenter__(self) -> Serde:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def open_serde(
    url: str | None,
    writes: Iterable[Topic] = (),
    prefix: str = "",
    *,
    lookup_only: bool = False,
    retry: Retry = KEEP_TRYING,
    access: RegistryAccess = ANONYMOUS,
) -> Serde:
    """The serde of one component: pinned ids when ``url`` is unset, else the registry at ``url``
    with the value schemas of the topics it ``writes`` registered (or, ``lookup_only``, looked
    up). Every component builds its serde here, so each resolves ids the same way; one that
    only reads passes no topics and never writes to the registry. Close it with ``close()``.
    """
    serde = Serde(registry_from_settings(url, lookup_only=lookup_only, retry=retry, access=access))
    try:
        await serde.registry.prepare(writes, prefix)
    except BaseException:
        await serde.close()
        raise
    return serde


def _read_plan(found: WriterSchema) -> _ReadPlan:
    try:
        writer = wire_schema(found.schema)
        canonical = canonical_form(found.schema)
    except (SchemaParseException, UnknownType, ValueError, TypeError, KeyError) as exc:
        raise RegistryError(f"schema id {found.schema_id} cannot be parsed: {exc}") from None
    if found.name not in SCHEMA_NAMES:  # not ours (tail can still show it): read as written
        return found.name, writer, None
    if fingerprint_of(canonical) == fingerprint(found.name):
        return found.name, parsed(found.name), None
    return found.name, writer, parsed(found.name)
