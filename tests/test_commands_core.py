"""Sans-I/O cores of the command path: canonical bytes, HMAC, validation, policy, rate limit,
ledger and the decision order (with hypothesis properties)."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import event, given, settings
from hypothesis import strategies as st

from commands.cli import command_worker, send_command
from commands.decide import (
    DUPLICATE_REASON,
    IN_DOUBT_REASON,
    Decider,
    Deliver,
    Finish,
    Skip,
)
from commands.frames import build_frame, encode_frame
from commands.keyring import KeyRing, KeyRingError, parse_keys_json, read_keys_dir
from commands.ledger import CommandLedger, claim_horizon_micros, read_source, source_headers
from commands.policy import PolicyError, parse_policy
from commands.ratelimit import RateLimiter
from commands.settings import CommandWorkerSettings
from commands.validate import Limits, check_clock, check_conversation, check_shape
from convostream.issuer import KeysError
from schemas.commands import COMMAND_TYPES, E164
from schemas.signing import canonical_bytes, sign, verify

NOW = 1_800_000_000_000_000
SECOND = 1_000_000
KEYS = {"svc": "svc-key", "narrow": "narrow-key"}
RING = KeyRing.of(KEYS).merged(KeyRing({"svc": {"k2": "svc-key-2"}}))
LIMITS = Limits()
POLICY = parse_policy(
    {
        "issuers": {
            "svc": {"commands": ["*"], "phone_numbers": ["+1415*", "+4420[0-9]*"]},
            "narrow": {"commands": ["contextual_update"]},
        }
    }
)


def command(kind: str = "end_call", **over: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "command_id": "cmd-1",
        "conversation_id": "conv_abc",
        "command_type": kind,
        "phone_number": None,
        "text": None,
        "contextual_update": None,
        "issued_by": "svc",
        "issued_at": NOW,
        "expires_at": NOW + 30_000_000,
        "signature": None,
    }
    record.update(over)
    return record


def signed(kind: str = "end_call", key: str = "svc-key", **over: Any) -> dict[str, Any]:
    record = command(kind, **over)
    record["signature"] = sign(record, key)
    return record


def decider(rate: float = 100.0, burst: int = 100) -> Decider:
    return Decider(POLICY, RING, LIMITS, CommandLedger(), RateLimiter(rate, burst))


# ----- canonical bytes and HMAC ---------------------------------------------------------------
def test_canonical_bytes_are_sorted_compact_json_without_signature_and_nulls() -> None:
    record = command("send_human_message", text='héllo "x"\n', signature="ab")
    expected = (
        '{"command_id":"cmd-1","command_type":"send_human_message",'
        '"conversation_id":"conv_abc","expires_at":1800000030000000,'
        f'"issued_at":{NOW},"issued_by":"svc","text":"héllo \\"x\\"\\n"}}'
    ).encode()
    assert canonical_bytes(record) == expected


def test_signature_is_hex_hmac_sha256_of_canonical_bytes() -> None:
    record = command()
    expected = hmac.new(b"svc-key", canonical_bytes(record), hashlib.sha256).hexdigest()
    assert sign(record, "svc-key") == expected
    record["signature"] = expected
    assert verify(record, "svc-key")
    assert not verify(record, "other-key")
    assert not verify({**record, "signature": None}, "svc-key")
    assert not verify({**record, "signature": expected.upper()}, "svc-key")


def test_canonical_bytes_ignore_field_order_and_the_signature() -> None:
    record = command()
    reordered = dict(reversed(list(record.items())))
    assert canonical_bytes(record) == canonical_bytes({**reordered, "signature": "zz"})


texts = st.text(max_size=50)


@given(text=texts, other=texts)
def test_any_change_of_a_signed_field_breaks_the_signature(text: str, other: str) -> None:
    record = signed("contextual_update", contextual_update=text or "x")
    assert verify(record, "svc-key")
    changed = {**record, "contextual_update": (text or "x") + (other or "y")}
    assert not verify(changed, "svc-key")


@given(text=st.text(max_size=40))
def test_canonical_bytes_are_valid_json_of_the_same_fields(text: str) -> None:
    record = command("contextual_update", contextual_update=text)
    decoded = json.loads(canonical_bytes(record))
    assert decoded == {k: v for k, v in record.items() if v is not None and k != "signature"}


# ----- shape validation and frames ------------------------------------------------------------
@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (command("reboot"), "unknown command_type 'reboot'"),
        (command("transfer_to_number"), "missing parameter phone_number"),
        (command("transfer_to_number", phone_number="0044 20"), "not E.164"),
        (command("transfer_to_number", phone_number="+0123456789"), "not E.164"),
        (
            command("contextual_update", contextual_update="  "),
            "missing parameter contextual_update",
        ),
        (command("send_human_message"), "missing parameter text"),
        (command("send_human_message", text="x" * 2001), "text has 2001 characters"),
        (command("end_call", phone_number="+14155550100"), "unexpected parameter phone_number"),
        (command("end_call", command_id=""), "invalid command_id"),
        (command("end_call", conversation_id="../x"), "invalid conversation_id"),
        (command("end_call", expires_at=NOW), "expires_at must be after issued_at"),
        (command("end_call", expires_at=NOW + 7200 * 10**6), "lifetime"),
    ],
)
def test_shape_rejections(record: dict[str, Any], reason: str) -> None:
    problem = check_shape(record, Limits())
    assert problem is not None
    assert reason in problem


@pytest.mark.parametrize(
    ("kind", "params", "frame"),
    [
        ("end_call", {}, {}),
        ("transfer_to_number", {"phone_number": "+14155550100"}, {"phone_number": "+14155550100"}),
        ("contextual_update", {"contextual_update": "vip"}, {"contextual_update": "vip"}),
        ("enable_human_takeover", {}, {}),
        ("send_human_message", {"text": "hi"}, {"text": "hi"}),
        ("disable_human_takeover", {}, {}),
    ],
)
def test_frames_have_the_upstream_shape(
    kind: str, params: dict[str, str], frame: dict[str, str]
) -> None:
    record = command(kind, **params)
    assert check_shape(record, Limits()) is None
    assert build_frame(record) == {"command_type": kind, "parameters": frame}
    assert json.loads(encode_frame(build_frame(record))) == build_frame(record)


@pytest.mark.parametrize(
    "over",
    [
        {"command_type": "transfer_to_number", "phone_number": "+14155550100\n"},
        {"command_type": "transfer_to_number", "phone_number": "+14155550100\r\n"},
        {"command_type": "transfer_to_number", "phone_number": "\n+14155550100"},
        {"command_type": "transfer_to_number", "phone_number": "+1415555\u0660100"},
        {"command_id": "cmd-1\n"},
        {"conversation_id": "conv_abc\n"},
        {"key_id": "k2\n"},
        {"key_id": ""},
    ],
)
def test_identifiers_and_numbers_must_match_whole(over: dict[str, Any]) -> None:
    problem = check_shape(command(**over), LIMITS)
    assert problem is not None
    assert "invalid" in problem or "not E.164" in problem
    assert not E164.match("+14155550100\n")
    assert not E164.search("x+14155550100")


def test_clock_skew_bounds_issued_at_in_the_future_only() -> None:
    assert check_clock(NOW + LIMITS.max_clock_skew_micros, NOW, LIMITS) is None
    assert check_clock(NOW - 3000 * SECOND, NOW, LIMITS) is None  # the lifetime bounds the past
    problem = check_clock(NOW + 365 * 86400 * SECOND, NOW, LIMITS)
    assert problem is not None
    assert "ahead of the worker's clock" in problem
    year_ahead = signed(
        issued_at=NOW + 365 * 86400 * SECOND, expires_at=NOW + 365 * 86400 * SECOND + 3000 * SECOND
    )
    decision = decider().decide(0, 0, year_ahead, NOW)
    assert isinstance(decision, Finish)
    assert (decision.status, "ahead of the worker's clock" in decision.reason) == (
        "rejected",
        True,
    )


def test_rotated_keys_are_all_active_and_named_by_key_id() -> None:
    d = decider()
    assert isinstance(d.decide(0, 0, signed(command_id="a"), NOW), Deliver)
    assert isinstance(
        d.decide(0, 1, signed(command_id="b", key_id="k2", key="svc-key-2"), NOW), Deliver
    )
    wrong = d.decide(0, 2, signed(command_id="c", key_id="k2", key="svc-key"), NOW)
    assert wrong == Finish("rejected", "bad signature for issuer 'svc' (key 'k2')")
    unknown = d.decide(0, 3, signed(command_id="d", key_id="k9", key="svc-key"), NOW)
    assert unknown == Finish("rejected", "no active key 'k9' for issuer 'svc'")
    # the key id is signed: moving a signature to another key id breaks it
    moved = {**signed(command_id="e", key="svc-key-2"), "key_id": "k2"}
    assert isinstance(d.decide(0, 4, moved, NOW), Finish)


def test_key_ring_sources(tmp_path: Path) -> None:
    ring = parse_keys_json({"a": "ka", "b": {"": "kb0", "2026": "kb1"}})
    assert ring.key("a", None) == "ka"
    assert ring.key("b", None) == "kb0"
    assert ring.key("b", "2026") == "kb1"
    assert ring.key("b", "2025") is None
    assert not ring.knows("c")
    for bad in ([], {"a": 1}, {"a": {}}, {"a": {"k": ""}}):
        with pytest.raises(KeyRingError):
            parse_keys_json(bad)
    (tmp_path / "a").write_text("ka-file\n")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2027").write_text("kb2")
    (tmp_path / "..data").mkdir()
    files = read_keys_dir(tmp_path)
    merged = ring.merged(files)
    assert (merged.key("a", None), merged.key("b", "2026"), merged.key("b", "2027")) == (
        "ka-file",
        "kb1",
        "kb2",
    )
    assert sorted(merged.secrets()) == ["ka-file", "kb0", "kb1", "kb2"]


def test_worker_settings_read_both_key_sources_and_never_show_a_key(tmp_path: Path) -> None:
    (tmp_path / "svc").mkdir()
    (tmp_path / "svc" / "k2").write_text("svc-key-2")
    settings = CommandWorkerSettings(
        _env_file=None, commands_keys='{"svc": "svc-key"}', commands_keys_dir=tmp_path
    )
    ring = settings.issuer_keys()
    assert (ring.key("svc", None), ring.key("svc", "k2")) == ("svc-key", "svc-key-2")
    broken = CommandWorkerSettings(_env_file=None, commands_keys='{"svc": "secret-x"')
    with pytest.raises(KeysError) as info:
        broken.issuer_keys()
    assert "secret-x" not in str(info.value)


def test_help_documents_the_command_safety_settings() -> None:
    worker_help = CliRunner().invoke(command_worker, ["--help"]).output
    for text in (
        "--max-clock-skew",
        "CONVOSTREAM_COMMANDS_MAX_CLOCK_SKEW",
        "--max-ttl",
        "CONVOSTREAM_COMMANDS_MAX_TTL",
        "CONVOSTREAM_COMMANDS_KEYS",
    ):
        assert text in worker_help
    sender_help = CliRunner().invoke(send_command, ["--help"]).output
    assert "--key-id" in sender_help
    assert "CONVOSTREAM_COMMANDS_KEY_ID" in sender_help


def test_conversation_checks() -> None:
    assert check_conversation("end_call", "in-progress", False) is None
    assert "not found" in (check_conversation("end_call", None, None) or "")
    assert "not live (status done)" in (check_conversation("end_call", "done", None) or "")
    assert "chat conversations only" in (
        check_conversation("enable_human_takeover", "in-progress", False) or ""
    )
    assert check_conversation("send_human_message", "in-progress", True) is None
    assert "unknown kind" in (check_conversation("send_human_message", "in-progress", None) or "")
    assert check_conversation("end_call", "in-progress", None) is None
    assert "phone conversations only" in (
        check_conversation("transfer_to_number", "in-progress", True) or ""
    )
    assert check_conversation("transfer_to_number", "in-progress", False) is None


@settings(max_examples=300)
@given(
    kind=st.sampled_from([*COMMAND_TYPES, "other", ""]),
    phone=st.none() | st.text(max_size=20) | st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True),
    text=st.none() | st.text(max_size=2100),
    update=st.none() | st.text(max_size=30),
    ttl=st.integers(-10, 10_000),
)
def test_validation_never_raises_and_accepts_only_well_formed_frames(
    kind: str, phone: str | None, text: str | None, update: str | None, ttl: int
) -> None:
    record = command(
        kind,
        phone_number=phone,
        text=text,
        contextual_update=update,
        expires_at=NOW + ttl * 1_000_000,
    )
    if check_shape(record, Limits()) is None:
        frame = build_frame(record)
        assert frame["command_type"] in COMMAND_TYPES
        for value in frame["parameters"].values():
            assert isinstance(value, str)
            assert value.strip()
            assert len(value) <= 2000
        assert 0 < ttl <= 3600


# ----- policy -----------------------------------------------------------------------------------
def test_policy_grants() -> None:
    assert POLICY.authorise("svc", "transfer_to_number", "+14155550100") is None
    assert POLICY.authorise("svc", "transfer_to_number", "+442012345678") is None
    assert "may not transfer to" in (
        POLICY.authorise("svc", "transfer_to_number", "+33123456789") or ""
    )
    assert "may not send end_call" in (POLICY.authorise("narrow", "end_call", None) or "")
    assert "not in the policy" in (POLICY.authorise("nobody", "end_call", None) or "")


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"issuers": {"a": {"commands": ["explode"]}}},
        {"issuers": {"a": {"command": ["end_call"]}}},
        {"issuers": {"a": {"commands": "end_call"}}},
        {"issuers": {}, "extra": 1},
    ],
)
def test_policy_errors(document: Any) -> None:
    with pytest.raises(PolicyError):
        parse_policy(document)


# ----- rate limit and ledger --------------------------------------------------------------------
def test_token_bucket_allows_burst_then_rate() -> None:
    limiter = RateLimiter(rate=1.0, burst=2)
    assert limiter.allow("c", 0.0)
    assert limiter.allow("c", 0.0)
    assert not limiter.allow("c", 0.1)
    assert limiter.allow("other", 0.1)
    assert limiter.allow("c", 1.2)
    limiter.prune(100.0)
    assert len(limiter) == 0


def test_rate_buckets_are_pruned_on_the_clock_that_filled_them() -> None:
    d = decider(rate=1.0, burst=2)
    assert isinstance(d.decide(0, 0, signed(), NOW), Deliver)
    assert len(d.limiter) == 1
    d.housekeeping(NOW + SECOND)  # half refilled: kept
    assert len(d.limiter) == 1
    d.housekeeping(NOW + 2 * SECOND)  # full again: a new bucket would behave the same
    assert len(d.limiter) == 0


@given(times=st.lists(st.floats(0, 100, allow_nan=False), max_size=60))
def test_token_bucket_never_exceeds_burst_plus_rate(times: list[float]) -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    times.sort()
    allowed = sum(limiter.allow("c", t) for t in times)
    span = times[-1] - times[0] if times else 0.0
    assert allowed <= 3 + 2.0 * span + 1e-9


def test_ledger_states_and_forgetting() -> None:
    ledger = CommandLedger()
    ledger.note_intent((4, 0), (1, 10), ("svc", "a"), NOW)
    ledger.note_intent((2, 0), (1, 11), ("svc", "b"), NOW)
    ledger.note_result(1, 11)
    assert ledger.state(1, 10) == "in_doubt"
    assert ledger.state(1, 11) == "answered"
    assert ledger.state(1, 12) == "new"
    assert ledger.claim(("svc", "a")) == (4, 0)
    assert ledger.claim(("other", "a")) is None
    ledger.committed(1, 12)
    assert ledger.state(1, 10) == "new"
    assert ledger.claim(("svc", "a")) == (4, 0)  # ids outlive offsets: later copies are dups
    ledger.prune(NOW + 120 * SECOND)
    assert ledger.claim(("svc", "a")) is None
    assert ledger.size() == 0
    assert read_source(source_headers(3, 42)) == (3, 42)
    assert read_source([("source-offset", b"x")]) is None


def test_the_first_intent_in_log_order_owns_a_command_id_whatever_its_partition() -> None:
    """Two copies of one signed command on partitions 0 and 3, both written as intents (two
    workers deciding at once): every worker reads the intents in the same order, so both agree
    that the first one owns the id; the second is a duplicate. Claims compare intent positions:
    a second intent from the same source (a stalled worker and the partition's new owner) loses
    too."""
    ledger = CommandLedger()
    ledger.note_intent((2, 40), (0, 5), ("svc", "cmd-1"), NOW + 30 * SECOND)
    ledger.note_intent((2, 41), (3, 7), ("svc", "cmd-1"), NOW + 30 * SECOND)
    ledger.note_intent((2, 42), (0, 5), ("svc", "cmd-1"), NOW + 30 * SECOND)  # same source
    assert ledger.claim(("svc", "cmd-1")) == (2, 40)
    d = Decider(POLICY, RING, LIMITS, ledger, RateLimiter(100, 100))
    assert d.decide(3, 8, signed(), NOW) == Finish("duplicate", DUPLICATE_REASON)
    other_conversation = signed(conversation_id="conv_other")
    assert d.decide(4, 0, other_conversation, NOW) == Finish("duplicate", DUPLICATE_REASON)
    assert isinstance(
        d.decide(
            4,
            1,
            signed(
                issued_by="narrow",
                key="narrow-key",
                command_type="contextual_update",
                contextual_update="x",
            ),
            NOW,
        ),
        Deliver,
    )


def test_claim_horizon_covers_lifetime_skew_and_slack() -> None:
    ledger = CommandLedger()
    horizon = claim_horizon_micros(LIMITS.max_ttl_micros, LIMITS.max_clock_skew_micros)
    # the latest-expiring command a worker can accept at NOW: issued skew ahead, longest TTL
    expires = NOW + LIMITS.max_clock_skew_micros + LIMITS.max_ttl_micros
    ledger.note_intent((0, 0), (0, 0), ("svc", "late"), expires)
    ledger.prune(NOW + horizon - 1)
    assert ledger.claim(("svc", "late")) == (0, 0)


# ----- decision order ---------------------------------------------------------------------------
def test_decide_delivers_a_valid_command() -> None:
    decision = decider().decide(0, 0, signed(), NOW)
    assert decision == Deliver({"command_type": "end_call", "parameters": {}})


@pytest.mark.parametrize(
    ("record", "status", "reason"),
    [
        ("bad magic byte", "rejected", "undecodable command: bad magic byte"),
        (command(), "rejected", "unsigned command"),
        (signed(key="wrong"), "rejected", "bad signature for issuer 'svc'"),
        (signed(issued_by="ghost", key="x"), "rejected", "no signing key for issuer 'ghost'"),
        (signed(issued_by="narrow", key="narrow-key"), "rejected", "may not send end_call"),
        (
            signed("transfer_to_number", phone_number="+33123456789"),
            "rejected",
            "may not transfer to +33123456789",
        ),
        (signed(expires_at=NOW - 1, issued_at=NOW - 10), "expired", "expired"),
    ],
)
def test_decide_finishes(record: Any, status: str, reason: str) -> None:
    decision = decider().decide(0, 0, record, NOW)
    assert isinstance(decision, Finish)
    assert decision.status == status
    assert reason in decision.reason


def test_decide_duplicates_answered_in_doubt_and_rate() -> None:
    d = decider(rate=0.001, burst=2)
    d.ledger.note_intent((1, 0), (0, 0), ("svc", "cmd-1"), NOW + 30_000_000)
    assert d.decide(0, 5, signed(), NOW) == Finish("duplicate", DUPLICATE_REASON)
    assert d.decide(0, 0, signed(), NOW) == Finish("failed", IN_DOUBT_REASON)
    d.ledger.note_result(0, 0)
    assert d.decide(0, 0, "garbage", NOW) == Skip()
    assert isinstance(d.decide(0, 6, signed(command_id="x1"), NOW), Deliver)
    assert isinstance(d.decide(0, 7, signed(command_id="x2"), NOW), Deliver)
    third = d.decide(0, 8, signed(command_id="x3"), NOW)
    assert isinstance(third, Finish)
    assert third.status == "rejected"
    assert "rate limit" in third.reason


def test_an_unsigned_copy_cannot_claim_a_command_id() -> None:
    d = decider()
    assert isinstance(d.decide(0, 0, command(), NOW), Finish)
    assert isinstance(d.decide(0, 1, signed(), NOW), Deliver)


@settings(max_examples=200)
@given(
    record=st.fixed_dictionaries(
        {
            "command_id": st.text(max_size=10),
            "conversation_id": st.text(max_size=10),
            "command_type": st.sampled_from([*COMMAND_TYPES, "x"]),
            "phone_number": st.none() | st.text(max_size=16),
            "text": st.none() | st.text(max_size=10),
            "contextual_update": st.none() | st.text(max_size=10),
            "issued_by": st.sampled_from(["svc", "narrow", "ghost"]),
            "key_id": st.none() | st.sampled_from(["k2", "", "k\n"]),
            "issued_at": st.integers(NOW - 10**9, NOW + 10**11),
            "expires_at": st.integers(NOW - 10**9, NOW + 10**11),
            "signature": st.none() | st.text(max_size=64),
        }
    ),
)
def test_decide_never_raises_on_arbitrary_records(record: dict[str, Any]) -> None:
    assert isinstance(decider().decide(0, 0, record, NOW), (Deliver, Finish))


# ----- the delivery property, with examples that reach it -------------------------------------
ids = st.from_regex(r"[A-Za-z0-9_.:-]{1,20}", fullmatch=True)
texts_for_commands = st.text(min_size=1, max_size=200).filter(str.strip)


@st.composite
def deliverable(draw: st.DrawFn) -> dict[str, Any]:
    """A command every check accepts: built valid (no assume), under either of svc's keys."""
    kind = draw(st.sampled_from(COMMAND_TYPES))
    issued_at = NOW + draw(st.integers(-3000 * SECOND, LIMITS.max_clock_skew_micros))
    expires_at = draw(st.integers(max(NOW + 1, issued_at + 1), issued_at + LIMITS.max_ttl_micros))
    params: dict[str, Any] = {}
    if kind == "transfer_to_number":
        params["phone_number"] = draw(st.from_regex(r"\+1415[0-9]{3,11}", fullmatch=True))
    elif kind == "contextual_update":
        params["contextual_update"] = draw(texts_for_commands)
    elif kind == "send_human_message":
        params["text"] = draw(texts_for_commands)
    key_id = draw(st.sampled_from([None, "k2"]))
    record = command(
        kind,
        command_id=draw(ids),
        conversation_id=draw(ids),
        key_id=key_id,
        issued_at=issued_at,
        expires_at=expires_at,
        **params,
    )
    return resign(record)


def resign(record: dict[str, Any]) -> dict[str, Any]:
    key = RING.key(record["issued_by"], record.get("key_id"))
    assert key is not None
    return {**record, "signature": sign(record, key)}


def _transfer(number: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def mutate(r: dict[str, Any]) -> dict[str, Any]:
        return resign(
            {
                **r,
                "command_type": "transfer_to_number",
                "text": None,
                "contextual_update": None,
                "phone_number": number,
            }
        )

    return mutate


# Each breaks exactly one of the promises, and says which status it must end in.
MUTATIONS: dict[str, tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]] = {
    "unsigned": ("rejected", lambda r: {**r, "signature": None}),
    "wrong key": ("rejected", lambda r: {**r, "signature": sign(r, "not-the-key")}),
    "unknown key id": ("rejected", lambda r: {**r, "key_id": "k9", "signature": sign(r, "x")}),
    "key id of another key": (
        "rejected",
        lambda r: {**r, "key_id": "k2"} if r.get("key_id") is None else {**r, "key_id": None},
    ),
    "unknown issuer": ("rejected", lambda r: {**r, "issued_by": "ghost", "key_id": None}),
    "tampered after signing": ("rejected", lambda r: {**r, "conversation_id": "conv_x"}),
    "not authorised": (
        "rejected",
        lambda r: {
            **resign(
                {
                    **r,
                    "issued_by": "narrow",
                    "key_id": None,
                    "command_type": "end_call",
                    "phone_number": None,
                    "text": None,
                    "contextual_update": None,
                }
            )
        },
    ),
    "number outside the policy": ("rejected", _transfer("+33123456789")),
    "number with a trailing newline": ("rejected", _transfer("+14155550100\n")),
    "expired": (
        "expired",
        lambda r: resign({**r, "issued_at": NOW - 100 * SECOND, "expires_at": NOW - SECOND}),
    ),
    "issued in the future": (
        "rejected",
        lambda r: resign(
            {
                **r,
                "issued_at": NOW + 365 * 86400 * SECOND,
                "expires_at": NOW + 365 * 86400 * SECOND + 3000 * SECOND,
            }
        ),
    ),
    "lifetime too long": (
        "rejected",
        lambda r: resign({**r, "expires_at": r["issued_at"] + LIMITS.max_ttl_micros + 1}),
    ),
    "command id claimed elsewhere": ("duplicate", lambda r: r),
}


def test_only_signed_authorised_live_commands_are_delivered() -> None:
    """Commands built valid (no ``assume``, nothing filtered away) are all delivered, and the
    number that reached the assertion is counted, so the property cannot pass vacuously."""
    delivered = 0

    @settings(max_examples=300, database=None)
    @given(record=deliverable())
    def check(record: dict[str, Any]) -> None:
        nonlocal delivered
        decision = decider().decide(0, 0, record, NOW)
        assert isinstance(decision, Deliver), decision
        assert_deliverable(record, decision)
        event(f"{record['command_type']}, key id {record['key_id']}")
        delivered += 1

    check()
    assert delivered >= 250


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_breaking_any_one_promise_prevents_delivery(mutation: str) -> None:
    """The same valid commands, each broken in one way: never delivered, with the status the
    broken promise calls for."""
    expected, mutate = MUTATIONS[mutation]
    checked = 0

    @settings(max_examples=40, database=None)
    @given(record=deliverable())
    def check(record: dict[str, Any]) -> None:
        nonlocal checked
        d = decider()
        record = mutate(record)
        if mutation == "command id claimed elsewhere":
            key = ("svc", record["command_id"])
            d.ledger.note_intent((1, 7), (5, 99), key, record["expires_at"])
        decision = d.decide(0, 0, record, NOW)
        assert isinstance(decision, Finish), record
        assert decision.status == expected, decision
        checked += 1

    check()
    assert checked >= 30


def assert_deliverable(record: dict[str, Any], decision: Deliver) -> None:
    """The promise, checked independently of the decider's own code path."""
    key = RING.key(record["issued_by"], record.get("key_id"))
    assert key is not None
    expected = hmac.new(key.encode(), canonical_bytes(record), hashlib.sha256).hexdigest()
    assert record["signature"] == expected
    assert (
        POLICY.authorise(record["issued_by"], record["command_type"], record["phone_number"])
        is None
    )
    assert record["issued_at"] <= NOW + LIMITS.max_clock_skew_micros
    assert NOW < record["expires_at"] <= record["issued_at"] + LIMITS.max_ttl_micros
    if record["phone_number"] is not None:
        assert E164.fullmatch(record["phone_number"])
        assert not record["phone_number"].endswith("\n")
    assert decision.frame["command_type"] == record["command_type"]
