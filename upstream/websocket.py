"""Monitor sockets: one place for the connect options every client of the upstream uses.

No compression (frames are small JSON, and deflate costs CPU per socket); the key travels only
in the ``xi-api-key`` header. Pings are answered within one interval or the socket is dropped.
"""

from __future__ import annotations

from websockets.asyncio.client import connect

from upstream.urls import monitor_url

DEFAULT_MAX_SIZE = 2**20  # websockets' own default frame limit
DEFAULT_CLOSE_TIMEOUT = 10.0  # websockets' own default


def open_monitor(
    base_url: str,
    conversation_id: str,
    api_key: str | None,
    *,
    open_timeout: float,
    ping_interval: float | None,
    max_queue: int | None,
    max_size: int = DEFAULT_MAX_SIZE,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
) -> connect:
    """``async with open_monitor(...) as ws`` or ``await open_monitor(...)``: the monitor socket
    of a conversation. ``base_url`` is the API's ``http(s)://`` (or ``ws(s)://``) base."""
    return connect(
        monitor_url(base_url, conversation_id),
        additional_headers={"xi-api-key": api_key} if api_key else {},
        open_timeout=open_timeout,
        ping_interval=ping_interval,
        ping_timeout=ping_interval,
        close_timeout=close_timeout,
        max_queue=max_queue,
        max_size=max_size,
        compression=None,
    )
