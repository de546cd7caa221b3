"""Where schema ids come from: ids pinned in the repository, or a Confluent Schema Registry.

Both give the same wire format. Network work happens only in :meth:`SchemaRegistry.prepare`
(at start-up) and :meth:`SchemaRegistry.fetch` (the first time an unknown id is seen), so the
serde's ``encode``/``decode`` stay synchronous and CPU-only.

A component prepares only the schemas it writes. It registers them, or, in lookup-only mode,
finds their ids with GET requests alone (no registration rights needed); a component that only
reads prepares nothing and only ever GETs ids. A registry that cannot be reached or answers
5xx is retried with capped, jittered back-off (an outage delays records, it never turns them
into errors); only an answer that the registry does not know an id is final.

Pinned ids start at ``PINNED_ID_BASE``, far above the ids a registry hands out, so the
:class:`HttpSchemaRegistry` can keep reading data written before a registry was configured.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import ssl
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import structlog
from fastavro.schema import SchemaParseException, UnknownType
from pydantic import SecretStr
from yarl import URL

from schemas.avro_schemas import (
    SCHEMA_NAMES,
    canonical_form,
    fingerprint,
    fingerprint_of,
    schema_text,
    short_name,
)
from schemas.errors import EncodeError, RegistryError, UnknownSchemaId
from schemas.topics import CATALOGUE, Topic

PINNED_ID_BASE = 2_000_000_000
_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
_TRANSIENT_STATUS = frozenset({408, 429})  # and every 5xx

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class WriterSchema:
    """A schema some producer wrote with: its id, record name and JSON."""

    schema_id: int
    name: str
    schema: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Retry:
    """Back-off between attempts while a registry is unreachable (seconds).

    ``give_up_after`` None keeps trying: a consumer that cannot read its input must wait, not
    turn records into errors (a command would otherwise get a permanent ``rejected``).
    """

    first: float = 0.2
    cap: float = 10.0
    give_up_after: float | None = None

    def delays(self) -> Iterator[float]:
        """Jittered exponential delays, each at most ``cap``, until ``give_up_after``."""
        deadline = None if self.give_up_after is None else time.monotonic() + self.give_up_after
        delay = self.first
        while deadline is None or time.monotonic() < deadline:
            yield random.uniform(delay / 2, delay)
            delay = min(self.cap, delay * 2)


KEEP_TRYING = Retry()


@dataclass(frozen=True)
class RegistryAccess:
    """Credentials and trust for a registry: HTTP basic auth (a Confluent Cloud API key and
    secret, say) and a CA file for a registry whose certificate a private CA signed.

    Credentials may instead sit in the URL (``https://key:secret@host``); explicit ones win.
    """

    username: str | None = None
    password: SecretStr | None = None
    ca_file: Path | None = None

    def endpoint(self, url: str) -> tuple[URL, dict[str, str]]:
        """``url`` without credentials (safe to show), and the headers that authenticate."""
        parsed = URL(url)
        user, password = parsed.user, parsed.password
        if self.username is not None:
            user = self.username
            password = None if self.password is None else self.password.get_secret_value()
        headers = {}
        if user:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        return parsed.with_user(None).with_password(None), headers

    def ssl(self) -> ssl.SSLContext | bool:
        """aiohttp's ``ssl=``: verify against ``ca_file``, else against the system CAs."""
        if self.ca_file is None:
            return True
        return ssl.create_default_context(cafile=str(self.ca_file))


ANONYMOUS = RegistryAccess()


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
    the URL without them. ``lookup_only`` components never POST: :meth:`prepare` finds the ids
    of schemas someone else registered.
    """

    def __init__(
        self,
        url: str,
        *,
        pinned: PinnedRegistry | None = None,
        timeout: float = 10.0,
        lookup_only: bool = False,
        retry: Retry = KEEP_TRYING,
        access: RegistryAccess = ANONYMOUS,
    ) -> None:
        self._base, auth = access.endpoint(url)
        self._headers = {"Accept": _CONTENT_TYPE, **auth}
        self._ssl = access.ssl()
        self._pinned = pinned
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self.lookup_only = lookup_only
        self._retry = retry
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
                ssl=self._ssl,
            ) as response:
                text = await response.text()
                if response.status == 404:
                    return None
                if response.status >= 400:
                    raise RegistryError(
                        f"schema registry {self._base} answered {method} {path} with "
                        f"{response.status}: {_error_message(text)}",
                        retriable=response.status >= 500 or response.status in _TRANSIENT_STATUS,
                    )
                return json.loads(text)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RegistryError(
                f"schema registry {self._base} failed on {method} {path}: {exc!r}", retriable=True
            ) from None
        except ValueError as exc:
            raise RegistryError(
                f"schema registry {self._base} gave no JSON for {method} {path}: {exc}"
            ) from None

    async def _request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, *, always: bool
    ) -> Any:
        """:meth:`_call`, retried while the registry is unreachable (``always``: on any error).

        Start-up requests fail fast on a refusal (bad credentials are a configuration error);
        id look-ups while reading retry every failure, so records wait instead of failing.
        """
        delays = self._retry.delays()
        while True:
            try:
                return await self._call(method, path, body)
            except RegistryError as exc:
                if not (always or exc.retriable):
                    raise
                delay = next(delays, None)
                if delay is None:
                    raise
                log.warning("schema registry request failed; retrying", error=str(exc), delay=delay)
                await asyncio.sleep(delay)

    async def register(self, subject: str, name: str) -> int:
        """Register the current schema ``name`` under ``subject``; returns its id."""
        path = f"subjects/{subject}/versions"
        answer = await self._request("POST", path, {"schema": schema_text(name)}, always=False)
        if not isinstance(answer, dict) or not isinstance(answer.get("id"), int):
            raise RegistryError(f"schema registry {self._base}: no id in answer to POST {path}")
        return self._remember(name, answer["id"])

    async def lookup(self, subject: str, name: str) -> int:
        """The id of the current schema ``name`` among the versions of ``subject`` (GET only)."""
        versions = await self._request("GET", f"subjects/{subject}/versions", always=False)
        for version in sorted(versions or (), reverse=True):  # the newest matches, usually
            answer = await self._request(
                "GET", f"subjects/{subject}/versions/{version}", always=False
            )
            if isinstance(answer, dict) and _fingerprint(answer.get("schema")) == fingerprint(name):
                return self._remember(name, int(answer["id"]))
        raise RegistryError(
            f"schema {name!r} is not registered under {subject!r} at {self._base}; in lookup-only "
            "mode a component with registration rights (or an operator) must register it first"
        )

    def _remember(self, name: str, schema_id: int) -> int:
        self._ids[name] = schema_id
        self._by_id[schema_id] = WriterSchema(schema_id, name, json.loads(schema_text(name)))
        return schema_id

    async def prepare(self, topics: Iterable[Topic] = CATALOGUE, prefix: str = "") -> None:
        """Register (or, lookup-only, find) the value schema of every topic in ``topics``."""
        find = self.lookup if self.lookup_only else self.register
        for topic in topics:
            await find(f"{topic.full_name(prefix)}-value", topic.value_schema)

    def writer_id(self, name: str) -> int:
        try:
            return self._ids[name]
        except KeyError:
            known = name in SCHEMA_NAMES
            raise EncodeError(
                f"schema {name!r} is not prepared; await registry.prepare() with its topic first"
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
            answer = await self._request("GET", f"schemas/ids/{schema_id}", always=True)
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


def _fingerprint(text: Any) -> str | None:
    """The fingerprint of a schema given as JSON text, None when it is not one."""
    try:
        return fingerprint_of(canonical_form(json.loads(text)))
    except (TypeError, ValueError, KeyError, AttributeError, SchemaParseException, UnknownType):
        return None


def _error_message(text: str) -> str:
    try:
        return str(json.loads(text).get("message", text))
    except (ValueError, AttributeError):
        return text[:200]


def registry_from_settings(
    url: str | None,
    *,
    lookup_only: bool = False,
    retry: Retry = KEEP_TRYING,
    access: RegistryAccess = ANONYMOUS,
) -> SchemaRegistry:
    """The Schema Registry at ``url``, or the pinned ids when it is unset."""
    pinned = PinnedRegistry.load()
    if not url:
        return pinned
    return HttpSchemaRegistry(
        url, pinned=pinned, lookup_only=lookup_only, retry=retry, access=access
    )
