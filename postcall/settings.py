"""Knobs of ``convostream webhooks``: every field is a flag and a ``CONVOSTREAM_*`` variable."""

from __future__ import annotations

from pydantic import Field, SecretStr

from convostream.settings import OpsSettings, UpstreamSettings, flag
from schemas.webhooks import DEFAULT_TOLERANCE_SECONDS


class WebhookSettings(UpstreamSettings, OpsSettings):
    """The webhook receiver and the gap backfill it runs beside."""

    webhook_host: str = Field(
        "0.0.0.0",  # the upstream posts from outside the pod
        description="Interface the webhook receiver listens on.",
        json_schema_extra=flag("--host"),
    )
    webhook_port: int = Field(
        8090,
        ge=0,
        le=65535,
        description="Port of the webhook receiver (0: any free port, logged).",
        json_schema_extra=flag("--port"),
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="Webhook signing secret shared with ElevenLabs (required; never logged).",
        json_schema_extra={"cli": False},
    )
    webhook_max_body_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="Largest body accepted; larger deliveries are answered 413.",
        json_schema_extra=flag("--max-body-bytes"),
    )
    webhook_tolerance_seconds: float = Field(
        DEFAULT_TOLERANCE_SECONDS,
        gt=0,
        description="Signed timestamps further than this from now are refused (401).",
        json_schema_extra=flag("--tolerance-seconds"),
    )
    webhook_backfill: bool = Field(
        True,
        description="Also repair gaps: republish turns the live stream missed from transcripts.",
        json_schema_extra=flag("--backfill"),
    )
    webhook_backfill_wait_seconds: float = Field(
        120.0,
        gt=0,
        description="How long a gapped conversation may stay 'processing' upstream before its "
        "verdict is given from what is there (gapped).",
        json_schema_extra=flag("--backfill-wait-seconds"),
    )
    webhook_unseen_seconds: float = Field(
        30.0,
        gt=0,
        description="How long after its post-call webhook a conversation that no collector "
        "reported is taken for missed whole (it lived and ended while none could discover "
        "it) and repaired from the transcript.",
        json_schema_extra=flag("--unseen-seconds"),
    )
