"""One monitor socket per live conversation: connect, read, reconnect, notice the end.

The reading loop does the least per frame: one ``recv`` as bytes (the frame core, not the
socket library, decides what is unreadable, so a bad frame goes to the DLQ instead of killing
the connection), the sans-I/O :class:`~ingest.frames.FrameReader`, one Avro encode, one append
to the publisher's FIFO. It stops reading while the publisher is full (back-pressure) or while
the conversation's partition is being handed over (:meth:`Monitor.pause`).

End detection (DESIGN.md §3): close 1000 after an ``end_call`` tool response ends it; close 1000
or 1008 otherwise asks REST, and the conversation has ended when its status left
``in-progress``. A 1008 while REST still says in progress (bad key, no monitoring rights, an
upstream limit) is not an end: frames are being missed, so it is a gap and an alarm (an error
log and ``convostream_collector_monitor_refused_total``), and the monitor keeps retrying with
back-off while the conversation is live. A handshake refused for good (an
:class:`~upstream.rest.UpstreamError` that is not ``retriable``: 401, 403, 404) is treated like
a 1008. Anything else (a retriable failure, another close) reconnects the same way, asking REST
after :data:`CHECK_AFTER_FAILURES` failed connections in a row.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from convostream.logs import get_logger
from convostream.runtime import unless_cancelled_here
from ingest.discovery import ENDED, INITIATED, RestClient
from ingest.frames import FrameReader, Released
from ingest.lifecycle import record
from ingest.metrics import Metrics
from ingest.ownership import partition_for
from ingest.publisher import Outgoing, Publisher
from ingest.recovery import ReadBack
from ingest.replay import Gap, ReplayFilter
from schemas.serde import Serde
from upstream.backoff import Backoff
from upstream.rest import UpstreamError
from upstream.websocket import ClientConnection, ConnectionClosed, open_monitor, opened

log = get_logger("ingest.monitor")

BURST_POLL = 0.1  # seconds between checks whether a held replay burst has gone quiet
CHECK_AFTER_FAILURES = 3  # consecutive failed connections before asking REST whether it ended


@dataclass(slots=True)
class Context:
    """What every monitor of a collector shares."""

    collector_id: str
    ws_base: str
    api_key: str | None
    serde: Serde
    publisher: Publisher
    metrics: Metrics
    rest: RestClient
    events_topic: str
    events_partitions: int
    dlq_topic: str
    dlq_partitions: int
    lifecycle: Callable[[dict[str, Any]], None]
    connect_timeout: float
    ping_interval: float
    backoff_base: float
    backoff_max: float
    max_frame_bytes: int


@dataclass(frozen=True, slots=True)
class Ending:
    """Why a monitor stopped for good.

    ``how``: ``end_call``, ``status`` (REST after a close 1000) or ``ended_while_disconnected``
    (REST after an abnormal close: the frames sent after it may be missing, a gap).
    """

    how: str
    status: str | None
    detail: str


class Monitor:
    """Reads one conversation's monitor socket until the conversation ends or it is released."""

    __slots__ = (
        "_ambiguous",
        "_end_call",
        "_gate",
        "_key",
        "_on_end",
        "_p_dlq",
        "_p_events",
        "_refusing",
        "agent_id",
        "checkpointed",
        "conversation_id",
        "ctx",
        "events_to",
        "last",
        "last_dlq",
        "reader",
        "task",
    )

    def __init__(
        self,
        ctx: Context,
        conversation_id: str,
        agent_id: str | None,
        history: bytes | None,
        on_end: Callable[[Monitor, Ending], None],
        read_back: ReadBack | None = None,
        lasts: Sequence[int] = (),
    ) -> None:
        self.ctx = ctx
        self.conversation_id = conversation_id
        self.agent_id = agent_id
        replay = ReplayFilter()
        self.reader = FrameReader(
            conversation_id, ctx.collector_id, agent_id, ctx.max_frame_bytes, replay
        )
        if history:
            self.reader.seed(history, lasts)
        self.checkpointed = self.reader.size  # frames the lifecycle topic already holds
        self.events_to: int | None = None  # every record below it is in the history
        if read_back is not None:
            self.reader.seed(bytes(read_back.digests), read_back.lasts)
            self.events_to = read_back.events_to
        self._refusing = False
        self._on_end = on_end
        self._gate = asyncio.Event()
        self._gate.set()
        self._key = conversation_id.encode("utf-8")
        self._p_events = partition_for(conversation_id, ctx.events_partitions)
        self._p_dlq = partition_for(conversation_id, ctx.dlq_partitions)
        self._end_call = False
        self._ambiguous = 0
        self.last: Outgoing | None = None  # the last records offered: a checkpoint waits for them
        self.last_dlq: Outgoing | None = None
        self.task: asyncio.Task[None] | None = None

    def events_reached(self, last: Outgoing | None) -> int | None:
        """The events offset from which no record of the conversation is in the history, given
        ``last``, the last record offered when the history was measured. None while ``last``
        is unacknowledged (a hand-over whose flush timed out): its offset is unknown, and a
        successor reading back from an earlier one would count those frames twice."""
        if last is not None:
            if not last.acked:
                return None
            if (self.events_to or 0) <= last.offset:
                self.events_to = last.offset + 1
        return self.events_to

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"monitor-{self.conversation_id}")

    def pause(self) -> None:
        """Stop handing frames on: nothing reaches the publisher until :meth:`resume`, so the
        hand-over history is all this owner published (a held replay burst or a frame already
        read waits; they are dropped if we stop, and the next owner's replay has them)."""
        self._gate.clear()

    def resume(self) -> None:
        self._gate.set()

    async def stop(self) -> None:
        """Close the socket; frames read but not yet handed on are left to the replay."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await unless_cancelled_here(self.task)

    async def _run(self) -> None:
        ctx = self.ctx
        backoff = Backoff(ctx.backoff_base, ctx.backoff_max)
        failures = 0
        announced = False
        while True:
            await self._gate.wait()  # paused: the next owner may already be reading it
            code: int | None = None
            reason = ""
            frames = 0
            refused = False
            try:
                async with opened(
                    open_monitor(
                        ctx.ws_base,
                        self.conversation_id,
                        ctx.api_key,
                        open_timeout=ctx.connect_timeout,
                        ping_interval=ctx.ping_interval or None,
                        close_timeout=2,
                        max_queue=8,
                        max_size=4 * ctx.max_frame_bytes,
                    )
                ) as ws:
                    if not announced:
                        ctx.lifecycle(self._record("monitoring", None))
                        announced = True
                    frames = await self._read(ws)
                    code, reason = ws.close_code, ws.close_reason or ""
            except UpstreamError as exc:
                reason = str(exc)
                refused = not exc.retriable
            if frames:
                backoff.reset()
                failures = 0
                self._refusing = False
            else:
                failures += 1
            ending = await self._ending(code, reason, failures, refused or code == 1008)
            if ending is not None:
                self._on_end(self, ending)
                return
            if failures >= CHECK_AFTER_FAILURES:
                failures = 0
            ctx.metrics.reconnects.inc()
            log.debug("reconnecting", conversation_id=self.conversation_id, code=code)
            await asyncio.sleep(backoff.next_delay())

    async def _read(self, ws: ClientConnection) -> int:
        """Read until the socket closes; returns the number of frames read."""
        ctx = self.ctx
        reader = self.reader
        loop = asyncio.get_running_loop()
        gate, room = self._gate, ctx.publisher.room
        await gate.wait()  # paused while connecting: the last connection's frames wait too
        self._hand_on(reader.connected(uuid.uuid4().hex, loop.time()), loop.time())
        ctx.metrics.live_sockets.inc()
        frames = 0
        try:
            while True:
                if reader.pending:  # a replay burst is held: close it if the socket goes quiet
                    poll = asyncio.timeout(BURST_POLL)  # wait_for may lose a cancel
                    try:
                        async with poll:
                            data = await ws.recv(decode=False)
                    except TimeoutError:
                        # A timeout that fires late went off while the loop was busy: frames
                        # may have arrived meanwhile (they are read next), so the time it was
                        # late is no quiet spell of the socket.
                        late = loop.time() - (poll.when() or 0.0)
                        if late > 0:
                            reader.stalled(late)
                        if gate.is_set():
                            self._hand_on(reader.tick(loop.time()), loop.time())
                        else:  # paused: a burst released now would miss the hand-over
                            await self._held()
                        continue
                else:
                    data = await ws.recv(decode=False)
                if not (gate.is_set() and room.is_set()):
                    await self._held()
                frames += 1
                markers = reader.markers
                now = loop.time()
                self._hand_on(reader.frame(data, time.time_ns() // 1000, now), now)
                if reader.markers != markers:
                    ctx.metrics.markers.inc()
        except ConnectionClosed:
            if reader.pending and not gate.is_set():
                # Paused with a replay burst held: it cannot be published before the hand-over
                # decides, and the socket may have closed because the conversation ended, after
                # which no replay brings the burst again. A release stops this monitor here
                # (the next owner, refused by the ended conversation, reports the gap); a
                # resume publishes the burst below before the ending is decided.
                await self._held()
            return frames
        finally:
            ctx.metrics.live_sockets.dec()
            if gate.is_set():
                self._hand_on(reader.disconnected(), loop.time())
            else:  # stopped while paused: the next owner's replay (or gap) has them
                reader.discard()

    async def _held(self) -> None:
        """Wait until neither paused nor back-pressured. The socket was not read meanwhile, so
        the quiet spell that closes a replay burst must not count this time: frames kept
        coming, and closing the burst early would take its tail for new frames."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        while not (self._gate.is_set() and self.ctx.publisher.room.is_set()):
            await self._gate.wait()
            await self.ctx.publisher.room.wait()
        self.reader.stalled(loop.time() - began)

    def _hand_on(self, released: Released, now: float) -> None:
        """Publish what the reader released, in order; report a gap."""
        ctx = self.ctx
        if released.gap is not None:
            self._gap(released.gap)
        for result in released.results:
            event = result.event
            if event is not None:
                ctx.metrics.frame(event["type"])
                value = ctx.serde.encode("MonitorEvent", event)
                self.last = out = Outgoing(ctx.events_topic, self._p_events, self._key, value, now)
                ctx.publisher.offer(out)
                if result.end_call:
                    self._end_call = True
            elif result.dead_letter is not None:
                letter = result.dead_letter
                ctx.metrics.dlq.labels(letter["reason"]).inc()
                value = ctx.serde.encode("DeadLetter", letter)
                self.last_dlq = out = Outgoing(ctx.dlq_topic, self._p_dlq, self._key, value, now)
                ctx.publisher.offer(out)
            else:
                ctx.metrics.duplicates.inc()
        ambiguous = self.reader.ambiguous
        if ambiguous != self._ambiguous:
            ctx.metrics.ambiguous.inc(ambiguous - self._ambiguous)
            self._ambiguous = ambiguous

    def _gap(self, gap: Gap) -> None:
        self.ctx.metrics.gaps.inc()
        log.warning(
            "replay may not cover a disconnect",
            conversation_id=self.conversation_id,
            replayed=gap.replayed,
            history=gap.history,
            reason=gap.reason,
        )
        self.ctx.lifecycle(
            self._record(
                "gap",
                None,
                {"replayed": gap.replayed, "history": gap.history, "reason": gap.reason},
            )
        )

    def _record(
        self, state: str, status: str | None, detail: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return record(
            self.conversation_id,
            state,
            agent_id=self.agent_id,
            collector_id=self.ctx.collector_id,
            detail=detail,
            status=status,
        )

    async def _ending(
        self, code: int | None, reason: str, failures: int, refused: bool
    ) -> Ending | None:
        """Whether the conversation is over after a close or a failed connect (asks REST when
        in doubt). ``refused``: a close 1008 or a handshake refused for good."""
        if code == 1000 and self._end_call:
            return Ending("end_call", None, "closed 1000 after end_call")
        if code != 1000 and not refused and failures < CHECK_AFTER_FAILURES:
            return None
        try:
            status = await self.ctx.rest.status(self.conversation_id)
        except ConnectionError:
            return None  # REST unreachable: keep trying the socket
        if status in ENDED:
            # without a close 1000 the upstream may have had frames still to send: say so
            how = "status" if code == 1000 else "ended_while_disconnected"
            return Ending(how, status, f"closed {code} {reason}".strip())
        if refused and status != INITIATED:  # "initiated": not started yet, just retry
            self._refused(reason, status)
        return None

    def _refused(self, reason: str, status: str) -> None:
        """A 1008 or a refused handshake while REST does not say the conversation is over (in
        progress, or REST refuses too: a bad key): a gap and an alarm, once per refusal streak."""
        self.ctx.metrics.refused.inc()
        if self._refusing:
            return
        self._refusing = True
        log.error(
            "monitor refused while the conversation is in progress; retrying",
            conversation_id=self.conversation_id,
            reason=reason,
        )
        self.ctx.metrics.gaps.inc()
        self.ctx.lifecycle(self._record("gap", status, {"reason": "refused", "close": reason}))
