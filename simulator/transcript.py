"""The REST and webhook ``transcript`` of a conversation, rebuilt from the frames it generated.

Sans-I/O, and derived from the frames rather than kept beside them, so the transcript can never
disagree with the monitor stream (UPSTREAM.md §4). One item per turn (``source_event_id`` = the
frames' ``event_id``), in the order turns began:
- ``user_transcript`` gives a user item; ``agent_response`` the agent item's message.
- ``agent_response_correction``: ``message`` becomes the corrected text and ``original_message``
  keeps the original; ``interruption`` sets ``interrupted``.
- Tool requests and responses of the turn become ``tool_calls`` and ``tool_results`` (keyed by
  ``request_id`` = ``tool_call_id``); an agent turn of tools only (an ``end_call``) has
  ``message`` null, as upstream.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

JSON = dict[str, Any]


def _item(role: str, secs: float, event_id: int) -> JSON:
    return {
        "role": role,
        "message": None,
        "time_in_call_secs": max(0, int(secs)),
        "interrupted": False,
        "original_message": None,
        "tool_calls": [],
        "tool_results": [],
        "source_event_id": event_id,
    }


def transcript_items(generated: Iterable[tuple[float, str]]) -> list[JSON]:
    """Items for ``(seconds into the call, frame text)`` pairs in generation order."""
    items: dict[tuple[str, int], JSON] = {}
    for secs, text in generated:
        frame = orjson.loads(text)
        kind = frame["type"]
        body = next((v for k, v in frame.items() if k != "type"), None)
        if not isinstance(body, dict) or not isinstance(body.get("event_id"), int):
            continue
        eid: int = body["event_id"]
        role = "user" if kind == "user_transcript" else "agent"
        if kind not in _AGENT_KINDS and role == "agent":
            continue
        item = items.get((role, eid))
        if item is None:
            item = items[(role, eid)] = _item(role, secs, eid)
        _apply(item, kind, body)
    return list(items.values())


_AGENT_KINDS = frozenset(
    {
        "agent_response",
        "agent_response_correction",
        "interruption",
        "agent_tool_request",
        "client_tool_call",
        "agent_tool_response",
        "agent_tool_response_full_payload",
    }
)
KINDS = _AGENT_KINDS | {"user_transcript"}  # the frame types a transcript is built from


def _apply(item: JSON, kind: str, body: JSON) -> None:
    if kind == "user_transcript":
        item["message"] = body["user_transcript"]
    elif kind == "agent_response":
        if item["original_message"] is None:
            item["message"] = body["agent_response"]
    elif kind == "agent_response_correction":
        item["original_message"] = body["original_agent_response"]
        item["message"] = body["corrected_agent_response"]
    elif kind == "interruption":
        item["interrupted"] = True
    elif kind == "agent_tool_request":
        item["tool_calls"].append(
            {
                "type": body["tool_type"],
                "request_id": body["tool_call_id"],
                "tool_name": body["tool_name"],
                "params_as_json": "{}",
                "tool_has_been_called": True,
            }
        )
    elif kind == "client_tool_call":
        for call in item["tool_calls"]:
            if call["request_id"] == body["tool_call_id"]:
                call["params_as_json"] = orjson.dumps(body["parameters"]).decode()
    elif kind == "agent_tool_response":
        item["tool_results"].append(
            {
                "type": body["tool_type"],
                "request_id": body["tool_call_id"],
                "tool_name": body["tool_name"],
                "result_value": "",
                "is_error": body["is_error"],
                "tool_has_been_called": body["is_called"],
            }
        )
    elif kind == "agent_tool_response_full_payload":
        for result in item["tool_results"]:
            if result["request_id"] == body["tool_call_id"]:
                result["result_value"] = body["full_tool_result"]
