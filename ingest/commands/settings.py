"""Knobs of ``convostream command-worker`` and ``send-command``: flags and ``CONVOSTREAM_*``.

Signing keys never come from flags (they would show in ``ps``): environment variables, a
``.env`` file or secret files only.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr

from convostream.settings import CommonSettings, UpstreamSettings

CRASH_POINTS = ("after_receive", "after_intent", "after_write", "after_result")


def _flag(name: str, **extra: Any) -> dict[str, Any]:
    return {"flag": name, **extra}


class KeysError(ValueError):
    """Signing keys that cannot be read; the message never contains a key."""


class CommandWorkerSettings(UpstreamSettings):
    """One command worker process: authorisation, limits, sockets, metrics."""

    commands_policy_file: Path | None = Field(
        None,
        description="JSON policy: which issuer may send which command types and numbers "
        "(required).",
        json_schema_extra=_flag("--policy-file"),
    )
    commands_keys_dir: Path | None = Field(
        None,
        description="Directory of issuer signing keys: one file per issuer, named after it, "
        "holding the key (e.g. a mounted Kubernetes secret).",
        json_schema_extra=_flag("--keys-dir"),
    )
    commands_keys: SecretStr | None = Field(
        None,
        description='Issuer signing keys as JSON {"issuer": "key"} (environment only).',
        json_schema_extra={"cli": False},
    )
    commands_group_id: str = Field(
        "convostream-command-workers",
        description="Kafka consumer group of the command workers.",
        json_schema_extra=_flag("--group-id"),
    )
    commands_worker_id: str | None = Field(
        None,
        description="This worker's id in results and logs (unset: hostname-pid).",
        json_schema_extra=_flag("--worker-id"),
    )
    commands_fetch_wait_ms: int = Field(
        10,
        ge=1,
        description="Longest a fetch waits for new commands (fetch.max.wait.ms). Kept short "
        "because some brokers (the embedded Tansu) answer a long poll only at its deadline "
        "instead of when data arrives, which would add it to every command's latency.",
        json_schema_extra=_flag("--fetch-wait-ms"),
    )
    commands_max_text_chars: int = Field(
        2000,
        ge=1,
        description="Longest contextual_update / send_human_message text, in characters.",
        json_schema_extra=_flag("--max-text-chars"),
    )
    commands_max_ttl: float = Field(
        3600.0,
        gt=0,
        description="Longest allowed command lifetime expires_at - issued_at, in seconds.",
        json_schema_extra=_flag("--max-ttl"),
    )
    commands_rate_per_second: float = Field(
        2.0,
        gt=0,
        description="Per-conversation token bucket: commands per second.",
        json_schema_extra=_flag("--rate-per-second"),
    )
    commands_rate_burst: int = Field(
        5,
        ge=1,
        description="Per-conversation token bucket: burst size.",
        json_schema_extra=_flag("--rate-burst"),
    )
    commands_idle_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds an unused pooled monitor socket stays open.",
        json_schema_extra=_flag("--idle-timeout"),
    )
    commands_max_sockets: int = Field(
        1000,
        ge=1,
        description="Most pooled monitor sockets; the least recently used is closed beyond.",
        json_schema_extra=_flag("--max-sockets"),
    )
    commands_connect_timeout: float = Field(
        5.0,
        gt=0,
        description="Seconds to open a monitor socket, and per REST request.",
        json_schema_extra=_flag("--connect-timeout"),
    )
    commands_connect_settle: float = Field(
        0.25,
        ge=0,
        description="After opening a socket, wait up to this long for the first frame or a "
        "close (a 1008 refusal arrives after the handshake).",
        json_schema_extra=_flag("--connect-settle"),
    )
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of the Prometheus /metrics endpoint (0: disabled).",
        json_schema_extra=_flag("--metrics-port"),
    )
    commands_crash_at: str | None = Field(
        None,
        description="Fault injection for tests: SIGKILL this process at a crash point "
        f"({', '.join(CRASH_POINTS)}) of the first command delivered.",
        json_schema_extra={"cli": False},
    )

    def worker_id(self) -> str:
        return self.commands_worker_id or f"{socket.gethostname()}-{os.getpid()}"

    def issuer_keys(self) -> dict[str, str]:
        """Keys from ``commands_keys`` then ``commands_keys_dir`` (files win)."""
        keys: dict[str, str] = {}
        if self.commands_keys is not None:
            try:
                loaded = json.loads(self.commands_keys.get_secret_value())
            except ValueError:
                loaded = None
            if not isinstance(loaded, dict) or not all(
                isinstance(v, str) and v for v in loaded.values()
            ):
                raise KeysError('CONVOSTREAM_COMMANDS_KEYS: expected JSON {"issuer": "key"}')
            keys.update(loaded)
        if self.commands_keys_dir is not None:
            try:
                files = [p for p in self.commands_keys_dir.iterdir() if p.is_file()]
            except OSError as exc:
                raise KeysError(f"cannot list keys dir {self.commands_keys_dir}: {exc}") from None
            for path in files:
                if path.name.startswith("."):
                    continue  # Kubernetes secret volumes hold ..data links and dot files
                key = path.read_text("utf-8").strip()
                if key:
                    keys[path.name] = key
        return keys


class SendCommandSettings(CommonSettings):
    """One issuing service: its name, its signing key and how long to wait."""

    commands_issuer: str | None = Field(
        None,
        description="Issuer name put in issued_by; selects the key and policy (required).",
        json_schema_extra=_flag("--issuer"),
    )
    commands_key: SecretStr | None = Field(
        None,
        description="The issuer's HMAC signing key (environment only).",
        json_schema_extra={"cli": False},
    )
    commands_key_file: Path | None = Field(
        None,
        description="File holding the issuer's signing key (instead of CONVOSTREAM_COMMANDS_KEY).",
        json_schema_extra=_flag("--key-file"),
    )
    commands_ttl: float = Field(
        30.0,
        gt=0,
        description="Seconds until the command expires (expires_at = now + TTL).",
        json_schema_extra=_flag("--ttl"),
    )
    commands_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds to wait for the result.",
        json_schema_extra=_flag("--timeout"),
    )

    def signing_key(self) -> str:
        """The key from the file, else the variable; raises KeysError when there is none."""
        if self.commands_key_file is not None:
            try:
                key = self.commands_key_file.read_text("utf-8").strip()
            except OSError as exc:
                raise KeysError(f"cannot read key file {self.commands_key_file}: {exc}") from None
            if key:
                return key
        if self.commands_key is not None and self.commands_key.get_secret_value():
            return self.commands_key.get_secret_value()
        raise KeysError("no signing key: set CONVOSTREAM_COMMANDS_KEY or --key-file")
