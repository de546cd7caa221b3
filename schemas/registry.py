"""Where schema ids come from: ids pinned in the repository, or a Confluent Schema Registry.

Both give the same wire format. Network work happens only in :meth:`SchemaRegistry.prepare`
(at start-up) and :meth:`SchemaRegistry.fetch` (the first time an unknown id is seen), so the
serde's ``encode``/``decode`` stay synchronous and CPU-only.

Pinned ids start at ``PINNED_ID_BASE``, far above the ids a registry hands out, so the
:class:`HttpSchemaRegistry` can keep reading data written before a registry was configured.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

import aiohttp
from yarl import URL

from schemas.avro_schemas import SCHEMA_NAMES, fingerprint, fingerprint_of, schema_text, short_name
from schemas.errors import EncodeError, RegistryError, UnknownSchemaId
from schemas.topics import CATALOGUE, Topic

PINNED_ID_BASE = 2_000_000_000
_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


@dataclass(frozen=True, slots=True)
class WriterSchema:
    """A schema some producer wrote with: its id, record name and JSON."""

    schema_id: int
    name: str
    schema: dict[str, Any]


class SchemaRegistry(Protocol):
    """What the serde needs from a registry."""

    async def prepare(self, topics: Iterable[Topic] = CATALOGUE, prefix: str = "") -> None:
        """Make the ids of the topics' current value schemas available to :meth:`writer_id`."""

    def writer_id(self, name: str) -> int:
        """The id to write the current schema ``name`` with."""

    def known(self, schema_id: int) -> WriterSchema | None:
        """The writer schema of ``schema_id`` if already known, without I/O."""

    async def fetch(self, schema_id: int) -> WriterSchema:
        """Look ``schema_id`` up (raises UnknownSchemaId); afterwards :meth:`known` has it."""

    async def close(self) -> None:
        """Release connections."""


@dataclass(frozen=True, slots=True)
class PinnedVersion:
    """One entry of ``schemas/registry.json``."""

    name: str
    version: int
    schema_id: int
    fingerprint: str
    canonical: str

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "id": self.schema_id,
            "fingerprint": self.fingerprint,
            "canonical": self.canonical,
        }


def load_pinned(text: str | None = None) -> list[PinnedVersion]:
    """Entries of ``schemas/registry.json`` (or of ``text`` in that format)."""
    if text is None:
        text = (resources.files("schemas") / "registry.json").read_text("utf-8")
    data: dict[str, list[dict[str, Any]]] = json.loads(text)
    return [
        PinnedVersion(name, e["version"], e["id"], e["fingerprint"], e["canonical"])
        for name, entries in data.items()
        for e in entries
    ]


def dump_pinned(versions: Iterable[PinnedVersion]) -> str:
    """The ``registry.json`` text for ``versions`` (stable order, one entry per line)."""
    by_name: dict[str, list[PinnedVersion]] = {}
    for v in sorted(versions, key=lambda v: (v.name, v.version)):
        by_name.setdefault(v.name, []).append(v)
    blocks = []
    for name, entries in by_name.items():
        lines = ",\n".join(f"    {json.dumps(e.to_json())}" for e in entries)
        blocks.append(f"  {json.dumps(name)}: [\n{lines}\n  ]")
    return "{\n" + ",\n".join(blocks) + "\n}\n"


class PinnedRegistry:
    """Ids pinned in ``schemas/registry.json``: no server, every old version stays decodable.

    A schema edited without re-pinning cannot be written (``python -m schemas.pin`` assigns the
    new version an id), so one id never stands for two different schemas.
    """

    def __init__(self, versions: Iterable[PinnedVersion]) -> None:
        self._by_id: dict[int, WriterSchema] = {}
        self._latest: dict[str, PinnedVersion] = {}
        for v in versions:
            if v.schema_id in self._by_id:
                raise ValueError(f"pinned schema id {v.schema_id} is used twice")
            if fingerprint_of(v.canonical) != v.fingerprint:
                raise ValueError(
                    f"pinned {v.name} v{v.version}: canonical form and fingerprint differ"
                )
            self._by_id[v.schema_id] = WriterSchema(v.schema_id, v.name, json.loads(v.canonical))
            if v.name not in self._latest or v.version > self._latest[v.name].version:
                self._latest[v.name] = v

    @classmethod
    def load(cls) -> PinnedRegistry:
        """The registry of the committed ``schemas/registry.json``."""
        return cls(load_pinned())

    async def prepare(self, topics: Iterable[Topic] = CATALOGUE, prefix: str = "") -> None:
        """Nothing to do: pinned ids are known without I/O."""

    def writer_id(self, name: str) -> int:
        latest = self._latest.get(name)
        if latest is None:
            raise EncodeError(f"schema {name!r} has no pinned id; run `python -m schemas.pin`")
        if latest.fingerprint != fingerprint(name):
            raise EncodeError(
                f"schema {name!r} changed since it was pinned (v{latest.version}, id "
                f"{latest.schema_id}); run `python -m schemas.pin` to give the new version an id"
            )
        return latest.schema_id

    def known(self, schema_id: int) -> WriterSchema | None:
        return self._by_id.get(schema_id)

    async def fetch(self, schema_id: int) -> WriterSchema:
        found = self._by_id.get(schema_id)
        if found is None:
            raise UnknownSchemaId(
                schema_id,
                "not pinned in schemas/registry.json; data written through a Schema Registry "
                "needs CONVOSTREAM_SCHEMA_REGISTRY_URL",
            )
        return found

    async def close(self) -> None:
        """Nothing to release."""


