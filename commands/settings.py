"""Knobs of ``convostream command-worker`` and ``send-command``: flags and ``CONVOSTREAM_*``.

Signing keys never come from flags (they would show in ``ps``): environment variables, a
``.env`` file or secret files only.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from pydantic import Field, SecretStr

from commands.keyring import KeyRing, KeyRingError, parse_keys_json, read_keys_dir
from convostream.issuer import IssuerSettings, KeysError
from convostream.settings import OpsSettings, UpstreamSettings, flag

CRASH_POINTS = ("after_receive", "after_intent", "after_write", "after_result")


class CommandWorkerSettings(UpstreamSettings, OpsSettings):
    """One command worker process: authorisation, limits, sockets, metrics."""

    commands_policy_file: Path | None = Field(
        None,
        description="JSON policy: which issuer may send which command types and numbers "
        "(required).",
        json_schema_extra=flag("--policy-file"),
    )
    commands_keys_dir: Path | None = Field(
        None,
        description="Directory of issuer signing keys (e.g. a mounted Kubernetes secret): a "
        "file ISSUER holds the issuer's key without key id, a file ISSUER/KEY_ID one of its "
        "rotated keys.",
        json_schema_extra=flag("--keys-dir"),
    )
    commands_keys: SecretStr | None = Field(
        None,
        description='Issuer signing keys as JSON {"issuer": "key"} or, with key ids for '
        'rotation, {"issuer": {"key_id": "key"}} (environment only).',
        json_schema_extra={"cli": False},
    )
    commands_group_id: str = Field(
        "convostream-command-workers",
        description="Kafka consumer group of the command workers.",
        json_schema_extra=flag("--group-id"),
    )
    commands_worker_id: str | None = Field(
        None,
        description="This worker's id in results and logs (unset: hostname-pid).",
        json_schema_extra=flag("--worker-id"),
    )
    commands_fetch_wait_ms: int | None = Field(
        None,
        ge=1,
        description="Longest a fetch waits for new commands or results (fetch.max.wait.ms). "
        "Unset: 500, or 10 with CONVOSTREAM_BROKER_COMPAT=tansu, because Tansu answers a long "
        "poll only at its deadline instead of when data arrives.",
        json_schema_extra=flag("--fetch-wait-ms"),
    )
    commands_max_text_chars: int = Field(
        2000,
        ge=1,
        description="Longest contextual_update / send_human_message text, in characters.",
        json_schema_extra=flag("--max-text-chars"),
    )
    commands_max_ttl: float = Field(
        3600.0,
        gt=0,
        description="Longest allowed command lifetime expires_at - issued_at, in seconds.",
        json_schema_extra=flag("--max-ttl"),
    )
    commands_max_clock_skew: float = Field(
        30.0,
        ge=0,
        description="Most seconds a command's issued_at may lie ahead of this worker's clock; "
        "a command from further in the future is rejected (with --max-ttl this bounds how "
        "long a signed command stays replayable).",
        json_schema_extra=flag("--max-clock-skew"),
    )
    commands_rate_per_second: float = Field(
        2.0,
        gt=0,
        description="Per-conversation token bucket: commands per second.",
        json_schema_extra=flag("--rate-per-second"),
    )
    commands_rate_burst: int = Field(
        5,
        ge=1,
        description="Per-conversation token bucket: burst size.",
        json_schema_extra=flag("--rate-burst"),
    )
    commands_idle_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds an unused pooled monitor socket stays open.",
        json_schema_extra=flag("--idle-timeout"),
    )
    commands_max_sockets: int = Field(
        1000,
        ge=1,
        description="Most pooled monitor sockets; the least recently used is closed beyond.",
        json_schema_extra=flag("--max-sockets"),
    )
    commands_connect_timeout: float = Field(
        5.0,
        gt=0,
        description="Seconds to open a monitor socket, and per REST request.",
        json_schema_extra=flag("--connect-timeout"),
    )
    commands_connect_settle: float = Field(
        0.25,
        ge=0,
        description="After opening a socket, wait up to this long for the first frame or a "
        "close (a 1008 refusal arrives after the handshake).",
        json_schema_extra=flag("--connect-settle"),
    )
    commands_crash_at: str | None = Field(
        None,
        description="Fault injection for tests: SIGKILL this process at a crash point "
        f"({', '.join(CRASH_POINTS)}) of the first command delivered.",
        json_schema_extra={"cli": False},
    )

    def worker_id(self) -> str:
        return self.commands_worker_id or f"{socket.gethostname()}-{os.getpid()}"

    def issuer_keys(self) -> KeyRing:
        """Keys from ``commands_keys`` then ``commands_keys_dir`` (files win per key id)."""
        ring = KeyRing()
        if self.commands_keys is not None:
            try:
                ring = parse_keys_json(json.loads(self.commands_keys.get_secret_value()))
            except (ValueError, KeyRingError) as exc:
                problem = exc if isinstance(exc, KeyRingError) else "not JSON"
                raise KeysError(f"CONVOSTREAM_COMMANDS_KEYS: {problem}") from None
        if self.commands_keys_dir is not None:
            try:
                ring = ring.merged(read_keys_dir(self.commands_keys_dir))
            except KeyRingError as exc:
                raise KeysError(str(exc)) from None
        return ring


class SendCommandSettings(IssuerSettings):
    """One issuing service: its name, its signing key and how long to wait."""

    commands_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds to wait for the result.",
        json_schema_extra=flag("--timeout"),
    )
