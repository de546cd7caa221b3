"""Sans-I/O cores of the command path: canonical bytes, HMAC, validation, policy, rate limit,
ledger and the decision order (with hypothesis properties)."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.commands.decide import IN_DOUBT_REASON, Decider, Deliver, Finish, Skip
from ingest.commands.frames import build_frame, encode_frame
from ingest.commands.ledger import Ledger, read_source, source_headers
from ingest.commands.policy import PolicyError, parse_policy
from ingest.commands.ratelimit import RateLimiter
from ingest.commands.signing import canonical_bytes, sign, verify
from ingest.commands.validate import Limits, check_conversation, check_shape
from schemas.commands import COMMAND_TYPES

NOW = 1_800_000_000_000_000
KEYS = {"svc": "svc-key", "narrow": "narrow-key"}
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
    return Decider(POLICY, KEYS, Limits(), Ledger(), RateLimiter(rate, burst))


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


def test_conversation_checks() -> None:
    assert check_conversation("end_call", "in-progress", False) is None
    assert "not found" in (check_conversation("end_call", None, None) or "")
    assert "not live (status done)" in (check_conversation("end_call", "done", None) or "")
    assert "chat conversations only" in (
        check_conversation("enable_human_takeover", "in-progress", False) or ""
    )
    assert check_conversation("send_human_message", "in-progress", True) is None


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


@given(times=st.lists(st.floats(0, 100, allow_nan=False), max_size=60))
def test_token_bucket_never_exceeds_burst_plus_rate(times: list[float]) -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    times.sort()
    allowed = sum(limiter.allow("c", t) for t in times)
    span = times[-1] - times[0] if times else 0.0
    assert allowed <= 3 + 2.0 * span + 1e-9


def test_ledger_states_and_forgetting() -> None:
    ledger = Ledger()
    ledger.note_intent(1, 10, ("c", "a"), NOW)
    ledger.note_intent(1, 11, ("c", "b"), NOW)
    ledger.note_result(1, 11)
    assert ledger.state(1, 10) == "in_doubt"
    assert ledger.state(1, 11) == "answered"
    assert ledger.state(1, 12) == "new"
    assert ledger.taken(1, ("c", "a"))
    assert not ledger.taken(2, ("c", "a"))
    ledger.committed(1, 12)
    assert ledger.state(1, 10) == "new"
    assert ledger.taken(1, ("c", "a"))  # ids outlive offsets: later copies are duplicates
    ledger.prune(NOW + 120_000_000)
    assert not ledger.taken(1, ("c", "a"))
    assert read_source(source_headers(3, 42)) == (3, 42)
    assert read_source([("source-offset", b"x")]) is None


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
    d.ledger.note_intent(0, 0, ("conv_abc", "cmd-1"), NOW + 30_000_000)
    assert d.decide(0, 5, signed(), NOW) == Finish(
        "duplicate", "command_id already delivered or in delivery"
    )
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
            "issued_at": st.integers(NOW - 10**9, NOW),
            "expires_at": st.integers(NOW - 10**9, NOW + 10**10),
            "signature": st.none() | st.text(max_size=64),
        }
    ),
    sign_it=st.booleans(),
)
def test_decide_never_raises_and_delivers_only_signed_authorised_live_commands(
    record: dict[str, Any], sign_it: bool
) -> None:
    if sign_it and record["issued_by"] in KEYS:
        record["signature"] = sign(record, KEYS[record["issued_by"]])
    decision = decider().decide(0, 0, record, NOW)
    if isinstance(decision, Deliver):
        assert verify(record, KEYS[record["issued_by"]])
        assert record["expires_at"] > NOW
        assert (
            POLICY.authorise(record["issued_by"], record["command_type"], record["phone_number"])
            is None
        )
