"""The upstream client: one retry policy honouring ``Retry-After``, one error type, encoded ids."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from commands.pool import ConnectFailed, SocketPool
from upstream.conversations import ConversationApi
from upstream.rest import RetryPolicy, UpstreamClient, UpstreamError
from upstream.urls import conversation_path, monitor_url
from upstream.websocket import open_monitor, opened

KEY = "sk-upstream-test-key"


@dataclass
class Server:
    """A loopback HTTP server answering from a script of ``(status, headers, body)``."""

    script: list[tuple[int, dict[str, str], str]]
    url: str = ""
    seen: list[tuple[float, str, str | None]] = field(default_factory=list)


@pytest.fixture
async def server() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    runners: list[web.AppRunner] = []

    async def start(*script: tuple[int, dict[str, str], str]) -> Server:
        srv = Server(list(script))

        async def handle(request: web.Request) -> web.Response:
            srv.seen.append((time.monotonic(), request.raw_path, request.headers.get("xi-api-key")))
            status, headers, body = srv.script.pop(0) if srv.script else (503, {}, "")
            return web.Response(status=status, headers=headers, text=body)

        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        srv.url = f"http://127.0.0.1:{port}"
        runners.append(runner)
        return srv

    yield start
    for runner in runners:
        await runner.cleanup()


def test_conversation_ids_are_percent_encoded() -> None:
    assert conversation_path("a/b c?d") == "/v1/convai/conversations/a%2Fb%20c%3Fd"
    assert (
        monitor_url("https://api.example/", "conv/1")
        == "wss://api.example/v1/convai/conversations/conv%2F1/monitor"
    )
    assert (
        monitor_url("ws://127.0.0.1:9", "c") == "ws://127.0.0.1:9/v1/convai/conversations/c/monitor"
    )


async def test_retry_after_is_honoured_then_the_answer_returned(
    server: Callable[..., Awaitable[Server]],
) -> None:
    srv = await server((429, {"Retry-After": "1"}, ""), (503, {}, ""), (200, {}, '{"ok": true}'))
    errors: list[str] = []
    client = UpstreamClient(
        srv.url, KEY, timeout=5, retry=RetryPolicy(4, 0.01, 5.0), on_error=errors.append
    )
    try:
        status, body = await client.get(conversation_path("c/1"))
    finally:
        await client.close()
    assert (status, body) == (200, {"ok": True})
    assert errors == ["429", "503"]
    assert [path for _at, path, _key in srv.seen] == ["/v1/convai/conversations/c%2F1"] * 3
    assert all(key == KEY for _at, _path, key in srv.seen)
    # a lower bound only (load can only lengthen it): the Retry-After second, not the 10 ms back-off
    assert srv.seen[1][0] - srv.seen[0][0] >= 0.9


async def test_exhausted_retries_raise_one_retriable_error(
    server: Callable[..., Awaitable[Server]],
) -> None:
    srv = await server()  # 503 forever
    client = UpstreamClient(srv.url, KEY, timeout=5, retry=RetryPolicy(3, 0.01, 0.02))
    try:
        with pytest.raises(UpstreamError) as caught:
            await client.get("/v1/convai/conversations")
    finally:
        await client.close()
    assert caught.value.retriable
    assert isinstance(caught.value, ConnectionError)
    assert "HTTP 503" in str(caught.value)
    assert KEY not in str(caught.value)
    assert len(srv.seen) == 3


async def test_lookup_maps_statuses(server: Callable[..., Awaitable[Server]]) -> None:
    srv = await server(
        (200, {}, '{"status": "in-progress", "metadata": {"text_only": true}}'),
        (404, {}, ""),
        (401, {}, ""),
    )
    api = ConversationApi(srv.url, KEY, timeout=5)
    try:
        info = await api.conversation("c1")
        assert (info.status, info.chat) == ("in-progress", True)
        assert (await api.conversation("c2")).status is None
        with pytest.raises(UpstreamError, match="401") as caught:
            await api.conversation("c3")
        assert not caught.value.retriable
    finally:
        await api.close()


async def test_monitor_handshakes_refused_for_good_are_not_retriable(
    server: Callable[..., Awaitable[Server]],
) -> None:
    srv = await server((403, {}, ""), (404, {}, ""), (503, {}, ""))
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        unreachable = f"http://127.0.0.1:{closed.getsockname()[1]}"
    verdicts = []
    for base in (srv.url, srv.url, srv.url, unreachable):
        with pytest.raises(UpstreamError) as caught:
            async with opened(
                open_monitor(base, "c1", KEY, open_timeout=5, ping_interval=None, max_queue=None)
            ):
                pass
        verdicts.append((str(caught.value), caught.value.retriable))
    assert verdicts == [
        ("monitor handshake answered HTTP 403", False),
        ("monitor handshake answered HTTP 404", False),
        ("monitor handshake answered HTTP 503", True),
        ("ConnectionRefusedError", True),
    ]


async def test_the_command_pool_reports_a_refused_monitor_socket_by_its_answer(
    server: Callable[..., Awaitable[Server]],
) -> None:
    """Command workers open sockets through the same classification (``connected``)."""
    srv = await server((404, {}, ""))
    pool = SocketPool(srv.url, KEY, idle_timeout=5, max_sockets=2, connect_timeout=5, settle=0)
    with pytest.raises(ConnectFailed, match=r"monitor socket not opened: .*HTTP 404"):
        await pool.open("c1")
    assert len(pool) == 0
    assert srv.seen[0][2] == KEY
