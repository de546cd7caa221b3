"""The upstream as the command worker sees it: monitor-socket URLs and the conversation REST call.

The conversation's kind comes from ``GET /v1/convai/conversations/{id}``: ``metadata.text_only``
true means chat (takeover commands allowed), false voice. The monitor socket's
``conversation_initiation_metadata`` only names audio formats, which a chat conversation may
still carry, so it cannot tell the two apart reliably.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


def websocket_base(http_url: str) -> str:
    """``https://host`` → ``wss://host`` (``http`` → ``ws``); other schemes pass unchanged."""
    base = http_url.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://") :]
    if base.startswith("http://"):
        return "ws://" + base[len("http://") :]
    return base


def monitor_url(http_url: str, conversation_id: str) -> str:
    return (
        f"{websocket_base(http_url)}/v1/convai/conversations/"
        f"{quote(conversation_id, safe='')}/monitor"
    )


class UpstreamError(Exception):
    """The REST API could not answer (network, 401, repeated 429/5xx)."""


@dataclass(frozen=True, slots=True)
class ConversationInfo:
    """``status`` None: the upstream does not know the conversation (404)."""

    status: str | None
    chat: bool | None


class ConversationApi:
    """``GET /v1/convai/conversations/{id}`` with a few retries on 429 and 5xx."""

    def __init__(self, base_url: str, api_key: str, timeout: float, attempts: int = 3) -> None:
        self._base = base_url.rstrip("/")
        self._headers = {"xi-api-key": api_key}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._attempts = attempts
        self._session: aiohttp.ClientSession | None = None

    async def conversation(self, conversation_id: str) -> ConversationInfo:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        url = f"{self._base}/v1/convai/conversations/{quote(conversation_id, safe='')}"
        last = ""
        for attempt in range(self._attempts):
            if attempt:
                await asyncio.sleep(0.2 * 2**attempt)
            try:
                async with self._session.get(url) as response:
                    if response.status == 404:
                        return ConversationInfo(None, None)
                    if response.status in RETRY_STATUSES:
                        last = f"HTTP {response.status}"
                        continue
                    if response.status != 200:
                        raise UpstreamError(f"conversation lookup answered HTTP {response.status}")
                    body: Any = await response.json()
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = type(exc).__name__
                continue
            return _info(body)
        raise UpstreamError(f"conversation lookup failed {self._attempts} times (last: {last})")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _info(body: Any) -> ConversationInfo:
    if not isinstance(body, dict):
        raise UpstreamError("conversation lookup returned no JSON object")
    status = body.get("status")
    metadata = body.get("metadata")
    text_only = metadata.get("text_only") if isinstance(metadata, dict) else None
    return ConversationInfo(
        status if isinstance(status, str) else "unknown",
        text_only if isinstance(text_only, bool) else None,
    )
