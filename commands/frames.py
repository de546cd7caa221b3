"""The upstream control frame of a command (UPSTREAM.md §3), built from a validated record."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from schemas.commands import REQUIRED_FIELD


def build_frame(command: Mapping[str, Any]) -> dict[str, Any]:
    """``{"command_type": ..., "parameters": {...}}``; the record must have passed check_shape.

    The record's field and the upstream parameter share their name for every type
    (``phone_number``, ``contextual_update``, ``text``), so one table drives both.
    """
    kind = command["command_type"]
    field = REQUIRED_FIELD[kind]
    parameters = {} if field is None else {field: command[field]}
    return {"command_type": kind, "parameters": parameters}


def encode_frame(frame: Mapping[str, Any]) -> str:
    """The frame as the JSON text written to the socket."""
    return orjson.dumps(frame).decode("utf-8")
