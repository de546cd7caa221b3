"""The monitor's reading loop against scripted sockets: stalls, pauses and cancellations that
land between two frames, where a real upstream cannot place them on purpose."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from ingest.discovery import RestClient
from ingest.metrics import Metrics
from ingest.monitor import Context, Monitor
from ingest.publisher import Outgoing, Publisher
from ingest.recovery import ReadBack
from ingest.replay import frame_digest
from schemas.serde import Serde
from simulator.testing import wait_for
from upstream.websocket import ConnectionClosed

FRAMES = [orjson.dumps({"type": "note", "n": i}) for i in range(5)]


class Socket:
    """One scripted monitor connection: ``frames`` are received in order; None closes it."""

    close_code = 1006
    close_reason = ""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.on_recv: Callable[[], None] | None = None  # called once, as the next frame arrives

    def __await__(self) -> Generator[Any, None, Socket]:  # connecting succeeds at once
        return self._connected().__await__()

    async def _connected(self) -> Socket:
        return self

    async def __aenter__(self) -> Socket:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def recv(self, decode: bool = False) -> bytes:
        frame = await self.frames.get()
        if frame is None:
            raise ConnectionClosed(None, None)
        if self.on_recv is not None:
            hook, self.on_recv = self.on_recv, None
            hook()
        return frame

    def taken(self) -> bool:
        return self.frames.empty()


class Upstream:
    """Stands in for ``open_monitor``: each connection gets the next :class:`Socket`."""

    def __init__(self) -> None:
        self.sockets: list[Socket] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Socket:
        self.sockets.append(Socket())
        return self.sockets[-1]


def _context(ws_base: str) -> Context:
    """A collector's shared context whose publisher is never started (offered records stay in
    its FIFO) and whose REST is unreachable."""
    metrics = Metrics()
    return Context(
        collector_id="test",
        ws_base=ws_base,
        api_key=None,
        serde=Serde(),
        publisher=Publisher(lambda: AIOKafkaProducer(), metrics, 1000, 10**6),
        metrics=metrics,
        rest=RestClient("http://127.0.0.1:9", None, metrics, 1, 0.01, 0.05),
        events_topic="e",
        events_partitions=12,
        dlq_topic="d",
        dlq_partitions=3,
        lifecycle=lambda _record: None,
        connect_timeout=1,
        ping_interval=0,
        backoff_base=0.01,
        backoff_max=0.05,
        max_frame_bytes=1 << 20,
    )


@pytest.fixture
async def rig(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A monitor whose publisher is never started (offered records stay counted), and its
    scripted upstream; the monitor starts when the test calls ``start(history)``."""
    upstream = Upstream()
    monkeypatch.setattr("ingest.monitor.open_monitor", upstream)
    ctx = _context("ws://127.0.0.1:9")
    monitors: list[Monitor] = []

    async def start(
        history: bytes | None = None,
        on_end: Callable[[Monitor, Any], None] = lambda _m, _e: None,
        read_back: ReadBack | None = None,
    ) -> tuple[Monitor, Socket]:
        monitor = Monitor(ctx, "conv_1", None, history, on_end, read_back)
        monitors.append(monitor)
        monitor.start()
        await wait_for(lambda: upstream.sockets)
        return monitor, upstream.sockets[-1]

    yield ctx, upstream, start
    for monitor in monitors:
        monitor.resume()
        await monitor.stop()
    await ctx.rest.close()


