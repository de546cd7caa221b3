"""Monitor sockets: one place for the connect options every client of the upstream uses.

The client is picows' ``picows.websockets``: websockets' asyncio API (``recv``, close codes,
keepalive pings, handshake errors) over a Cython frame parser. A monitor socket carries one
small frame at a time, and with websockets' pure-Python parser and message assembler each such
frame cost about twice the CPU (``bench/wsclient.py``: 54-56 against 30 µs a frame on 1,000
sockets at 5 frames/s each, with the collector's garbage-collector settings).

No compression (frames are small JSON, and deflate costs CPU per socket); the key travels only
in the ``xi-api-key`` header. Pings are answered within one interval or the socket is dropped.
:func:`connected` and :func:`opened` turn a failed connect into an
:class:`~upstream.rest.UpstreamError`, so that callers (collectors, command workers) decide by
its ``retriable`` flag instead of by websockets' exception classes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager

from picows.websockets import (
    ClientConnection,
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
    State,
    connect,
)

from upstream.rest import UpstreamError
from upstream.urls import monitor_url

DEFAULT_MAX_SIZE = 2**20  # websockets' own default frame limit
DEFAULT_CLOSE_TIMEOUT = 10.0  # websockets' own default
REFUSED = frozenset({401, 403, 404})  # handshake answers that another try will not change
READ_BUFFER = 4096  # initial read buffer per socket (picows grows it for a larger frame)

__all__ = ["ClientConnection", "ConnectionClosed", "State", "connected", "open_monitor", "opened"]


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
) -> Awaitable[ClientConnection]:
    """``await open_monitor(...)``, or :func:`opened`: the monitor socket of a conversation.
    ``base_url`` is the API's ``http(s)://`` (or ``ws(s)://``) base."""
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
        read_buffer_init_size=READ_BUFFER,
        use_aiofastnet=False,
    )


async def connected(connecting: Awaitable[ClientConnection]) -> ClientConnection:
    """The socket ``connecting`` opens, or an :class:`UpstreamError`: not retriable for a
    refused handshake (401, 403, 404) or a malformed URL, retriable for anything else
    (unreachable, timed out, busy, unavailable)."""
    try:
        return await connecting
    except InvalidStatus as exc:
        status = exc.response.status_code
        raise UpstreamError(
            f"monitor handshake answered HTTP {status}", retriable=status not in REFUSED
        ) from exc
    except InvalidURI as exc:
        raise UpstreamError(type(exc).__name__, retriable=False) from exc
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise UpstreamError(type(exc).__name__, retriable=True) from exc


@asynccontextmanager
async def opened(connecting: Awaitable[ClientConnection]) -> AsyncIterator[ClientConnection]:
    """``async with opened(open_monitor(...)) as ws``: the socket (:func:`connected`), closed
    on leaving; a failure while open is a retriable :class:`UpstreamError` too."""
    ws = await connected(connecting)
    async with ws:
        try:
            yield ws
        except (OSError, TimeoutError) as exc:  # the connection failed while open
            raise UpstreamError(type(exc).__name__, retriable=True) from exc
