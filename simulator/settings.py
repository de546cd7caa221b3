"""Knobs of ``convostream simulate``; every field is a flag and a ``CONVOSTREAM_SIM_*`` variable.

Fields carry a ``sim_`` prefix so that their environment variables cannot collide with the
pipeline's own (``CONVOSTREAM_SIM_PORT`` vs ``CONVOSTREAM_METRICS_PORT``); the flags are the short
names of DESIGN.md §2 (``--port``, ``--conversations``...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr

from convostream.settings import CommonSettings


def _flag(name: str) -> dict[str, Any]:
    return {"flag": name}


class SimulatorSettings(CommonSettings):
    """Everything that shapes a simulator run; the same values and seed give the same frames."""

    sim_host: str = Field(
        "127.0.0.1", description="Interface to listen on.", json_schema_extra=_flag("--host")
    )
    sim_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port (0: any free port, printed).",
        json_schema_extra=_flag("--port"),
    )
    sim_api_key: SecretStr = Field(
        ...,
        description="The xi-api-key clients must send (required; never logged).",
        json_schema_extra=_flag("--api-key"),
    )
    sim_conversations: int = Field(
        10,
        ge=0,
        description="Concurrently live conversations.",
        json_schema_extra=_flag("--conversations"),
    )
    sim_duration: float = Field(
        0.0,
        ge=0,
        description="Seconds to keep refilling ended slots with new conversations "
        "(0: exactly --conversations conversations).",
        json_schema_extra=_flag("--duration"),
    )
    sim_events_per_second: float = Field(
        2.0,
        gt=0,
        description="Mean frames per second per conversation.",
        json_schema_extra=_flag("--events-per-second"),
    )
    sim_seed: int = Field(
        0,
        description="Seed: same seed, same conversations and frames.",
        json_schema_extra=_flag("--seed"),
    )
    sim_reorder_ms: float = Field(
        0.0,
        ge=0,
        description="Each frame is sent up to this many ms after it is generated "
        "(uniform), so frames may arrive out of order.",
        json_schema_extra=_flag("--reorder-ms"),
    )
    sim_disconnect_every: float = Field(
        0.0,
        ge=0,
        description="Mean seconds between server-side drops of each monitor socket "
        "(exponential; 0: never).",
        json_schema_extra=_flag("--disconnect-every"),
    )
    sim_agents: int = Field(
        3,
        ge=1,
        description="Number of agents conversations belong to.",
        json_schema_extra=_flag("--agents"),
    )
    sim_turns: float = Field(
        6.0,
        ge=1,
        description="Mean user turns per conversation.",
        json_schema_extra=_flag("--turns"),
    )
    sim_chat_ratio: float = Field(
        0.3,
        ge=0,
        le=1,
        description="Share of chat (text) conversations; the rest are voice.",
        json_schema_extra=_flag("--chat-ratio"),
    )
    sim_ramp_seconds: float = Field(
        0.0,
        ge=0,
        description="Spread the first conversations' starts over this many seconds.",
        json_schema_extra=_flag("--ramp-seconds"),
    )
    sim_processing_seconds: float = Field(
        0.5,
        ge=0,
        description="How long an ended conversation stays 'processing' before 'done'.",
        json_schema_extra=_flag("--processing-seconds"),
    )
    sim_rest_error_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of REST requests answered 429/503 (back-off tests).",
        json_schema_extra=_flag("--rest-error-rate"),
    )
    sim_ground_truth: Path | None = Field(
        None,
        description="Write one JSON line per generated frame here.",
        json_schema_extra=_flag("--ground-truth"),
    )
    sim_commands_log: Path | None = Field(
        None,
        description="Write one JSON line per command frame received here.",
        json_schema_extra=_flag("--commands-log"),
    )
    sim_exit_when_done: bool = Field(
        False,
        description="Exit once every conversation has ended.",
        json_schema_extra=_flag("--exit-when-done"),
    )