async def test_a_publish_stall_inside_a_replay_burst_is_no_quiet_spell(rig: Any) -> None:
    """The socket is not read while the publisher is full: the burst's tail arrives after the
    stall, and must be matched with the rest instead of being taken for new frames."""
    ctx, _, start = rig
    monitor, sock = await start(b"".join(frame_digest(f) for f in FRAMES))  # all seen before
    for frame in FRAMES[:2]:
        sock.frames.put_nowait(frame)
    await wait_for(lambda: sock.taken() and monitor.reader.pending)
    ctx.publisher.room.clear()  # the publisher is full
    sock.frames.put_nowait(FRAMES[2])
    await wait_for(sock.taken)
    await asyncio.sleep(0.5)  # twice the quiet spell that closes a burst
    ctx.publisher.room.set()
    for frame in FRAMES[3:]:
        sock.frames.put_nowait(frame)
    await wait_for(lambda: not monitor.reader.pending, 5)
    assert ctx.publisher.records == 0  # the whole replay was recognised
    assert monitor.reader.size == len(FRAMES)


@pytest.mark.parametrize("timer_first", [False, True], ids=["frame-first", "timeout-first"])
async def test_a_busy_event_loop_inside_a_replay_burst_is_no_quiet_spell(
    rig: Any, timer_first: bool
) -> None:
    """The collector's loop is busy (a CPU-starved machine, a long batch) while the burst's tail
    reaches the socket. After it, the loop may hand over the frame first or fire the overdue
    poll timeout first (as with a real socket, whose data and timer are due in the same turn):
    either way the time the loop was busy is no quiet spell, and the tail is matched."""
    ctx, _, start = rig
    monitor, sock = await start(b"".join(frame_digest(f) for f in FRAMES))  # all seen before
    for frame in FRAMES[:2]:
        sock.frames.put_nowait(frame)
    await wait_for(lambda: sock.taken() and monitor.reader.pending)
    loop = asyncio.get_running_loop()

    def tail() -> None:
        for frame in FRAMES[2:]:
            sock.frames.put_nowait(frame)

    if timer_first:  # due after the monitor's poll timeout, so run after it
        loop.call_later(0.15, tail)
    else:
        tail()
    time.sleep(0.5)  # noqa: ASYNC251 - the loop is busy: twice the quiet spell closing a burst
    await wait_for(lambda: not monitor.reader.pending, 5)
    assert ctx.publisher.records == 0  # the whole replay was recognised
    assert monitor.reader.size == len(FRAMES)


async def test_frames_read_back_continue_the_recorded_history(rig: Any) -> None:
    """A successor holds the checkpointed frames and, after them, those read back from the
    events topic: the replay of all of them publishes nothing; its next checkpoint starts where
    the recorded history ends, and says which offset it reaches once acknowledged."""
    ctx, _, start = rig
    recorded = b"".join(frame_digest(f) for f in FRAMES[:2])
    back = ReadBack(bytearray(b"".join(frame_digest(f) for f in FRAMES[2:])), 40, [])
    monitor, sock = await start(recorded, read_back=back)
    assert (monitor.checkpointed, monitor.reader.size) == (2, len(FRAMES))
    for frame in FRAMES:
        sock.frames.put_nowait(frame)
    await wait_for(lambda: sock.taken() and not monitor.reader.pending, 5)
    assert ctx.publisher.records == 0
    assert monitor.events_reached(None) == 40
    pending = Outgoing("e", 0, None, b"", 0.0)
    assert monitor.events_reached(pending) is None  # unacknowledged: its offset is unknown
    pending.offset = 57
    assert monitor.events_reached(pending) == 58
    assert monitor.events_reached(None) == 58


async def _closed_while_paused(rig: Any) -> tuple[Monitor, list[Any]]:
    """A monitor paused (a rebalance) with a replay burst held, whose socket then closes 1000
    (the conversation ended); and the endings it reports."""
    _, _, start = rig
    ended: list[Any] = []
    monitor, sock = await start(on_end=lambda _m, ending: ended.append(ending))
    for frame in FRAMES[:2]:
        sock.frames.put_nowait(frame)
    await wait_for(lambda: sock.taken() and monitor.reader.pending)
    monitor.pause()
    sock.close_code = 1000
    sock.frames.put_nowait(None)
    await asyncio.sleep(0.5)  # twice the quiet spell that closes a burst
    return monitor, ended


