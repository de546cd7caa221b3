"""Settings of ``convostream process`` (flags and ``CONVOSTREAM_*`` variables)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from convostream.settings import OpsSettings

# fetch.max.wait.ms of the source topics on Tansu (README, performance: at 2,000 conversations a
# 10 ms wait got 246-693 of 1,000 events/s into SQL, 100-200 ms 930; no slower at 5,000 events/s
# on 500 conversations in bench/process.py)
TANSU_FETCH_WAIT_MS = 100


class ProcessorSettings(OpsSettings):
    database_url: str = Field(
        "sqlite:///var/convostream.db",
        description="SQL store for aggregates: postgresql://... or sqlite:///path.",
    )
    processor_app_id: str = Field(
        "convostream-processors",
        description="Faust application id: consumer group and prefix of its internal topics.",
    )
    processor_data_dir: Path = Field(
        Path("var/processors"), description="Faust data directory (RocksDB tables)."
    )
    processor_store: Literal["auto", "rocksdb", "memory"] = Field(
        "auto",
        description="Table store: rocksdb, memory, or auto (rocksdb when rocksdict is installed).",
    )
    processor_web_host: str = Field("127.0.0.1", description="Bind address of the lookup API.")
    processor_web_port: int = Field(
        6066, ge=0, le=65535, description="Port of the lookup API GET /conversations/{id} (0: off)."
    )
    processor_window_seconds: float = Field(60.0, gt=0, description="Agent window size.")
    processor_window_retention_days: float = Field(
        90.0,
        ge=0,
        description="Delete final agent_window_metrics rows that ended longer ago than this "
        "(0: keep them forever); conversation_metrics rows are kept.",
    )
    processor_state_retention_days: float = Field(
        7.0,
        ge=0,
        description="Delete a conversation's state (table and changelog) once no batch has "
        "touched it for this long, and skip events older than this for conversations without "
        "state (0: keep every state forever). The default matches the events topic's "
        "retention: older events cannot be read again anyway.",
    )
    processor_grace_seconds: float = Field(
        10.0, ge=0, description="How long after its end a window still accepts events."
    )
    processor_idle_seconds: float = Field(
        30.0,
        ge=0,
        description="Wall-clock wait after end + grace before a quiet agent's window closes.",
    )
    processor_max_future_seconds: float = Field(
        300.0,
        gt=0,
        description="How far an event's received_at may lie ahead of the processor's clock "
        "when it is windowed; later times are clamped (and counted), so one collector with a "
        "clock in the future cannot close every agent window.",
    )
    processor_batch_size: int = Field(
        5000, ge=1, description="Most events handled (and emitted, written) as one batch."
    )
    processor_replication_factor: int | None = Field(
        None,
        ge=1,
        description="Replicas of the Faust internal topics (changelogs, repartition). Unset: "
        "the cluster's default.replication.factor (1 with CONVOSTREAM_BROKER_COMPAT=tansu).",
    )
    processor_fetch_wait_ms: int | None = Field(
        None,
        ge=1,
        description="Longest a fetch of the source topics waits for data (fetch.max.wait.ms). "
        f"Unset: 500, or {TANSU_FETCH_WAIT_MS} with CONVOSTREAM_BROKER_COMPAT=tansu, which "
        "answers a long poll only at its deadline: the wait is then the least time between two "
        "batches, and shorter waits made batches too small to keep up with thousands of "
        "conversations.",
    )

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, url: str) -> str:
        # The message never repeats the URL: it may carry a password.
        if not url.startswith(("postgresql://", "postgres://", "sqlite://")):
            scheme = url.partition("://")[0] if "://" in url else "(none)"
            raise ValueError(
                f"unsupported database scheme {scheme!r}: use postgresql://... or sqlite:///path"
            )
        return url

    def database_password(self) -> str | None:
        """The password in ``database_url``, registered so that logs never show it."""
        return urlsplit(self.database_url).password

    processor_transcripts: bool = Field(
        True,
        description="Also write conversation_transcripts and conversation_summaries for "
        "finished conversations (reads every partition: enable on one replica).",
    )
