"""Knobs of ``convostream collect``: every field is a flag and a ``CONVOSTREAM_*`` variable."""

from __future__ import annotations

import os
import socket

from aiokafka import codec
from pydantic import Field, field_validator

from convostream.settings import OpsSettings, UpstreamSettings, flag

# Codecs aiokafka can use in this environment: offering one whose library is missing would fail
# only at the first batch sent.
_OPTIONAL_CODECS = {"snappy": codec.has_snappy, "lz4": codec.has_lz4, "zstd": codec.has_zstd}
CODECS = ("none", "gzip", *(name for name, available in _OPTIONAL_CODECS.items() if available()))


def default_collector_id() -> str:
    """``hostname-pid``: unique per process, readable in records and logs."""
    return f"{socket.gethostname()}-{os.getpid()}"


class CollectorSettings(UpstreamSettings, OpsSettings):
    """Discovery, ownership, monitor sockets and publishing of one collector process."""

    collector_agent_ids: str = Field(
        "",
        description="Only monitor these agents (comma separated agent ids; empty: all).",
        json_schema_extra=flag("--agent-ids"),
    )
    collector_poll_interval: float = Field(
        2.0,
        gt=0,
        description="Seconds between REST discovery polls.",
        json_schema_extra=flag("--poll-interval"),
    )
    collector_page_size: int = Field(
        100,
        ge=1,
        le=100,
        description="page_size of GET /v1/convai/conversations.",
        json_schema_extra=flag("--page-size"),
    )
    collector_connect_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds to open a monitor socket (and per REST request).",
        json_schema_extra=flag("--connect-timeout"),
    )
    collector_ping_interval: float = Field(
        20.0,
        ge=0,
        description="Seconds between WebSocket keep-alive pings (0: none).",
        json_schema_extra=flag("--ping-interval"),
    )
    collector_backoff_base: float = Field(
        0.2,
        gt=0,
        description="First reconnect / REST retry delay in seconds (doubles, with jitter).",
        json_schema_extra=flag("--backoff-base"),
    )
    collector_backoff_max: float = Field(
        10.0,
        gt=0,
        description="Largest reconnect / REST retry delay in seconds.",
        json_schema_extra=flag("--backoff-max"),
    )
    collector_max_frame_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Frames larger than this go to the DLQ as oversize.",
        json_schema_extra=flag("--max-frame-bytes"),
    )
    collector_checkpoint_interval: float = Field(
        5.0,
        gt=0,
        description="Seconds between checkpoints of what each monitor has published (lifecycle "
        "records the next owner seeds from when a collector dies without a hand-over).",
        json_schema_extra=flag("--checkpoint-interval"),
    )
    collector_buffer_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="Bytes of encoded records held until the broker acknowledges them; when "
        "full, sockets stop being read (back-pressure) and a longer stall is covered by "
        "upstream's 100-frame replay. A larger buffer rides out longer broker stalls at the cost "
        "of resident memory.",
        json_schema_extra=flag("--buffer-bytes"),
    )
    collector_buffer_records: int = Field(
        50_000,
        ge=10,
        description="Records held until acknowledged (the other bound of the buffer).",
        json_schema_extra=flag("--buffer-records"),
    )
    collector_linger_ms: int = Field(
        5,
        ge=0,
        description="Linger (linger.ms): when idle, wait this long after a record before "
        "packing a batch.",
        json_schema_extra=flag("--linger-ms"),
    )
    collector_max_batch_bytes: int = Field(
        256 * 1024,
        ge=1024,
        description="Producer batch size per partition in bytes.",
        json_schema_extra=flag("--max-batch-bytes"),
    )
    collector_compression: str = Field(
        "none",
        description=f"Producer compression, one of the codecs installed: {', '.join(CODECS)}.",
        json_schema_extra=flag("--compression"),
    )
    collector_id: str = Field(
        "",
        description="This collector's id in records and logs (empty: hostname-pid).",
        json_schema_extra=flag("--collector-id"),
    )
    collector_group_id: str = Field(
        "convostream-collectors",
        description="Consumer group that shares the conversations among collectors.",
        json_schema_extra=flag("--group-id"),
    )

    @field_validator("collector_compression")
    @classmethod
    def _installed_codec(cls, value: str) -> str:
        if value not in CODECS:
            raise ValueError(f"{value!r} is not an installed codec; use one of {', '.join(CODECS)}")
        return value

    def resolved_id(self) -> str:
        return self.collector_id or default_collector_id()

    def agent_filter(self) -> tuple[str, ...]:
        return tuple(a.strip() for a in self.collector_agent_ids.split(",") if a.strip())
