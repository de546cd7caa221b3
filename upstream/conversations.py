"""``GET /v1/convai/conversations/{id}``: whether a conversation is live, and chat or voice.

Used by the command workers (takeover commands are for chat only) and the rules engine (rules
on the channel). The kind comes from ``metadata.text_only``: true means chat, false voice. The
monitor socket's ``conversation_initiation_metadata`` only names audio formats, which a chat
conversation may still carry, so it cannot tell the two apart reliably.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from upstream.rest import RetryPolicy, UpstreamClient, UpstreamError
from upstream.urls import conversation_path

# A lookup sits on the path of a command or a rule: a few quick tries, not the collector's eight.
LOOKUP_RETRY = RetryPolicy(attempts=3, backoff_base=0.4, backoff_max=0.8)


@dataclass(frozen=True, slots=True)
class ConversationInfo:
    """``status`` None: the upstream does not know the conversation (404)."""

    status: str | None
    chat: bool | None


class ConversationApi:
    """``GET /v1/convai/conversations/{id}`` with a few retries on 429 and 5xx."""

    def __init__(
        self, base_url: str, api_key: str, timeout: float, retry: RetryPolicy = LOOKUP_RETRY
    ) -> None:
        self._client = UpstreamClient(base_url, api_key, timeout=timeout, retry=retry)

    async def conversation(self, conversation_id: str) -> ConversationInfo:
        status, body = await self._client.get(conversation_path(conversation_id))
        if status == 404:
            return ConversationInfo(None, None)
        if status != 200:
            raise UpstreamError(f"conversation lookup answered HTTP {status}", retriable=False)
        return _info(body)

    async def close(self) -> None:
        await self._client.close()


def _info(body: Any) -> ConversationInfo:
    if not isinstance(body, dict):
        raise UpstreamError("conversation lookup returned no JSON object", retriable=False)
    status = body.get("status")
    metadata = body.get("metadata")
    text_only = metadata.get("text_only") if isinstance(metadata, dict) else None
    return ConversationInfo(
        status if isinstance(status, str) else "unknown",
        text_only if isinstance(text_only, bool) else None,
    )
