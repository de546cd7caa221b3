"""The Avro serde: every record and payload round-trips, bad bytes fail clearly, and both
registries (pinned ids and a real Confluent-compatible HTTP registry) give working ids."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Mapping
from io import BytesIO
from typing import Any, Literal, get_args, get_origin, get_type_hints

import pytest
from fastavro import parse_schema, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.avro_schemas import (
    SCHEMA_NAMES,
    canonical_form,
    fingerprint_of,
    parsed,
    schema_json,
)
from schemas.clock import micros_to_iso, to_micros
from schemas.payloads import PAYLOAD_KEYS, PAYLOAD_RECORDS, RAW_PAYLOAD, monitor_payload
from schemas.records import RECORDS
from schemas.registry import (
    HttpSchemaRegistry,
    PinnedRegistry,
    PinnedVersion,
    Retry,
    load_pinned,
    registry_from_settings,
)
from schemas.serde import (
    CorruptMessage,
    EncodeError,
    RegistryError,
    Serde,
    TruncatedMessage,
    UnknownMagicByte,
    UnknownSchemaId,
    open_serde,
)
from schemas.topics import CATALOGUE
from tests.registry_server import FakeRegistry, fake_registry_server

EXAMPLES = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- strategies from the schemas

_PRIMITIVES: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "int": st.integers(-(2**31), 2**31 - 1),
    "long": st.integers(-(2**63), 2**63 - 1),
    "float": st.floats(width=32, allow_nan=False),
    "double": st.floats(allow_nan=False),
    "string": st.text(max_size=20),
    "bytes": st.binary(max_size=20),
}


def _is_record(schema: Any) -> bool:
    return isinstance(schema, dict) and schema["type"] == "record"


def values_of(schema: Any) -> st.SearchStrategy[Any]:
    """Values of a parsed schema as the serde takes them (record union branches as tuples)."""
    if isinstance(schema, list):
        return st.one_of(
            [
                st.tuples(st.just(b["name"]), values_of(b)) if _is_record(b) else values_of(b)
                for b in schema
            ]
        )
    kind = schema if isinstance(schema, str) else schema["type"]
    if kind in _PRIMITIVES:
        return _PRIMITIVES[kind]
    if kind == "record":
        return st.fixed_dictionaries({f["name"]: values_of(f["type"]) for f in schema["fields"]})
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(values_of(schema["items"]), max_size=3)
    if kind == "map":
        return st.dictionaries(st.text(max_size=8), values_of(schema["values"]), max_size=3)
    raise AssertionError(f"no strategy for {schema!r}")


def _payload_branches() -> dict[str, dict[str, Any]]:
    payload = next(f for f in parsed("MonitorEvent")["fields"] if f["name"] == "payload")
    return {b["name"]: b for b in payload["type"]}


PAYLOAD_BRANCHES = _payload_branches()
SERDE = Serde()


def monitor_events(branch: str) -> st.SearchStrategy[dict[str, Any]]:
    fields = {
        f["name"]: values_of(f["type"])
        for f in parsed("MonitorEvent")["fields"]
        if f["name"] != "payload"
    }
    fields["payload"] = st.tuples(st.just(branch), values_of(PAYLOAD_BRANCHES[branch]))
    return st.fixed_dictionaries(fields)


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", SCHEMA_NAMES)
@EXAMPLES
@given(data=st.data())
def test_every_record_type_round_trips(name: str, data: st.DataObject) -> None:
    record = data.draw(values_of(parsed(name)))
    drawn = copy.deepcopy(record)  # the input as drawn, whatever encode does to its argument
    encoded = SERDE.encode(name, record)
    assert encoded[0] == 0
    assert SERDE.decode(encoded) == (name, drawn, SERDE.registry.writer_id(name))


@pytest.mark.parametrize("branch", sorted(PAYLOAD_BRANCHES))
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_every_payload_variant_round_trips(branch: str, data: st.DataObject) -> None:
    event = data.draw(monitor_events(branch))
    drawn = copy.deepcopy(event)
    name, record, _ = SERDE.decode(SERDE.encode("MonitorEvent", event))
    assert (name, record) == ("MonitorEvent", drawn)
    assert record["payload"][0] == branch


def test_every_upstream_type_has_a_payload_record() -> None:
    upstream = {
        "conversation_initiation_metadata", "asr_initiation_metadata", "user_transcript",
        "tentative_user_transcript", "agent_response", "agent_response_correction",
        "agent_chat_response_part", "agent_response_metadata", "agent_response_complete",
        "interruption", "internal_tentative_agent_response", "client_tool_call",
        "agent_tool_request", "agent_tool_response", "agent_tool_response_full_payload",
        "mcp_tool_call", "mcp_connection_status", "context_usage", "guardrail_triggered",
        "client_error", "dtmf_request", "error", "agent_reasoning_response_part", "rich_content",
        "agent_typing", "external_agent_connected", "external_agent_disconnected", "queue_status",
    }  # fmt: skip
    assert set(PAYLOAD_RECORDS) == upstream
    assert set(PAYLOAD_RECORDS.values()) | {RAW_PAYLOAD} == set(PAYLOAD_BRANCHES)


# ---------------------------------------------------------------- payloads from upstream frames

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_JSON_OBJECT = st.dictionaries(st.text(max_size=5), _JSON, max_size=3)


def _body_of(schema: Any) -> st.SearchStrategy[Any]:
    """Well-formed upstream payload objects for a payload record (JSON fields as objects)."""
    if isinstance(schema, list):
        return st.none() | _body_of(schema[1])
    kind = schema if isinstance(schema, str) else schema["type"]
    if kind == "array":
        return st.lists(_body_of(schema["items"]), max_size=3)
    if kind == "record":
        fields = {f["name"]: _body_of(f["type"]) for f in schema["fields"]}
        for name in ("parameters", "metadata"):
            if name in fields:
                fields[name] = _JSON_OBJECT
        if "result" in fields:
            fields["result"] = st.none() | st.lists(_JSON_OBJECT, max_size=2)
        return st.fixed_dictionaries(fields)
    return _PRIMITIVES[kind]


def _event(event_type: str, frame: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "event_key": "k", "conversation_id": "c", "agent_id": None, "type": event_type,
        "upstream_event_id": None, "received_at": 0, "collector_id": "col",
        "connection_id": "conn", "connection_seq": 0, "replay": False,
        "raw": json.dumps(frame), "payload": monitor_payload(event_type, frame),
    }  # fmt: skip


@pytest.mark.parametrize("event_type", sorted(PAYLOAD_KEYS))
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_documented_frames_get_their_typed_payload(event_type: str, data: st.DataObject) -> None:
    record_name = PAYLOAD_RECORDS[event_type]
    if event_type == "asr_initiation_metadata":  # contents unspecified: any object
        body = data.draw(_JSON_OBJECT)
    else:
        body = data.draw(_body_of(PAYLOAD_BRANCHES[record_name]))
    frame = {"type": event_type, PAYLOAD_KEYS[event_type]: body}
    name, fields = monitor_payload(event_type, frame)
    assert name == record_name
    for key in ("parameters", "metadata", "result"):
        if key in fields and fields[key] is not None:
            assert json.loads(fields[key]) == body.get(key, body)
    SERDE.encode("MonitorEvent", _event(event_type, frame))


@settings(max_examples=100, deadline=None)
@given(
    event_type=st.sampled_from([*PAYLOAD_RECORDS, "brand_new_type"]),
    rest=st.dictionaries(
        st.sampled_from([*PAYLOAD_KEYS.values(), "event_id", "x"]), _JSON, max_size=3
    ),
)
def test_any_frame_gets_an_encodable_payload(event_type: str, rest: dict[str, Any]) -> None:
    frame = {"type": event_type, **rest}
    name, fields = monitor_payload(event_type, frame)
    assert name in PAYLOAD_BRANCHES
    if name == RAW_PAYLOAD:
        assert json.loads(fields["data"]) == json.loads(json.dumps(rest))
        assert fields["reason"]
    SERDE.encode("MonitorEvent", _event(event_type, frame))


@pytest.mark.parametrize(
    ("frame", "record", "fields"),
    [
        (
            {"type": "user_transcript", "user_transcription_event": {"user_transcript": "Hi"}},
            "UserTranscriptPayload",
            {"user_transcript": "Hi", "event_id": None},  # old frames without event_id
        ),
        (
            {"type": "interruption", "interruption_event": {"event_id": 7}},
            "InterruptionPayload",
            {"event_id": 7},
        ),
        (
            {"type": "dtmf_request", "dtmf_request_event": {"digits": "12", "event_id": 9}},
            "DtmfRequestPayload",
            {"event_id": 9, "data": '{"dtmf_request_event":{"digits":"12","event_id":9}}'},
        ),
        (
            {"type": "agent_response", "agent_response_event": {"agent_response": 3}},
            "RawPayload",
            {
                "type": "agent_response",
                "data": '{"agent_response_event":{"agent_response":3}}',
                "reason": "agent_response_event.agent_response: expected string, found int",
            },
        ),
        (
            {"type": "interruption"},
            "RawPayload",
            {
                "type": "interruption",
                "data": "{}",
                "reason": "interruption_event: expected object, missing",
            },
        ),
        (
            {"type": "ping_v2", "ping_event": {"n": 2**70}},
            "RawPayload",
            {
                "type": "ping_v2",
                "data": '{"ping_event":{"n":1180591620717411303424}}',
                "reason": "unknown_type",
            },
        ),
    ],
)  # fmt: skip
def test_payload_examples(frame: dict[str, Any], record: str, fields: dict[str, Any]) -> None:
    assert monitor_payload(frame["type"], frame) == (f"convostream.{record}", fields)


# ---------------------------------------------------------------- errors


def _sample_dead_letter() -> dict[str, Any]:
    return {
        "conversation_id": None, "reason": "invalid_utf8", "detail": "byte 0xff at 0",
        "raw": b"\xff\x00", "received_at": 1_700_000_000_000_000, "collector_id": "col",
        "connection_id": None, "connection_seq": None, "event_key": None,
    }  # fmt: skip


def test_bad_magic_byte_says_what_was_found() -> None:
    with pytest.raises(UnknownMagicByte, match=r"magic byte 0x7b found, expected 0x00"):
        SERDE.decode(b'{"type": "user_transcript"}')


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x77\x35"])
def test_short_header_is_truncated(data: bytes) -> None:
    with pytest.raises(TruncatedMessage, match="expected"):
        SERDE.decode(data)


def test_truncated_datum() -> None:
    encoded = SERDE.encode("DeadLetter", _sample_dead_letter())
    with pytest.raises(TruncatedMessage, match=r"DeadLetter datum .* ends early"):
        SERDE.decode(encoded[:-3])


def test_trailing_bytes_are_corrupt() -> None:
    encoded = SERDE.encode("DeadLetter", _sample_dead_letter())
    with pytest.raises(CorruptMessage, match="2 bytes left after the DeadLetter datum"):
        SERDE.decode(encoded + b"\x00\x00")


async def test_unknown_id_is_reported_with_a_hint() -> None:
    data = b"\x00" + (12345).to_bytes(4, "big") + b"\x00"
    with pytest.raises(UnknownSchemaId, match="unknown schema id 12345: not seen yet"):
        SERDE.decode(data)
    with pytest.raises(UnknownSchemaId, match="CONVOSTREAM_SCHEMA_REGISTRY_URL") as info:
        await SERDE.resolve(data)
    assert info.value.schema_id == 12345


def test_records_that_do_not_fit_are_refused() -> None:
    with pytest.raises(EncodeError, match="does not fit schema DeadLetter"):
        SERDE.encode("DeadLetter", {**_sample_dead_letter(), "received_at": "yesterday"})
    with pytest.raises(EncodeError, match="unknown schema 'Nope'"):
        SERDE.encode("Nope", {})


# ---------------------------------------------------------------- evolution with pinned ids


def _pinned(name: str, version: int, schema_id: int, schema: dict[str, Any]) -> PinnedVersion:
    canonical = canonical_form(schema)
    return PinnedVersion(name, version, schema_id, fingerprint_of(canonical), canonical)


LATER_LETTER_FIELDS = {"connection_seq": None, "event_key": None}  # with their defaults


def _old_dead_letter_schema() -> dict[str, Any]:
    """DeadLetter before connection_seq (and event_key, added after it) existed."""
    schema = schema_json("DeadLetter")
    schema["fields"] = [f for f in schema["fields"] if f["name"] not in LATER_LETTER_FIELDS]
    return schema


def _write(schema: dict[str, Any], schema_id: int, record: Mapping[str, Any]) -> bytes:
    buf = BytesIO()
    buf.write(b"\x00" + schema_id.to_bytes(4, "big"))
    schemaless_writer(buf, parse_schema(schema), record)
    return buf.getvalue()


def test_data_of_an_older_version_reads_as_the_current_schema() -> None:
    old_lifecycle = schema_json("ConversationLifecycle")
    old_lifecycle["fields"][2]["type"]["symbols"].append("paused")  # a state since removed
    registry = PinnedRegistry(
        [
            *load_pinned(),
            _pinned("DeadLetter", 0, 7, _old_dead_letter_schema()),
            _pinned("ConversationLifecycle", 0, 8, old_lifecycle),
        ]
    )
    serde = Serde(registry)
    old = {k: v for k, v in _sample_dead_letter().items() if k not in LATER_LETTER_FIELDS}
    decoded = serde.decode(_write(_old_dead_letter_schema(), 7, old))
    assert decoded == ("DeadLetter", {**old, **LATER_LETTER_FIELDS}, 7)
    lifecycle = {"conversation_id": "c", "state": "paused", "at": 1, "source": "rest"}
    _, record, _ = serde.decode(_write(old_lifecycle, 8, lifecycle))
    assert record["state"] == "unknown"  # the enum default catches symbols a reader lacks


def test_a_schema_edited_without_repinning_cannot_be_written() -> None:
    stale = [v for v in load_pinned() if v.name != "DeadLetter"]
    stale.append(_pinned("DeadLetter", 1, 99, _old_dead_letter_schema()))
    with pytest.raises(EncodeError, match=r"changed since it was pinned .* schemas\.pin"):
        Serde(PinnedRegistry(stale)).encode("DeadLetter", _sample_dead_letter())


def test_timestamps_are_int_micros() -> None:
    from datetime import UTC, datetime

    moment = datetime(2026, 11, 21, 6, 8, 0, 123456, tzinfo=UTC)
    assert micros_to_iso(to_micros(moment)) == "2026-11-21T06:08:00.123456Z"
    _, record, _ = SERDE.decode(SERDE.encode("DeadLetter", _sample_dead_letter()))
    assert record["received_at"] == 1_700_000_000_000_000


# ---------------------------------------------------------------- a Confluent-compatible registry


@pytest.fixture
async def fake_registry() -> AsyncIterator[tuple[FakeRegistry, str]]:
    async with fake_registry_server() as served:
        yield served


async def test_http_registry_registers_and_fetches_lazily(
    fake_registry: tuple[FakeRegistry, str],
) -> None:
    fake, url = fake_registry
    producer_registry = registry_from_settings(url)
    assert isinstance(producer_registry, HttpSchemaRegistry)
    try:
        await producer_registry.prepare(prefix="p.")
        assert set(fake.subjects) == {f"p.{t.name}-value" for t in CATALOGUE}
        assert (
            fake.subjects["p.convai.monitor.events-value"]
            == fake.subjects["p.convai.events.late-value"]
        )
        ids = {name: producer_registry.writer_id(name) for name in SCHEMA_NAMES}
        assert sorted(ids.values()) == list(range(1, len(SCHEMA_NAMES) + 1))
        data = Serde(producer_registry).encode("DeadLetter", _sample_dead_letter())
    finally:
        await producer_registry.close()
    assert data[1:5] == ids["DeadLetter"].to_bytes(4, "big")

    consumer_registry = HttpSchemaRegistry(url)  # knows nothing yet
    serde = Serde(consumer_registry)
    try:
        with pytest.raises(UnknownSchemaId):
            serde.decode(data)
        assert await serde.resolve(data) == ("DeadLetter", _sample_dead_letter(), ids["DeadLetter"])
        assert serde.decode(data).record == _sample_dead_letter()  # cached: no I/O any more
        assert fake.gets == [ids["DeadLetter"]]

        old_id = fake.add("old-value", json.dumps(_old_dead_letter_schema()))
        old = {k: v for k, v in _sample_dead_letter().items() if k not in LATER_LETTER_FIELDS}
        decoded = await serde.resolve(_write(_old_dead_letter_schema(), old_id, old))
        assert decoded == ("DeadLetter", {**old, **LATER_LETTER_FIELDS}, old_id)

        with pytest.raises(UnknownSchemaId, match="does not know it"):
            await serde.resolve(b"\x00" + (999).to_bytes(4, "big"))
    finally:
        await consumer_registry.close()


async def test_http_registry_still_reads_pinned_ids(
    fake_registry: tuple[FakeRegistry, str],
) -> None:
    _, url = fake_registry
    registry = registry_from_settings(url)
    try:
        data = Serde().encode("DeadLetter", _sample_dead_letter())  # written without a registry
        assert (await Serde(registry).resolve(data)).record == _sample_dead_letter()
    finally:
        await registry.close()


async def test_http_registry_errors_hide_credentials(
    fake_registry: tuple[FakeRegistry, str],
) -> None:
    _, url = fake_registry
    wrong = HttpSchemaRegistry(url.replace("password", "secret-pw"))
    try:
        with pytest.raises(RegistryError, match=r"answered POST .* with 401: Unauthorized") as info:
            await wrong.prepare()
        assert "secret-pw" not in str(info.value)
        assert not info.value.retriable  # a refusal: start-up fails fast
    finally:
        await wrong.close()
    with pytest.raises(EncodeError, match="not prepared"):
        Serde(HttpSchemaRegistry(url)).encode("DeadLetter", _sample_dead_letter())


FAST = Retry(first=0.01, cap=0.05)


async def test_lookup_only_components_never_post(
    fake_registry: tuple[FakeRegistry, str],
) -> None:
    """A lookup-only writer finds its ids by GET; a reader prepares nothing and GETs ids."""
    fake, url = fake_registry
    topics = [t for t in CATALOGUE if t.value_schema == "DeadLetter"]
    with pytest.raises(RegistryError, match="not registered under"):
        await open_serde(url, topics, "p.", lookup_only=True)
    assert set(fake.methods) == {"GET"}
    fake.add("p.convai.monitor.dlq-value", '{"type": "string"}')  # an older version
    writer = await open_serde(url, topics, "p.")  # registers: the new version gets an id
    fake.methods.clear()
    looker = await open_serde(url, topics, "p.", lookup_only=True)
    reader = await open_serde(url)
    try:
        assert looker.registry.writer_id("DeadLetter") == writer.registry.writer_id("DeadLetter")
        data = looker.encode("DeadLetter", _sample_dead_letter())
        assert (await reader.resolve(data)).record == _sample_dead_letter()
        assert set(fake.methods) == {"GET"}
    finally:
        for serde in (writer, looker, reader):
            await serde.close()


async def test_registry_outage_is_waited_out(fake_registry: tuple[FakeRegistry, str]) -> None:
    """5xx answers are retried with back-off (start-up and look-ups); only 'unknown id' and,
    at start-up, a refusal are final."""
    fake, url = fake_registry
    fake.outage = 3
    writer = await open_serde(url, CATALOGUE, retry=FAST)
    data = writer.encode("DeadLetter", _sample_dead_letter())
    await writer.close()
    fake.outage = 4
    reader = await open_serde(url, retry=FAST)
    try:
        assert (await reader.resolve(data)).record == _sample_dead_letter()
        assert fake.outage == 0
        with pytest.raises(UnknownSchemaId):
            await reader.resolve(b"\x00" + (999).to_bytes(4, "big"))
    finally:
        await reader.close()
    # a registry that stays down: a bounded retry gives up with the reason, no credentials
    fake.outage = 10**6
    impatient = await open_serde(url, retry=Retry(first=0.01, cap=0.02, give_up_after=0.2))
    try:
        with pytest.raises(RegistryError, match="503") as info:
            await impatient.resolve(b"\x00" + (1).to_bytes(4, "big"))
        assert "password" not in str(info.value)
        assert info.value.retriable
    finally:
        await impatient.close()


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_record_types_match_their_schemas(name: str) -> None:
    """Each TypedDict of ``schemas.records`` has the schema's fields, nullable where it is,
    optional where it has a default, and the schema's enum symbols."""
    hints = get_type_hints(RECORDS[name])
    fields = {f["name"]: f["type"] for f in schema_json(name)["fields"]}
    assert list(hints) == list(fields)
    defaults = {f["name"] for f in schema_json(name)["fields"] if "default" in f}
    assert RECORDS[name].__optional_keys__ == defaults
    for field, avro in fields.items():
        branches = avro if isinstance(avro, list) else [avro]
        hint_args = get_args(hints[field])
        assert ("null" in branches) == (type(None) in hint_args), field
        for branch in branches:
            if isinstance(branch, dict) and branch.get("type") == "enum":
                literals = [a for a in hint_args if get_origin(a) is Literal] or [hints[field]]
                assert set(get_args(literals[0])) == set(branch["symbols"]), field