class HttpSchemaRegistry:
    """A Confluent-compatible Schema Registry, subjects named ``<topic>-value``.

    Credentials may be given in the URL (``https://key:secret@host``); messages only ever show
    the URL without them.
    """

    def __init__(
        self, url: str, *, pinned: PinnedRegistry | None = None, timeout: float = 10.0
    ) -> None:
        parsed = URL(url)
        self._base = parsed.with_user(None).with_password(None)
        self._headers = {"Accept": _CONTENT_TYPE}
        if parsed.user:  # basic auth (Confluent Cloud: API key and secret)
            token = base64.b64encode(f"{parsed.user}:{parsed.password or ''}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._pinned = pinned
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._ids: dict[str, int] = {}
        self._by_id: dict[int, WriterSchema] = {}
        self._lock = asyncio.Lock()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        return self._session

    async def _call(self, method: str, path: str, body: Mapping[str, Any] | None) -> Any:
        url = self._base / path.lstrip("/")
        try:
            async with self._client().request(
                method,
                url,
                data=None if body is None else json.dumps(body),
                headers=None if body is None else {"Content-Type": _CONTENT_TYPE},
            ) as response:
                text = await response.text()
                if response.status == 404:
                    return None
                if response.status >= 400:
                    raise RegistryError(
                        f"schema registry {self._base} answered {method} {path} with "
                        f"{response.status}: {_error_message(text)}"
                    )
                return json.loads(text)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise RegistryError(
                f"schema registry {self._base} failed on {method} {path}: {exc!r}"
            ) from None

    async def register(self, subject: str, name: str) -> int:
        """Register the current schema ``name`` under ``subject``; returns its id."""
        path = f"subjects/{subject}/versions"
        answer = await self._call("POST", path, {"schema": schema_text(name)})
        if not isinstance(answer, dict) or not isinstance(answer.get("id"), int):
            raise RegistryError(f"schema registry {self._base}: no id in answer to POST {path}")
        schema_id: int = answer["id"]
        self._ids[name] = schema_id
        self._by_id[schema_id] = WriterSchema(schema_id, name, json.loads(schema_text(name)))
        return schema_id

    async def prepare(self, topics: Iterable[Topic] = CATALOGUE, prefix: str = "") -> None:
        """Register the value schema of every topic (idempotent: same schema, same id)."""
        for topic in topics:
            await self.register(f"{topic.full_name(prefix)}-value", topic.value_schema)

    def writer_id(self, name: str) -> int:
        try:
            return self._ids[name]
        except KeyError:
            known = name in SCHEMA_NAMES
            raise EncodeError(
                f"schema {name!r} is not registered yet; await registry.prepare() first"
                if known
                else f"unknown schema {name!r}; known schemas: {', '.join(SCHEMA_NAMES)}"
            ) from None

    def known(self, schema_id: int) -> WriterSchema | None:
        found = self._by_id.get(schema_id)
        if found is None and self._pinned is not None:
            found = self._pinned.known(schema_id)
        return found

    async def fetch(self, schema_id: int) -> WriterSchema:
        async with self._lock:  # one request per id, however many consumers wait for it
            found = self.known(schema_id)
            if found is not None:
                return found
            answer = await self._call("GET", f"schemas/ids/{schema_id}", None)
            if answer is None:
                raise UnknownSchemaId(schema_id, f"schema registry {self._base} does not know it")
            kind = answer.get("schemaType", "AVRO") if isinstance(answer, dict) else None
            if kind != "AVRO":
                raise UnknownSchemaId(schema_id, f"registry gave a {kind} schema, expected AVRO")
            try:
                schema = json.loads(answer["schema"])
            except (KeyError, TypeError, ValueError):
                schema = None
            if not isinstance(schema, dict) or schema.get("type") != "record":
                raise UnknownSchemaId(schema_id, "registry gave no Avro record schema for it")
            found = WriterSchema(schema_id, short_name(str(schema.get("name"))), schema)
            self._by_id[schema_id] = found
            return found

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _error_message(text: str) -> str:
    try:
        return str(json.loads(text).get("message", text))
    except (ValueError, AttributeError):
        return text[:200]


def registry_from_settings(url: str | None) -> SchemaRegistry:
    """The Schema Registry at ``url``, or the pinned ids when it is unset."""
    pinned = PinnedRegistry.load()
    return HttpSchemaRegistry(url, pinned=pinned) if url else pinned
