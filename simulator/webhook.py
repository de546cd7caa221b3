"""Post-call webhooks as upstream sends them: signed ``post_call_transcription`` after ``done``.

Upstream retries transcript webhooks on 5xx, 429 and 408 (immediately, then after 30 s, 2 min,
8 min, 30 min); the simulator keeps the rule and the count but scales the delays down to
fractions of a second so tests finish. Each delivery is re-signed with the time of sending, as a
fresh HTTP request upstream would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp
import orjson

from convostream.logs import get_logger
from schemas.webhooks import SIGNATURE_HEADER, sign

RETRY_DELAYS = (0.0, 0.3, 1.2, 4.8, 18.0)  # upstream's 0 s, 30 s, 2, 8, 30 min, scaled by 1/100
RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))

log = get_logger("simulator")


def post_call_body(details: dict[str, Any], event_timestamp: int) -> bytes:
    """The webhook body: the conversation object of the REST details as ``data``."""
    return orjson.dumps(
        {"type": "post_call_transcription", "event_timestamp": event_timestamp, "data": details}
    )


class WebhookSender:
    """Delivers webhooks in background tasks; :meth:`close` waits for them (bounded)."""

    def __init__(self, url: str, secret: bytes) -> None:
        self.url = url
        self._secret = secret
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.delivered = 0
        self.failed = 0

    def send(self, details: dict[str, Any]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        body = post_call_body(details, int(time.time()))
        task = asyncio.create_task(self._deliver(body, details["conversation_id"]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, body: bytes, conversation_id: str) -> None:
        assert self._session is not None
        status: int | str = "not sent"
        for delay in RETRY_DELAYS:
            await asyncio.sleep(delay)
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(self._secret, body, int(time.time())),
            }
            try:
                async with self._session.post(self.url, data=body, headers=headers) as resp:
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
                continue
            if status not in RETRY_STATUSES:
                break
        if isinstance(status, int) and 200 <= status < 300:
            self.delivered += 1
        else:
            self.failed += 1
            log.warning("webhook not delivered", conversation_id=conversation_id, status=status)

    async def close(self, timeout: float = 5.0) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout)
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None
