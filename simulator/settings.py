"""Knobs of ``convostream simulate``; every field is a flag and a ``CONVOSTREAM_SIM_*`` variable.

Fields carry a ``sim_`` prefix so that their environment variables cannot collide with the
pipeline's own (``CONVOSTREAM_SIM_PORT`` vs ``CONVOSTREAM_METRICS_PORT``); the flags are the short
names of DESIGN.md §2 (``--port``, ``--conversations``...).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from convostream.settings import CommonSettings, flag


class SimulatorSettings(CommonSettings):
    """Everything that shapes a simulator run; the same values and seed give the same frames."""

    sim_host: str = Field(
        "127.0.0.1", description="Interface to listen on.", json_schema_extra=flag("--host")
    )
    sim_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port (0: any free port, printed).",
        json_schema_extra=flag("--port"),
    )
    sim_api_key: SecretStr = Field(
        ...,
        description="The xi-api-key clients must send (required; never logged).",
        json_schema_extra=flag("--api-key"),
    )
    sim_conversations: int = Field(
        10,
        ge=0,
        description="Concurrently live conversations.",
        json_schema_extra=flag("--conversations"),
    )
    sim_duration: float = Field(
        0.0,
        ge=0,
        description="Seconds to keep refilling ended slots with new conversations "
        "(0: exactly --conversations conversations).",
        json_schema_extra=flag("--duration"),
    )
    sim_events_per_second: float = Field(
        2.0,
        gt=0,
        description="Mean frames per second per conversation.",
        json_schema_extra=flag("--events-per-second"),
    )
    sim_seed: int = Field(
        0,
        description="Seed: same seed, same conversations and frames.",
        json_schema_extra=flag("--seed"),
    )
    sim_reorder_ms: float = Field(
        0.0,
        ge=0,
        description="Each frame is sent up to this many ms after it is generated "
        "(uniform), so frames may arrive out of order.",
        json_schema_extra=flag("--reorder-ms"),
    )
    sim_disconnect_every: float = Field(
        0.0,
        ge=0,
        description="Mean seconds between server-side drops of each monitor socket "
        "(exponential; 0: never).",
        json_schema_extra=flag("--disconnect-every"),
    )
    sim_agents: int = Field(
        3,
        ge=1,
        description="Number of agents conversations belong to.",
        json_schema_extra=flag("--agents"),
    )
    sim_turns: float = Field(
        6.0,
        ge=1,
        description="Mean user turns per conversation.",
        json_schema_extra=flag("--turns"),
    )
    sim_chat_ratio: float = Field(
        0.3,
        ge=0,
        le=1,
        description="Share of chat (text) conversations; the rest are voice.",
        json_schema_extra=flag("--chat-ratio"),
    )
    sim_escalation_ratio: float = Field(
        0.0,
        ge=0,
        le=1,
        description='Share of conversations with one user_transcript that asks to "talk to a '
        'human" (by seed).',
        json_schema_extra=flag("--escalation-ratio"),
    )
    sim_repeat_ratio: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="About this share of frames repeat the exact text of an earlier chat delta, "
        "status or metadata frame of the same conversation (the ground truth lists each).",
        json_schema_extra=flag("--repeat-ratio"),
    )
    sim_malformed_ratio: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="About this share of frames cannot be read (cut short, not a JSON object, "
        "no type): they belong in convai.monitor.dlq (the ground truth lists each).",
        json_schema_extra=flag("--malformed-ratio"),
    )
    sim_replay_markers: bool = Field(
        False,
        description='Start each monitor connection with {"type":"connected"} and send '
        '{"type":"history_complete"} after the replay (never in the ground truth).',
        json_schema_extra=flag("--replay-markers"),
    )
    sim_initiated_seconds: float = Field(
        0.2,
        ge=0,
        description="How long a new conversation is listed 'initiated' (monitor refused 1008) "
        "before it is 'in-progress' and its first frame is generated.",
        json_schema_extra=flag("--initiated-seconds"),
    )
    sim_monitoring_events: str | None = Field(
        None,
        description="Per-agent monitoring_events selection, 'N=type,type;M=type' (N: agent "
        "number from 1): those agents' monitors stream only these types; the other frames stay "
        "in the REST transcript and out of the ground truth.",
        json_schema_extra=flag("--monitoring-events"),
    )
    sim_ramp_seconds: float = Field(
        0.0,
        ge=0,
        description="Spread the first conversations' starts over this many seconds.",
        json_schema_extra=flag("--ramp-seconds"),
    )
    sim_processing_seconds: float = Field(
        0.5,
        ge=0,
        description="How long an ended conversation stays 'processing' before 'done'.",
        json_schema_extra=flag("--processing-seconds"),
    )
    sim_rest_error_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of REST requests answered 429/503 (back-off tests).",
        json_schema_extra=flag("--rest-error-rate"),
    )
    sim_ground_truth: Path | None = Field(
        None,
        description="Write one JSON line per generated frame here.",
        json_schema_extra=flag("--ground-truth"),
    )
    sim_commands_log: Path | None = Field(
        None,
        description="Write one JSON line per command frame received here.",
        json_schema_extra=flag("--commands-log"),
    )
    sim_exit_when_done: bool = Field(
        False,
        description="Exit once every conversation has ended.",
        json_schema_extra=flag("--exit-when-done"),
    )
    sim_outage: str | None = Field(
        None,
        description="START:SECONDS: from START seconds after start, for SECONDS, monitor "
        "handshakes are answered HTTP 503 (REST keeps working).",
        json_schema_extra=flag("--outage"),
    )
    sim_webhook_url: str | None = Field(
        None,
        description="POST each conversation's post_call_transcription webhook here once it "
        "is done (retried on 5xx, 429 and 408).",
        json_schema_extra=flag("--webhook-url"),
    )
    sim_webhook_secret: SecretStr | None = Field(
        None,
        description="Secret the webhooks are signed with (ElevenLabs-Signature; never logged).",
        json_schema_extra=flag("--webhook-secret"),
    )

    @field_validator("sim_outage")
    @classmethod
    def _outage_shape(cls, value: str | None) -> str | None:
        if value is not None:
            parse_outage(value)
        return value

    @field_validator("sim_monitoring_events")
    @classmethod
    def _selection_shape(cls, value: str | None) -> str | None:
        if value is not None:
            parse_selection(value)
        return value

    def selection(self) -> dict[int, frozenset[str]]:
        """Agent index (from 0) → the event types its monitors stream; absent: every type."""
        spec = self.sim_monitoring_events
        return {} if spec is None else parse_selection(spec)

    def outage(self) -> tuple[float, float] | None:
        """``(start, end)`` seconds after start of the monitor outage, if any."""
        return None if self.sim_outage is None else parse_outage(self.sim_outage)


def parse_outage(value: str) -> tuple[float, float]:
    """``"START:SECONDS"`` as ``(start, end)``; raises ValueError with the expected shape."""
    start, sep, seconds = value.partition(":")
    try:
        begin, length = float(start), float(seconds)
    except ValueError:
        begin = length = -1.0
    if not sep or begin < 0 or length <= 0:
        raise ValueError("expected START:SECONDS, e.g. 10:25 (seconds after start, duration)")
    return begin, begin + length


def parse_selection(value: str) -> dict[int, frozenset[str]]:
    """``"1=user_transcript,agent_response;3=error"`` as ``{0: {...}, 2: {...}}``."""
    out: dict[int, frozenset[str]] = {}
    for part in filter(None, (p.strip() for p in value.split(";"))):
        number, sep, types = part.partition("=")
        names = frozenset(filter(None, (t.strip() for t in types.split(","))))
        if not sep or not number.strip().isdigit() or int(number) < 1 or not names:
            raise ValueError("expected N=type,type;M=type (N: agent number from 1)")
        out[int(number) - 1] = names
    return out
