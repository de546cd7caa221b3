"""The post-call webhook receiver: verify, bound, de-duplicate, publish a ``PostCall`` record.

Every POST (any path, so the upstream's webhook URL is free to choose) goes through, in order:
the body bound (413, read by aiohttp up to ``client_max_size``), the signature over the raw
bytes (401), the body (400), then the delivery digest: a delivery already published answers 200
without publishing again, since upstream retries until it sees a 2xx. Only a broker failure
answers 503, so that upstream retries later. Answers carry a short reason, never the secret.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiokafka.errors import KafkaError

from convostream.logs import get_logger
from postcall.metrics import WebhookMetrics
from postcall.record import BadWebhook, parse
from schemas.serde import Serde
from schemas.webhooks import SIGNATURE_HEADER, SignatureError, verify

# (key, value) -> published; raises when the broker did not take it
Publish = Callable[[bytes, bytes], Awaitable[None]]

SEEN_DELIVERIES = 100_000  # digests remembered for retries (32 bytes each)

log = get_logger("webhooks")


class Receiver:
    """Handles webhook deliveries; :meth:`app` is the aiohttp application."""

    def __init__(
        self,
        secret: bytes,
        publish: Publish,
        serde: Serde,
        metrics: WebhookMetrics,
        max_body_bytes: int,
        tolerance_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret
        self._publish = publish
        self._serde = serde
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.tolerance = tolerance_seconds
        self._clock = clock
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[bool]] = {}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_post("/{path:.*}", self.handle)
        return app

    def _answer(self, outcome: str, status: int, reason: str = "") -> web.Response:
        self.metrics.requests.labels(outcome).inc()
        body: dict[str, str] = {"status": outcome}
        if reason:
            body["reason"] = reason
        return web.json_response(body, status=status)

    async def handle(self, request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._answer("too_large", 413, f"body over {self.max_body_bytes} bytes")
        now = self._clock()
        try:
            verify(request.headers.get(SIGNATURE_HEADER), body, self._secret, now, self.tolerance)
        except SignatureError as exc:
            return self._answer(exc.reason, 401, str(exc))
        try:
            parsed = parse(body, int(now * 1_000_000))
        except BadWebhook as exc:
            return self._answer("bad_request", 400, str(exc))
        record = parsed.record
        if record is None:
            return self._answer("ignored", 200, f"{parsed.webhook_type} is not published")
        digest = record["body_sha256"]
        pending = self._inflight.get(digest)
        if pending is not None:  # a retry while the first copy is being published
            published = await asyncio.shield(pending)
            return self._answer("duplicate", 200) if published else self._unavailable()
        if digest in self._seen:
            self._seen.move_to_end(digest)
            return self._answer("duplicate", 200)
        task = asyncio.ensure_future(self._send(record))
        self._inflight[digest] = task
        try:
            published = await asyncio.shield(task)
        finally:
            del self._inflight[digest]
        if not published:
            return self._unavailable()
        self._seen[digest] = None
        if len(self._seen) > SEEN_DELIVERIES:
            self._seen.popitem(last=False)
        return self._answer("accepted", 200)

    def _unavailable(self) -> web.Response:
        return self._answer("unavailable", 503, "broker unavailable, retry later")

    async def _send(self, record: dict[str, Any]) -> bool:
        try:
            await self._publish(
                record["conversation_id"].encode(), self._serde.encode("PostCall", record)
            )
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("post-call record not published", error=type(exc).__name__)
            return False
        return True
