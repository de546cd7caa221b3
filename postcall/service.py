"""``convostream webhooks`` as a service: the receiver, the backfill beside it, the ops port."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web
from aiokafka import AIOKafkaProducer

from convostream import readiness
from convostream.logs import get_logger
from convostream.ops import Health, serve
from postcall.metrics import WebhookMetrics
from postcall.settings import WebhookSettings
from postcall.webhooks import Receiver
from schemas.serde import open_serde
from schemas.topics import CONVERSATIONS, MONITOR_EVENTS, POSTCALL

log = get_logger("webhooks")


def producer(settings: WebhookSettings, name: str) -> AIOKafkaProducer:
    """Idempotent, acks=all, no linger: each record is its own batch, visible at once."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        **settings.kafka_security().client_kwargs(),
        client_id=name,
        enable_idempotence=True,
        acks="all",
        linger_ms=0,
        max_request_size=2 * settings.webhook_max_body_bytes + 65536,
    )


async def run(settings: WebhookSettings, metrics: WebhookMetrics, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set; the port actually bound is logged (``--port 0``)."""
    assert settings.webhook_secret is not None
    health = Health("webhooks")
    health.declare("broker", "receiver")
    health.start_heartbeat()
    ops = serve(settings.metrics_port, health, metrics.registry)
    # wait for the broker and registry like every component (exit 3, or 2 when refused)
    if not await readiness.dependencies_ready(settings, stop):
        if ops is not None:
            ops.shutdown()
        return
    # The backfill also writes repaired events and verdicts.
    writes = [POSTCALL, MONITOR_EVENTS, CONVERSATIONS] if settings.webhook_backfill else [POSTCALL]
    serde = await open_serde(
        settings.schema_registry_url,
        writes,
        settings.topic_prefix,
        lookup_only=settings.schema_registry_lookup_only,
        access=settings.registry_access(),
    )
    kafka = producer(settings, "webhooks")
    topic = POSTCALL.full_name(settings.topic_prefix)
    runner: web.AppRunner | None = None
    backfill: asyncio.Task[None] | None = None
    try:
        await kafka.start()
        health.set("broker", True)

        async def publish(key: bytes, value: bytes) -> None:
            await kafka.send_and_wait(topic, value, key=key)

        receiver = Receiver(
            settings.webhook_secret.get_secret_value().encode(),
            publish,
            serde,
            metrics,
            settings.webhook_max_body_bytes,
            settings.webhook_tolerance_seconds,
        )
        runner = web.AppRunner(receiver.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, settings.webhook_host, settings.webhook_port)
        await site.start()
        port = runner.addresses[0][1]
        health.set("receiver", True)
        log.info("webhook receiver listening", host=settings.webhook_host, port=port)
        if settings.webhook_backfill:
            from postcall.runner import Backfill

            backfill = asyncio.create_task(
                Backfill(settings, serde, metrics, health, kafka).run(), name="backfill"
            )
        waiters = [asyncio.create_task(stop.wait())] + ([backfill] if backfill else [])
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if backfill is not None and backfill.done():
            backfill.result()  # a crashed backfill stops the process, loudly
    finally:
        if backfill is not None:
            backfill.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await backfill
        if runner is not None:
            await runner.cleanup()
        await kafka.stop()
        await serde.close()
        if ops is not None:
            ops.shutdown()