async def test_a_burst_held_when_the_socket_closes_while_paused_waits_for_the_hand_over(
    rig: Any,
) -> None:
    """While paused, the history is what a hand-over sends; frames held then were not
    published, so they must stay out of it. The close may be the conversation's end, after
    which nothing replays them: they wait for the outcome, and a resume publishes them."""
    ctx, upstream, _ = rig
    monitor, ended = await _closed_while_paused(rig)
    assert monitor.reader.pending
    assert monitor.reader.size == 0  # a hand-over now sends nothing of the burst
    assert (ctx.publisher.records, ended, len(upstream.sockets)) == (0, [], 1)
    monitor.resume()  # the partition was kept
    await wait_for(lambda: ctx.publisher.records == 2, 5)
    await wait_for(lambda: len(upstream.sockets) == 2)  # REST unreachable here: try again
    for frame in FRAMES[:2]:
        upstream.sockets[1].frames.put_nowait(frame)
    await wait_for(lambda: upstream.sockets[1].taken() and not monitor.reader.pending, 5)
    assert ctx.publisher.records == 2  # the replay of the burst adds nothing


async def test_a_monitor_stopped_while_paused_publishes_nothing_it_held(rig: Any) -> None:
    """A release: the next owner's replay brings the held frames, or its refused connect
    reports the gap; this monitor neither publishes them nor declares the conversation over."""
    ctx = rig[0]
    monitor, ended = await _closed_while_paused(rig)
    await monitor.stop()
    assert (ctx.publisher.records, monitor.reader.size, ended) == (0, 0, [])
    assert not monitor.reader.pending


async def test_a_cancellation_arriving_with_a_frame_stops_the_monitor(rig: Any) -> None:
    """``stop()`` cancels the monitor; a frame arriving in the same turn must not swallow the
    cancellation (``asyncio.wait_for`` did, and shutdown then waited for the call's end)."""
    _, _, start = rig
    monitor, sock = await start()
    sock.frames.put_nowait(FRAMES[0])
    await wait_for(lambda: sock.taken() and monitor.reader.pending)
    task = monitor.task
    assert task is not None
    sock.on_recv = lambda: asyncio.get_running_loop().call_soon(task.cancel)
    sock.frames.put_nowait(FRAMES[1])
    await asyncio.wait([task], timeout=2)
    assert task.cancelled()


async def test_a_text_frame_that_is_not_utf8_reaches_the_dlq_over_a_real_socket() -> None:
    """The socket library must hand every frame on as bytes, undecoded (``recv(decode=False)``
    with picows.websockets as with websockets): a text frame that is not UTF-8 (a proxy or a
    bug upstream) becomes a dead letter, and the frame after it on the same socket an event."""
    from picows import WSListener, WSMsgType, WSTransport, ws_create_server

    bad = b'{"type":"agent_response","agent_response_event":{"agent_response":"\xff"}}'
    good = FRAMES[0]

    class Upstream(WSListener):
        def on_ws_connected(self, transport: WSTransport) -> None:
            transport.send(WSMsgType.TEXT, bad)
            transport.send(WSMsgType.TEXT, good)

    server = await ws_create_server(lambda _request: Upstream(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ctx = _context(f"ws://127.0.0.1:{port}")
    monitor = Monitor(ctx, "conv_1", None, None, lambda _m, _e: None)
    monitor.start()
    try:
        await wait_for(lambda: ctx.publisher.records >= 2, 5)
        offered = list(ctx.publisher._queue)  # the FIFO: never started, so nothing left it
        letter = ctx.serde.decode(offered[0].value)
        event = ctx.serde.decode(offered[1].value)
        assert (letter.schema_name, letter.record["reason"]) == ("DeadLetter", "invalid_utf8")
        assert letter.record["raw"] == bad
        assert (event.schema_name, event.record["raw"]) == ("MonitorEvent", good.decode())
        assert (offered[0].topic, offered[1].topic) == ("d", "e")
    finally:
        await monitor.stop()
        server.close()
        await ctx.rest.close()
