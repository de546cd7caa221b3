"""REST discovery: which conversations are in progress, and the status of one conversation.

``GET /v1/convai/conversations`` has no positive status filter, so finished statuses are
excluded (``exclude_statuses``) and paging follows ``next_cursor``. Requests, retries and the
API key are :class:`upstream.rest.UpstreamClient`'s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from ingest.metrics import Metrics
from upstream.rest import RetryPolicy, UpstreamClient, UpstreamError
from upstream.urls import CONVERSATIONS_PATH, conversation_path

EXCLUDED = ("initiated", "processing", "done", "failed")
IN_PROGRESS = "in-progress"
INITIATED = "initiated"  # not started: a monitor is refused, but nothing is missed yet
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
        self._metrics = metrics
        self._client = UpstreamClient(
            base_url,
            api_key,
            timeout=timeout,
            retry=RetryPolicy(attempts, backoff_base, backoff_max),
            on_error=lambda reason: metrics.discovery_errors.labels(reason).inc(),
        )

    async def close(self) -> None:
        await self._client.close()

    async def in_progress(self, agent_id: str | None, page_size: int) -> AsyncIterator[Summary]:
        """Every conversation the upstream lists as in progress (all pages)."""
        cursor: str | None = None
        while True:
            params = [("page_size", str(page_size))] + [("exclude_statuses", s) for s in EXCLUDED]
            if agent_id:
                params.append(("agent_id", agent_id))
            if cursor:
                params.append(("cursor", cursor))
            status, body = await self._client.get(CONVERSATIONS_PATH, params)
            if status != 200:  # 401/403 (a revoked key) must not look like quiet traffic
                self._metrics.discovery_errors.labels(str(status)).inc()
            if status != 200 or not isinstance(body, dict):
                raise UpstreamError(
                    f"GET {CONVERSATIONS_PATH} answered {status}",
                    retriable=status not in (401, 403),
                )
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
        status, body = await self._client.get(conversation_path(conversation_id))
        if status == 404:
            return NOT_FOUND
        if status in (401, 403):
            return UNAUTHORIZED
        if status != 200 or not isinstance(body, dict):
            raise UpstreamError(f"GET conversation answered {status}", retriable=True)
        return str(body.get("status"))
