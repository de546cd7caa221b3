"""Pooled monitor sockets used to write command frames.

Why a pool: opening a socket costs a TCP (and TLS) handshake, the upgrade, and a replay burst
of up to 100 frames; writing on an open one costs a single frame (see bench/commands.py). A
socket stays open for ``idle_timeout`` after its last command, so a burst of commands for one
conversation (takeover, messages, hand-back) pays the handshake once. Frames the upstream sends
on it (replay and live events) are read and dropped, so its buffers never fill up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from upstream.rest import UpstreamError
from upstream.websocket import ClientConnection, ConnectionClosed, State, connected, open_monitor


class ConnectFailed(Exception):
    """The monitor socket could not be opened, or the upstream closed it right away."""


@dataclass(eq=False)
class _Socket:
    ws: ClientConnection
    last_used: float
    first_frame: asyncio.Event = field(default_factory=asyncio.Event)
    drain: asyncio.Task[None] | None = None


class SocketPool:
    """At most one socket per conversation, at most ``max_sockets`` in all (LRU beyond)."""

    def __init__(
        self,
        upstream_url: str,
        api_key: str,
        *,
        idle_timeout: float,
        max_sockets: int,
        connect_timeout: float,
        settle: float,
    ) -> None:
        self._upstream = upstream_url
        self._api_key = api_key
        self.idle_timeout = idle_timeout
        self.max_sockets = max_sockets
        self.connect_timeout = connect_timeout
        self.settle = settle
        self._sockets: OrderedDict[str, _Socket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sockets)

    def warm(self, conversation_id: str) -> ClientConnection | None:
        """The open socket of this conversation, if the pool has one."""
        sock = self._sockets.get(conversation_id)
        if sock is None:
            return None
        if sock.ws.state is not State.OPEN:
            self._forget(conversation_id, sock)
            return None
        sock.last_used = time.monotonic()
        self._sockets.move_to_end(conversation_id)
        return sock.ws

    async def open(self, conversation_id: str) -> ClientConnection:
        """Open a socket, wait until it proves open (first frame) or ``settle`` passes."""
        try:
            async with asyncio.timeout(self.connect_timeout):
                ws = await connected(
                    open_monitor(
                        self._upstream,
                        conversation_id,
                        self._api_key,
                        open_timeout=self.connect_timeout,
                        ping_interval=20,
                        max_queue=None,
                    )
                )
        except UpstreamError as exc:
            raise ConnectFailed(f"monitor socket not opened: {exc}") from None
        except TimeoutError:
            raise ConnectFailed("monitor socket not opened: TimeoutError") from None
        sock = _Socket(ws, time.monotonic())
        sock.drain = asyncio.create_task(self._drain(conversation_id, sock))
        if self.settle > 0:
            first = asyncio.create_task(sock.first_frame.wait())
            await asyncio.wait(
                {first, sock.drain}, timeout=self.settle, return_when="FIRST_COMPLETED"
            )
            first.cancel()
        if ws.state is not State.OPEN:
            await self._close(sock)
            raise ConnectFailed(
                f"upstream closed the monitor socket on connect ({ws.close_code} "
                f"{ws.close_reason or 'no reason'})"
            )
        old = self._sockets.pop(conversation_id, None)
        if old is not None:
            await self._close(old)
        self._sockets[conversation_id] = sock
        while len(self._sockets) > self.max_sockets:
            _, lru = self._sockets.popitem(last=False)
            await self._close(lru)
        return ws

    async def _drain(self, conversation_id: str, sock: _Socket) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for _frame in sock.ws:
                sock.first_frame.set()
        self._forget(conversation_id, sock)

    def _forget(self, conversation_id: str, sock: _Socket) -> None:
        if self._sockets.get(conversation_id) is sock:
            del self._sockets[conversation_id]

    async def discard(self, conversation_id: str) -> None:
        sock = self._sockets.pop(conversation_id, None)
        if sock is not None:
            await self._close(sock)

    async def _close(self, sock: _Socket) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sock.ws.close(), 2)
        if sock.drain is not None:
            sock.drain.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sock.drain

    async def sweep(self) -> None:
        """Close sockets idle for longer than ``idle_timeout``."""
        now = time.monotonic()
        for conversation_id, sock in list(self._sockets.items()):
            if now - sock.last_used >= self.idle_timeout:
                self._forget(conversation_id, sock)
                await self._close(sock)

    async def close(self) -> None:
        socks = list(self._sockets.values())
        self._sockets.clear()
        await asyncio.gather(*(self._close(s) for s in socks))
