"""Every generated frame validates against the official AsyncAPI payload schemas.

Types the AsyncAPI file does not describe are checked against the shapes the simulator chose
(documented in ``simulator/script.py``), listed in ``UNDESCRIBED`` with why they are absent.
"""

from __future__ import annotations

import asyncio
import copy
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from simulator import commands
from simulator.script import ConversationScript, ScriptParams, make_agents
from simulator.testing import monitor, read_all, wait_for

ASYNCAPI = Path("/work/shared/reference/elevenlabs-agent-asyncapi.yaml")
URI = "urn:elevenlabs:asyncapi"

# Types of UPSTREAM.md §2 with no message in the AsyncAPI file (it lists them nowhere: they are
# in the OpenAPI ``ClientEvent`` enum only). Shapes are the simulator's choice.
_ID = {"type": "integer"}
UNDESCRIBED: dict[str, dict[str, Any]] = {
    # Metadata about a reply (model, latency); keyed like the other ``*_event`` payloads.
    "agent_response_metadata": {
        "type": "object",
        "required": ["type", "agent_response_metadata_event"],
        "properties": {
            "type": {"const": "agent_response_metadata"},
            "agent_response_metadata_event": {
                "type": "object",
                "required": ["metadata", "event_id"],
                "properties": {"metadata": {"type": "object"}, "event_id": _ID},
            },
        },
    },
    # Marks the end of a reply's turn; carries only the turn id.
    "agent_response_complete": {
        "type": "object",
        "required": ["type", "agent_response_complete_event"],
        "properties": {
            "type": {"const": "agent_response_complete"},
            "agent_response_complete_event": {
                "type": "object",
                "required": ["event_id"],
                "additionalProperties": False,
                "properties": {"event_id": _ID},
            },
        },
    },
    # Voice only: the agent asks for keypad digits.
    "dtmf_request": {
        "type": "object",
        "required": ["type", "dtmf_request_event"],
        "properties": {
            "type": {"const": "dtmf_request"},
            "dtmf_request_event": {
                "type": "object",
                "required": ["event_id", "digits"],
                "properties": {
                    "event_id": _ID,
                    "digits": {"type": "string", "pattern": "^[0-9#*]+$"},
                    "prompt": {"type": "string"},
                },
            },
        },
    },
    # An error the client side reported (the AsyncAPI ``error`` message is a different,
    # connection-closing server error and is not sent to monitors).
    "client_error": {
        "type": "object",
        "required": ["type", "client_error_event"],
        "properties": {
            "type": {"const": "client_error"},
            "client_error_event": {
                "type": "object",
                "required": ["event_id", "error_type", "message"],
                "properties": {
                    "event_id": _ID,
                    "error_type": {"type": "string"},
                    "message": {"type": "string"},
                },
            },
        },
    },
}
# guardrail_triggered IS described (only ``type`` required); its payload is our choice too.
GUARDRAIL_SHAPE = {
    "type": "object",
    "required": ["guardrail_triggered_event"],
    "properties": {
        "guardrail_triggered_event": {
            "type": "object",
            "required": ["event_id", "guardrail_type", "action"],
            "properties": {
                "event_id": _ID,
                "guardrail_type": {"type": "string"},
                "action": {"enum": ["warn", "block"]},
            },
        }
    },
}


def _merge_mcp_states(doc: dict[str, Any]) -> None:
    """Fix a contract defect: ``MCPToolCall<State>`` is ``allOf: [base, extension]`` where BOTH
    parts say ``additionalProperties: false``, so the base rejects ``state`` and the extension
    rejects ``service_id``: no instance can validate. We merge each pair into one closed object,
    which keeps the intent (exactly these fields) and stays strict."""
    schemas = doc["components"]["schemas"]
    base = schemas["MCPToolCallBase"]
    for name in (
        "MCPToolCallLoading",
        "MCPToolCallAwaitingApproval",
        "MCPToolCallSuccess",
        "MCPToolCallFailure",
    ):
        ext = schemas[name]["allOf"][1]
        schemas[name] = {
            "type": "object",
            "additionalProperties": False,
            "required": [*base["required"], *ext["required"]],
            "properties": {**base["properties"], **ext["properties"]},
        }
    # ``nullable`` is OpenAPI-only; the simulator never sends null there anyway.


def _string_part_ids(doc: dict[str, Any]) -> None:
    """Where the file lags the docs: the client-events page shows a string ``event_id``
    (``"evt_123456"``) on chat response parts, the file says integer; accept both there only."""
    part = doc["components"]["schemas"]["AgentChatResponsePartData"]
    part["properties"]["event_id"] = {"type": ["integer", "string"]}


@cache
def contract() -> tuple[dict[str, Any], dict[str, Any]]:
    raw = yaml.safe_load(ASYNCAPI.read_text())
    return raw, copy.deepcopy(raw)


