"""Upstream URLs: REST paths and monitor sockets, conversation ids percent-encoded."""

from __future__ import annotations

from urllib.parse import quote

CONVERSATIONS_PATH = "/v1/convai/conversations"


def conversation_path(conversation_id: str) -> str:
    """``/v1/convai/conversations/{id}`` with the id percent-encoded (``/`` included)."""
    return f"{CONVERSATIONS_PATH}/{quote(conversation_id, safe='')}"


def websocket_base(http_url: str) -> str:
    """``https://host`` → ``wss://host`` (``http`` → ``ws``); other schemes pass unchanged."""
    base = http_url.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://") :]
    if base.startswith("http://"):
        return "ws://" + base[len("http://") :]
    return base


def monitor_url(http_url: str, conversation_id: str) -> str:
    """The monitor socket of a conversation; ``http_url`` may already be ``ws(s)://``."""
    return f"{websocket_base(http_url)}{conversation_path(conversation_id)}/monitor"
