"""REST discovery: which conversations are in progress, and the status of one conversation.

``GET /v1/convai/conversations`` has no positive status filter, so finished statuses are
excluded (``exclude_statuses``) and paging follows ``next_cursor``. HTTP 429 and 5xx are retried
after ``Retry-After`` when given, else after a jittered exponential delay; the API key travels
only in the ``xi-api-key`` header and never appears in errors or logs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from convostream.logs import get_logger
from ingest.backoff import Backoff, retry_after
from ingest.metrics import Metrics

log = get_logger("ingest.discovery")

LIST_PATH = "/v1/convai/conversations"
EXCLUDED = ("initiated", "processing", "done", "failed")
IN_PROGRESS = "in-progress"
NOT_FOUND = "not-found"
UNAUTHORIZED = "unauthorized"
ENDED = frozenset({"processing", "done", "failed", NOT_FOUND})


@dataclass(frozen=True, slots=True)
class Summary:
    conversation_id: str
    agent_id: str | None
    status: str


class RestClient:
    """The two REST calls a collector makes, with retries that honour ``Retry-After``."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        metrics: Metrics,
        timeout: float,
        backoff_base: float,
        backoff_max: float,
        attempts: int = 8,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._headers = {"xi-api-key": api_key} if api_key else {}
        self._metrics = metrics
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._backoff = (backoff_base, backoff_max)
        self._attempts = attempts
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _get(self, path: str, params: list[tuple[str, str]]) -> tuple[int, Any]:
        """``(status, JSON body)``; 429/5xx and network errors are retried, then raised."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        backoff = Backoff(*self._backoff)
        for attempt in range(1, self._attempts + 1):
            wait: float | None = None
            try:
                async with self._session.get(self._base + path, params=params) as resp:
                    if resp.status == 429 or resp.status >= 500:
                        self._metrics.discovery_errors.labels(str(resp.status)).inc()
                        wait = retry_after(
                            resp.headers.get("Retry-After"), time.time(), self._backoff[1]
                        )
                        log.warning("upstream busy", path=path, status=resp.status, retry=attempt)
                    else:
                        return resp.status, await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                self._metrics.discovery_errors.labels(type(exc).__name__).inc()
                log.warning("REST request failed", path=path, error=type(exc).__name__)
            delay = backoff.next_delay()
            await asyncio.sleep(delay if wait is None else max(wait, delay / 2))
        raise ConnectionError(f"GET {path}: no answer after {self._attempts} attempts")

    async def in_progress(self, agent_id: str | None, page_size: int) -> AsyncIterator[Summary]:
        """Every conversation the upstream lists as in progress (all pages)."""
        cursor: str | None = None
        while True:
            params = [("page_size", str(page_size))] + [("exclude_statuses", s) for s in EXCLUDED]
            if agent_id:
                params.append(("agent_id", agent_id))
            if cursor:
                params.append(("cursor", cursor))
            status, body = await self._get(LIST_PATH, params)
            if status != 200 or not isinstance(body, dict):
                raise ConnectionError(f"GET {LIST_PATH} answered {status}")
            for item in body.get("conversations") or ():
                if isinstance(item, dict) and isinstance(item.get("conversation_id"), str):
                    yield Summary(
                        item["conversation_id"], item.get("agent_id"), str(item.get("status"))
                    )
            cursor = body.get("next_cursor")
            if not body.get("has_more") or not cursor:
                return

    async def status(self, conversation_id: str) -> str:
        """The REST status of one conversation, ``not-found`` or ``unauthorized``."""
        status, body = await self._get(f"{LIST_PATH}/{conversation_id}", [])
        if status == 404:
            return NOT_FOUND
        if status in (401, 403):
            return UNAUTHORIZED
        if status != 200 or not isinstance(body, dict):
            raise ConnectionError(f"GET conversation answered {status}")
        return str(body.get("status"))