@cache
def validators() -> dict[str, Draft202012Validator]:
    _raw, doc = contract()
    _merge_mcp_states(doc)
    _string_part_ids(doc)
    registry: Registry[Any] = Registry().with_resource(URI, DRAFT202012.create_resource(doc))
    out: dict[str, Draft202012Validator] = {}
    for ref in doc["channels"]["AgentMessages"]["publish"]["message"]["oneOf"]:
        name = ref["$ref"].rsplit("/", 1)[1]
        payload_ref = doc["components"]["messages"][name]["payload"]["$ref"]
        payload = doc["components"]["schemas"][payload_ref.rsplit("/", 1)[1]]
        kind = payload["properties"]["type"]["const"]
        out[kind] = Draft202012Validator({"$ref": URI + payload_ref}, registry=registry)
    return out


def check_frame(text: str) -> str:
    frame = orjson.loads(text)
    kind = frame["type"]
    described = validators()
    if kind in described:
        described[kind].validate(frame)
        if kind == "guardrail_triggered":
            Draft202012Validator(GUARDRAIL_SHAPE).validate(frame)
    else:
        assert kind in UNDESCRIBED, f"{kind} is neither in the AsyncAPI nor in UNDESCRIBED"
        Draft202012Validator(UNDESCRIBED[kind]).validate(frame)
    return str(kind)


def test_the_mcp_defect_is_real_and_the_merge_keeps_it_strict() -> None:
    raw, _ = contract()
    registry: Registry[Any] = Registry().with_resource(URI, DRAFT202012.create_resource(raw))
    literal = Draft202012Validator(
        {"$ref": URI + "#/components/schemas/MCPToolCallPayload"}, registry=registry
    )
    frame = {
        "type": "mcp_tool_call",
        "mcp_tool_call": {
            "service_id": "s",
            "tool_call_id": "t",
            "tool_name": "n",
            "parameters": {},
            "timestamp": "2026-01-01T00:00:00.000Z",
            "state": "loading",
        },
    }
    assert not literal.is_valid(frame)
    fixed = validators()["mcp_tool_call"]
    assert fixed.is_valid(frame)
    assert not fixed.is_valid({**frame, "mcp_tool_call": {**frame["mcp_tool_call"], "x": 1}})
    assert not fixed.is_valid(
        {**frame, "mcp_tool_call": {**frame["mcp_tool_call"], "state": "success"}}
    )


def test_validators_reject_bad_frames() -> None:
    with pytest.raises(Exception, match="required"):
        check_frame('{"type":"user_transcript","user_transcription_event":{"event_id":1}}')
    with pytest.raises(Exception, match="is not one of"):
        check_frame(
            '{"type":"conversation_initiation_metadata","conversation_initiation_'
            'metadata_event":{"conversation_id":"c","agent_output_audio_format":"mp3",'
            '"user_input_audio_format":"pcm_16000"}}'
        )
    with pytest.raises(AssertionError):
        check_frame('{"type":"vad_score_x"}')


def test_human_operator_and_error_frames_validate() -> None:
    agents = make_agents(5, 1)
    scripts = (ConversationScript(5, n, agents[0], ScriptParams(chat_ratio=1.0)) for n in range(9))
    chat = next(s for s in scripts if s.kind == "chat")
    kinds = [check_frame(chat.error(0.0, code, 1).text) for code in (1002, 1011)]
    steps = [
        '{"command_type":"enable_human_takeover"}',
        '{"command_type":"send_human_message","parameters":{"text":"Hello, Ana here"}}',
    ]
    for step in steps:
        kinds += [
            check_frame(f.text) for f in commands.apply(chat, commands.parse(step), 1.0).frames
        ]
    while (frame := chat.next_frame(2.0)) is not None and "agent_typing" not in kinds:
        kinds.append(check_frame(frame.text))
    off = commands.apply(chat, commands.parse('{"command_type":"disable_human_takeover"}'), 3.0)
    kinds += [check_frame(f.text) for f in off.frames]
    assert {
        "error",
        "external_agent_connected",
        "agent_typing",
        "external_agent_disconnected",
    } <= set(kinds)


def test_200_generated_conversations_validate() -> None:
    agents = make_agents(5, 4)
    seen: set[str] = set()
    for number in range(200):
        script = ConversationScript(5, number, agents[number % 4], ScriptParams())
        now = 0.0
        while (frame := script.next_frame(now)) is not None:
            seen.add(check_frame(frame.text))
            now += script.next_gap(10.0)
    assert set(UNDESCRIBED) <= seen
    assert "mcp_tool_call" in seen
    assert "guardrail_triggered" in seen


async def test_frames_on_real_sockets_validate(simulator_factory: Any) -> None:
    # long enough (a few seconds) that every monitor opens before its conversation ends, also
    # on a loaded machine: at 300 events/s and 4 turns a conversation lasts well under a
    # second, and the test failed once beside a CI run
    sim = await simulator_factory(
        conversations=8, events_per_second=60, turns=20, seed=9, reorder_ms=5
    )
    await wait_for(lambda: len(sim.conversations) == 8)

    async def watch(conversation_id: str) -> list[str]:
        async with monitor(sim, conversation_id) as ws:
            got = await read_all(ws, timeout=20)
        assert got.code == 1000
        return got.frames

    results = await asyncio.gather(*(watch(c.conversation_id) for c in sim.conversations))
    total = 0
    for frames in results:
        assert frames
        for text in frames:
            check_frame(text)
            total += 1
    assert total >= sum(min(c.frames, 100) for c in sim.conversations)
