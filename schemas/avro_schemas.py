"""The Avro schemas of the contract, loaded once from ``schemas/avro/*.avsc``.

Timestamps are ``int`` microseconds since the epoch (UTC) in every record, written and read:
the schemas declare ``timestamp-micros`` for other consumers, but the parsed copies used by the
serde drop logical types, so the hot path never builds ``datetime`` objects. Use
:mod:`schemas.clock` at the edges.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib import resources
from typing import Any, cast

from fastavro import parse_schema
from fastavro.schema import to_parsing_canonical_form

NAMESPACE = "convostream"

# Top-level record names, one .avsc file each; topics refer to them (schemas.topics).
SCHEMA_NAMES: tuple[str, ...] = (
    "MonitorEvent",
    "DeadLetter",
    "ConversationLifecycle",
    "ControlCommand",
    "CommandResult",
    "ConversationMetrics",
    "AgentWindowMetrics",
    "Alert",
    "RuleState",
    "PostCall",
)

TIMESTAMP_MICROS = "timestamp-micros"


@cache
def schema_text(name: str) -> str:
    """The ``.avsc`` text of a current schema (what a Schema Registry is given)."""
    if name not in SCHEMA_NAMES:
        raise KeyError(f"unknown schema {name!r}; known schemas: {', '.join(SCHEMA_NAMES)}")
    return (resources.files("schemas") / "avro" / f"{name}.avsc").read_text("utf-8")


def schema_json(name: str) -> dict[str, Any]:
    """A fresh copy of a current schema as JSON objects (safe to modify)."""
    loaded: dict[str, Any] = json.loads(schema_text(name))
    return loaded


def _without_logical_types(node: Any) -> Any:
    if isinstance(node, list):
        return [_without_logical_types(item) for item in node]
    if isinstance(node, dict):
        return {k: _without_logical_types(v) for k, v in node.items() if k != "logicalType"}
    return node


def wire_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Parse ``schema`` for the serde: same binary encoding, logical types left as plain ints."""
    return cast(dict[str, Any], parse_schema(_without_logical_types(schema)))


@cache
def parsed(name: str) -> dict[str, Any]:
    """The current schema ``name`` parsed for the serde (cached: parsing is slow)."""
    return wire_schema(schema_json(name))


def canonical_form(schema: dict[str, Any]) -> str:
    """Avro Parsing Canonical Form: what identifies a writer schema (no docs, defaults)."""
    return str(to_parsing_canonical_form(parse_schema(schema, _write_hint=False)))


def fingerprint_of(canonical: str) -> str:
    """SHA-256 (hex) of a canonical form, as pinned in ``schemas/registry.json``."""
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@cache
def fingerprint(name: str) -> str:
    """Fingerprint of the current schema ``name``."""
    return fingerprint_of(canonical_form(schema_json(name)))


def short_name(full_name: str) -> str:
    """``convostream.MonitorEvent`` -> ``MonitorEvent``; names of other namespaces stay full."""
    namespace, _, name = full_name.rpartition(".")
    return name if namespace == NAMESPACE else full_name


def _is_timestamp(node: Any) -> bool:
    if isinstance(node, list):
        return any(_is_timestamp(branch) for branch in node)
    return isinstance(node, dict) and node.get("logicalType") == TIMESTAMP_MICROS


@cache
def timestamp_fields(name: str) -> frozenset[str]:
    """Top-level fields of ``name`` that hold timestamp-micros (nullable or not)."""
    return frozenset(f["name"] for f in schema_json(name)["fields"] if _is_timestamp(f["type"]))
