"""Schema evolution: current schemas read everything released or pinned before them, the checker
catches breaking edits, and the pinned ids match the schemas (``python -m schemas.pin``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from schemas import pin
from schemas.avro_schemas import (
    SCHEMA_NAMES,
    canonical_form,
    fingerprint,
    fingerprint_of,
    schema_json,
)
from schemas.compat import incompatibility
from schemas.registry import PINNED_ID_BASE, PinnedRegistry, load_pinned
from schemas.serde import Serde

RELEASED = Path(pin.__file__).with_name("released")
RELEASES = sorted(p.name for p in RELEASED.iterdir() if p.is_dir())


def _released(release: str) -> list[str]:
    """Schemas of a release (schemas added after it have no copy there)."""
    return sorted(p.stem for p in (RELEASED / release).glob("*.avsc"))


def test_every_released_schema_still_exists() -> None:
    assert RELEASES
    for release in RELEASES:
        assert set(_released(release)) <= set(SCHEMA_NAMES)
    assert set(_released(RELEASES[0])) >= {"MonitorEvent", "ConversationLifecycle"}


@pytest.mark.parametrize("release", RELEASES)
def test_current_schema_reads_released_data(release: str) -> None:
    for name in _released(release):
        released = json.loads((RELEASED / release / f"{name}.avsc").read_text("utf-8"))
        assert incompatibility(schema_json(name), released) is None, name


@pytest.mark.parametrize("release", RELEASES)
def test_released_schemas_are_pinned(release: str) -> None:
    """Data a release wrote with pinned ids must stay decodable."""
    pinned = {(v.name, v.fingerprint) for v in load_pinned()}
    for name in _released(release):
        released = json.loads((RELEASED / release / f"{name}.avsc").read_text("utf-8"))
        digest = fingerprint_of(canonical_form(released))
        assert (name, digest) in pinned, f"{release}/{name}.avsc has no pinned id"


def test_current_schema_reads_every_pinned_version() -> None:
    for version in load_pinned():
        writer = json.loads(version.canonical)
        assert incompatibility(schema_json(version.name), writer) is None, version


def test_pinned_registry_covers_every_schema_as_it_is_now() -> None:
    versions = load_pinned()
    PinnedRegistry(versions)  # ids unique, canonical forms match their fingerprints
    assert {v.name for v in versions} == set(SCHEMA_NAMES)
    assert all(v.schema_id > PINNED_ID_BASE for v in versions)
    for name in SCHEMA_NAMES:
        history = sorted(v.version for v in versions if v.name == name)
        assert history == list(range(1, len(history) + 1)), name
        latest = max((v for v in versions if v.name == name), key=lambda v: v.version)
        assert latest.fingerprint == fingerprint(name), (
            f"{name} changed since it was pinned: run `python -m schemas.pin` and commit "
            "schemas/registry.json"
        )
    assert pin.main(["--check"]) == 0


def test_pin_refuses_an_invalid_schema() -> None:
    edited = schema_json("DeadLetter")
    _fields(edited)[0]["type"] = "string"  # the default null no longer fits
    with pytest.raises(pin.PinError, match="DeadLetter: invalid schema: Default value"):
        pin.pin(load_pinned(), {"DeadLetter": edited})


# ---------------------------------------------------------------- the checks can fail


def _fields(schema: dict[str, Any]) -> list[dict[str, Any]]:
    fields: list[dict[str, Any]] = schema["fields"]
    return fields


def _add_required_field(schema: dict[str, Any]) -> None:
    _fields(schema).append({"name": "severity", "type": "int"})


def _change_field_type(schema: dict[str, Any]) -> None:
    next(f for f in _fields(schema) if f["name"] == "detail")["type"] = "long"


def _make_field_required(schema: dict[str, Any]) -> None:
    connection_id = next(f for f in _fields(schema) if f["name"] == "connection_id")
    connection_id["type"] = "string"
    del connection_id["default"]


def _drop_payload_branch(schema: dict[str, Any]) -> None:
    payload = next(f for f in _fields(schema) if f["name"] == "payload")
    payload["type"] = [b for b in payload["type"] if b["name"] != "InterruptionPayload"]


def _drop_enum_default(schema: dict[str, Any]) -> None:
    state = next(f for f in _fields(schema) if f["name"] == "state")["type"]
    del state["default"]
    state["symbols"].remove("gap")


BREAKING: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("DeadLetter", _add_required_field, "reader_field_missing_default_value"),
    ("DeadLetter", _change_field_type, "type_mismatch"),
    ("DeadLetter", _make_field_required, "type_mismatch"),
    ("MonitorEvent", _drop_payload_branch, "missing_union_branch"),
    ("ConversationLifecycle", _drop_enum_default, "missing_enum_symbols"),
]


@pytest.mark.parametrize(("name", "edit", "kind"), BREAKING, ids=[b[1].__name__ for b in BREAKING])
def test_checker_catches_breaking_edits(
    name: str, edit: Callable[[dict[str, Any]], None], kind: str
) -> None:
    edited = schema_json(name)
    edit(edited)
    problem = incompatibility(edited, schema_json(name))
    assert problem is not None
    assert kind in problem
    with pytest.raises(pin.PinError, match=f"{name}: data written with pinned v1"):
        pin.pin(load_pinned(), {name: edited})


def test_pin_gives_a_compatible_edit_a_new_id_and_keeps_the_old_one() -> None:
    edited = schema_json("DeadLetter")
    _fields(edited).append(
        {"name": "severity", "type": ["null", "int"], "default": None, "doc": "new"}
    )
    before = load_pinned()
    after, changes = pin.pin(
        before, {"DeadLetter": edited, "MonitorEvent": schema_json("MonitorEvent")}
    )
    new = after[-1]
    assert after[:-1] == before
    latest = max(v.version for v in before if v.name == "DeadLetter")
    assert (new.name, new.version) == ("DeadLetter", latest + 1)
    assert new.schema_id == max(v.schema_id for v in before) + 1
    assert changes == [f"DeadLetter: pinned v{latest + 1} as id {new.schema_id}"]
    old_id = next(v.schema_id for v in before if v.name == "DeadLetter")
    registry = PinnedRegistry(after)
    assert registry.known(old_id) is not None
    assert registry.known(new.schema_id) is not None
    # data written under the old id still decodes (here the current schema is the old one)
    record = {
        "conversation_id": None, "reason": "oversize", "detail": "", "raw": b"",
        "received_at": 0, "collector_id": "c", "connection_id": None, "connection_seq": None,
        "event_key": None,
    }  # fmt: skip
    data = Serde().encode("DeadLetter", record)
    assert Serde(registry).decode(data).record == record
