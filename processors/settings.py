"""Settings of ``convostream process`` (flags and ``CONVOSTREAM_*`` variables)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from convostream.settings import CommonSettings


class ProcessorSettings(CommonSettings):
    database_url: str = Field(
        "sqlite:///var/convostream.db",
        description="SQL store for aggregates: postgresql://... or sqlite:///path.",
    )
    metrics_port: int = Field(
        0, ge=0, description="Port of the Prometheus /metrics endpoint (0: off)."
    )
    processor_app_id: str = Field(
        "convostream-processors",
        description="Faust application id: consumer group and prefix of its internal topics.",
    )
    processor_data_dir: Path = Field(
        Path("var/processors"), description="Faust data directory (RocksDB tables)."
    )
    processor_store: str = Field(
        "auto",
        description="Table store: rocksdb, memory, or auto (rocksdb when rocksdict is installed).",
    )
    processor_web_host: str = Field("127.0.0.1", description="Bind address of the lookup API.")
    processor_web_port: int = Field(
        6066, ge=0, description="Port of the lookup API GET /conversations/{id} (0: off)."
    )
    processor_window_seconds: float = Field(60.0, gt=0, description="Agent window size.")
    processor_grace_seconds: float = Field(
        10.0, ge=0, description="How long after its end a window still accepts events."
    )
    processor_idle_seconds: float = Field(
        30.0,
        ge=0,
        description="Wall-clock wait after end + grace before a quiet agent's window closes.",
    )
    processor_batch_size: int = Field(
        5000, ge=1, description="Most events handled (and emitted, written) as one batch."
    )
    processor_flush_seconds: float = Field(
        0.5,
        gt=0,
        description="Longest wait for a batch to fill: metrics are emitted at most this often "
        "per conversation under light load.",
    )
    processor_fetch_wait_ms: int = Field(
        10,
        ge=1,
        description="Longest a fetch of the source topics waits for data (fetch.max.wait.ms). "
        "Short because some brokers (the embedded Tansu) answer a long poll only at its "
        "deadline, which would add it to the latency of every event arriving meanwhile.",
    )
