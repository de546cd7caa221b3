"""The simulated upstream on one port: monitor WebSockets and REST, driven by one scheduler loop.

Why this shape: one ``websockets`` server answers both (REST through ``process_request``), and a
single :class:`~simulator.schedule.Timeline` loop generates, releases (with reorder jitter),
closes and drops for every conversation, so 1,000 sockets cost one task per socket direction and
no timer per frame. Frames are encoded once and fanned out as ``str`` to per-connection queues.

Choices where the upstream is undocumented:
- A bad or missing ``xi-api-key`` completes the handshake, then closes 1008 ``invalid api key``;
  an unknown conversation closes 1008 ``conversation not found``; an ended one (status no longer
  ``in-progress``) closes 1008 ``conversation has ended``.
- No connection limit per conversation; several monitors get the same frames.
- Replay on connect: the last 100 frames generated, in generation order, unmarked (with
  ``--replay-markers``: after ``{"type":"connected"}`` and followed by
  ``{"type":"history_complete"}``, as the OpenTelemetry session shape documents); then every
  frame generated after the connect, with the reorder jitter. A frame still held back by the
  jitter at connect time comes in the replay only: one connection never gets a frame twice.
- Drops (``--disconnect-every``): an abrupt TCP abort, or an ``error`` frame (a frame of the
  conversation: in the ground truth and the replay) then a close with 1011 or 1002 (close
  codes of the AsyncAPI). Frames queued for a dropped socket are lost (the next connection's
  replay covers them).
- A monitor that falls more than 10,000 frames behind is closed with 1011 (slow consumer).
- The server sends no WebSocket pings (clients may ping; the server answers), and does not
  negotiate compression, to keep the simulator cheap at 1,000 sockets.
- At the end of a conversation sockets close 1000 once every frame's jittered send time has
  passed; shutting the simulator down closes them 1001.
- Statuses: ``initiated`` (``--initiated-seconds``; a monitor is refused with 1008
  ``conversation has not started``), ``in-progress``, then ``processing``, then ``done``
  (``failed`` for about 5 %).
- ``--monitoring-events``: an agent's monitors stream only the selected types (and ``error``
  frames before an error close); the other frames are generated as usual, reach the REST
  transcript, and are neither replayed nor in the ground truth, which lists what a monitor can
  receive.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import random
import re
import time
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from convostream.logs import get_logger
from simulator import commands, schedule, transcript
from simulator.rest import RestApp, details
from simulator.schedule import Disconnects, Reorder, Timeline
from simulator.script import ConversationScript, Frame, ScriptParams, make_agents
from simulator.settings import SimulatorSettings
from simulator.state import SimConversation
from simulator.webhook import WebhookSender

CONNECTED = '{"type":"connected"}'
# Frames a monitoring_events selection does not filter: they are not events of a type.
ALWAYS_STREAMED = frozenset({"error", "malformed"})
HISTORY_COMPLETE = '{"type":"history_complete"}'
MONITOR_PATH = re.compile(r"^/v1/convai/conversations/([^/?#]+)/monitor/?(?:\?.*)?$")
MAX_QUEUE = 10_000
FAILED = 0.05  # share of conversations whose final status is "failed" instead of "done"
MAX_TICK = 0.05
MIN_TICK = 0.002
BUSY_SLICE = 0.02  # seconds of due actions run before the loop lets sockets and REST in
FLUSH_EVERY = 0.25

log = get_logger("simulator")


class Connection:
    """One monitor socket: a queue of frame texts drained by its own writer task."""

    __slots__ = ("aborted", "closing", "conv", "id", "queue", "replayed", "sim", "wake", "ws")

    def __init__(self, sim: Simulator, ws: ServerConnection, conv: SimConversation, ident: int):
        self.sim = sim
        self.ws = ws
        self.conv = conv
        self.id = ident
        self.queue: deque[str | tuple[int, str]] = deque()
        self.wake = asyncio.Event()
        self.closing = False
        self.aborted = False
        self.replayed = conv.frames  # frames up to this number reach it through the replay

    def push(self, text: str) -> None:
        if self.closing:
            return
        if len(self.queue) >= MAX_QUEUE:
            self.close(1011, "slow consumer", flush=False)
            return
        self.queue.append(text)
        self.wake.set()

    def close(self, code: int, reason: str, flush: bool = True) -> None:
        """Close after the queued frames (``flush``) or right away."""
        if self.closing:
            return
        self.closing = True
        if not flush:
            self.queue.clear()
        self.queue.append((code, reason))
        self.wake.set()

    def abort(self) -> None:
        """An abrupt TCP drop: no close frame."""
        self.closing = self.aborted = True
        self.queue.clear()
        self.ws.transport.abort()

    async def write(self) -> None:
        ws, queue, sim = self.ws, self.queue, self.sim
        with contextlib.suppress(ConnectionClosed):
            while True:
                while queue:
                    item = queue.popleft()
                    if isinstance(item, str):
                        await ws.send(item)
                        sim.frames_sent += 1
                    else:
                        await ws.close(item[0], item[1])
                        return
                self.wake.clear()
                await self.wake.wait()


class Simulator:
    """The simulated ElevenLabs upstream; ``await start()``, then connect to :attr:`url`."""

    def __init__(self, settings: SimulatorSettings) -> None:
        self.settings = settings
        self._key = settings.sim_api_key.get_secret_value().encode()
        self.agents = make_agents(settings.sim_seed, settings.sim_agents)
        self.selection = {
            self.agents[i].agent_id: types
            for i, types in settings.selection().items()
            if i < len(self.agents)
        }
        self.params = ScriptParams(
            turns=settings.sim_turns,
            chat_ratio=settings.sim_chat_ratio,
            escalation_ratio=settings.sim_escalation_ratio,
            repeat_ratio=settings.sim_repeat_ratio,
            malformed_ratio=settings.sim_malformed_ratio,
        )
        self.timeline = Timeline()
        self.reorder = Reorder(settings.sim_reorder_ms, settings.sim_seed)
        self.disconnects = Disconnects(settings.sim_disconnect_every, settings.sim_seed)
        self.conversations: list[SimConversation] = []
        self.by_id: dict[str, SimConversation] = {}
        self.rest = RestApp(
            self.conversations,
            self.by_id.get,
            self.status,
            self._key_ok,
            settings.sim_rest_error_rate,
            random.Random(f"{settings.sim_seed}:r"),
        )
        self.outage = settings.outage()
        self.webhooks: WebhookSender | None = None
        if settings.sim_webhook_url and settings.sim_webhook_secret is not None:
            secret = settings.sim_webhook_secret.get_secret_value().encode()
            self.webhooks = WebhookSender(settings.sim_webhook_url, secret)
        self.handshakes_refused = 0
        self._slot_gen = [0] * settings.sim_conversations
        self._slot_rng = random.Random(f"{settings.sim_seed}:slots")
        self._pending_starts = 0
        self._done = 0
        self._finished = asyncio.Event()
        self._wake = asyncio.Event()
        self._server: Server | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._gt: IO[bytes] | None = None
        self._cmdlog: IO[bytes] | None = None
        self._t0 = 0.0
        self._t0_wall = 0.0
        self._last_flush = 0.0
        self._conn_ids = 0
        self.port = 0
        self.frames_generated = 0
        self.frames_sent = 0
        self.sockets_open = 0
        self.connections_total = 0
        self.drops = 0
        self.commands_received = 0

    # ----- lifecycle ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """HTTP base URL (REST); the monitor socket is at :meth:`monitor_url`."""
        return f"http://{self.settings.sim_host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.settings.sim_host}:{self.port}"

    def monitor_url(self, conversation_id: str) -> str:
        return f"{self.ws_url}/v1/convai/conversations/{conversation_id}/monitor"

    async def start(self) -> None:
        s = self.settings
        if s.sim_ground_truth is not None:
            self._gt = _open(s.sim_ground_truth)
        if s.sim_commands_log is not None:
            self._cmdlog = _open(s.sim_commands_log)
        self._server = await serve(
            self._handle,
            s.sim_host,
            s.sim_port,
            process_request=self._process_request,
            compression=None,
            ping_interval=None,
            max_size=1 << 20,
        )
        sock = next(iter(self._server.sockets))
        self.port = int(sock.getsockname()[1])
        loop = asyncio.get_running_loop()
        self._t0 = loop.time()
        self._t0_wall = time.time()
        ramp = s.sim_ramp_seconds
        for slot in range(s.sim_conversations):
            due = self._slot_rng.uniform(0.0, ramp) if ramp > 0 else 0.0
            self._push_start(due, slot)
        if self._pending_starts == 0:
            self._finished.set()
        self._loop_task = asyncio.create_task(self._run(), name="simulator-scheduler")
        log.info(
            "simulator listening",
            host=s.sim_host,
            port=self.port,
            conversations=s.sim_conversations,
            seed=s.sim_seed,
        )

    async def stop(self) -> None:
        """Close every socket with 1001, stop the scheduler, flush and close the files."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        if self._server is not None:
            self._server.close(close_connections=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None
        if self.webhooks is not None:
            await self.webhooks.close()
        for f in (self._gt, self._cmdlog):
            if f is not None:
                f.flush()
                f.close()
        self._gt = self._cmdlog = None

    async def wait_finished(self, timeout: float | None = None) -> None:
        """Wait until no conversation will start and every one is ``done``."""
        await asyncio.wait_for(self._finished.wait(), timeout)

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def now(self) -> float:
        """Virtual time: seconds since start."""
        return asyncio.get_running_loop().time() - self._t0

    def status(self) -> dict[str, Any]:
        live = sum(1 for c in self.conversations if c.live)
        return {
            "live": live,
            "ended": len(self.conversations) - live,
            "done": self._done,
            "conversations_started": len(self.conversations),
            "frames_generated": self.frames_generated,
            "frames_sent": self.frames_sent,
            "sockets_open": self.sockets_open,
            "connections_total": self.connections_total,
            "drops": self.drops,
            "commands_received": self.commands_received,
            "handshakes_refused": self.handshakes_refused,
            "webhooks_delivered": self.webhooks.delivered if self.webhooks else 0,
            "webhooks_failed": self.webhooks.failed if self.webhooks else 0,
            "finished": self.finished,
            "uptime_secs": round(self.now(), 3) if self._t0 else 0.0,
        }

    def live_conversations(self) -> Iterator[SimConversation]:
        return (c for c in self.conversations if c.live)

    # ----- scheduling -----------------------------------------------------------------------
    def _push_start(self, due: float, slot: int) -> None:
        self._pending_starts += 1
        number = self._slot_gen[slot] * max(1, self.settings.sim_conversations) + slot
        self._slot_gen[slot] += 1
        self.timeline.push(due, schedule.START, number, slot)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                now = loop.time() - self._t0
                slice_end = loop.time() + BUSY_SLICE
                for count, item in enumerate(self.timeline.pop_due(now), 1):
                    self._dispatch(item)
                    if count % 64 == 0 and loop.time() > slice_end:
                        break  # behind schedule: serve sockets and REST, then catch up
                if now - self._last_flush >= FLUSH_EVERY and self._gt is not None:
                    self._gt.flush()
                    self._last_flush = now
                nxt = self.timeline.next_due()
                delay = MAX_TICK if nxt is None else min(MAX_TICK, nxt - (loop.time() - self._t0))
                if delay <= 0:
                    await asyncio.sleep(0)  # one pass of ready I/O callbacks, no idle wait
                    continue
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(MIN_TICK, delay))
        except Exception:
            log.exception("simulator scheduler failed")
            raise

    def _dispatch(self, item: schedule.Due) -> None:
        kind = item.kind
        if kind == schedule.GENERATE:
            conv: SimConversation = item.payload
            script = conv.script
            if conv.ended:
                return
            if conv.status == "initiated":
                conv.status = "in-progress"
            frame = script.next_frame(item.due)
            if frame is None:
                self._end(conv, item.due)
                return
            self._emit(conv, frame, item.due)
            self.timeline.push(
                item.due + script.next_gap(self.settings.sim_events_per_second),
                schedule.GENERATE,
                conv.seq,
                conv,
            )
        elif kind == schedule.SEND:
            conv, number, text = item.payload
            for monitor in conv.monitors:
                if number > monitor.replayed:
                    monitor.push(text)
        elif kind == schedule.START:
            self._start_conversation(item.due, item.payload, item.key)
        elif kind == schedule.CLOSE:
            conv = item.payload
            conv.status = "processing"
            for monitor in list(conv.monitors):
                monitor.close(1000, "conversation ended")
            self.timeline.push(
                item.due + self.settings.sim_processing_seconds, schedule.DONE, conv.seq, conv
            )
        elif kind == schedule.DONE:
            conv = item.payload
            conv.status = "failed" if conv.fails else "done"
            self._done += 1
            if self.webhooks is not None:
                self.webhooks.send(details(conv, time.time()))
            if self._pending_starts == 0 and self._done == len(self.conversations):
                self._finished.set()
                if self._gt is not None:
                    self._gt.flush()
        elif kind == schedule.DROP:
            conn = item.payload
            assert isinstance(conn, Connection)
            if conn.closing or conn not in conn.conv.monitors:
                return
            self.drops += 1
            how = self.disconnects.how()
            if how == "abort":
                conn.abort()
            else:  # an error close is announced by an error frame, part of the conversation
                code = int(how)
                frame = conn.conv.script.error(item.due, code, self.drops)
                conn.close(code, "simulated drop", flush=False)
                conn.queue.appendleft(frame.text)  # the error frame, then the close
                self._emit(conn.conv, frame, item.due)  # closing: not pushed to it twice

    def _start_conversation(self, due: float, slot: int, number: int) -> None:
        self._pending_starts -= 1
        agent = self.agents[
            random.Random(f"{self.settings.sim_seed}:{number}:agent").randrange(len(self.agents))
        ]
        script = ConversationScript(self.settings.sim_seed, number, agent, self.params, due)
        conv = SimConversation(len(self.conversations), slot, script, self._t0_wall + due)
        conv.fails = random.Random(f"{self.settings.sim_seed}:{number}:fails").random() < FAILED
        conv.streamed = self.selection.get(agent.agent_id)
        initiated = self.settings.sim_initiated_seconds
        if initiated > 0:
            conv.status = "initiated"
        self.conversations.append(conv)
        self.by_id[conv.conversation_id] = conv
        self.timeline.push(due + initiated, schedule.GENERATE, conv.seq, conv)

    def _emit(self, conv: SimConversation, frame: Frame, at: float) -> None:
        conv.frames += 1
        if frame.type in transcript.KINDS:  # only these: a long call's frames would pile up
            conv.generated.append((at - conv.script.start_virtual, frame.text))
        if conv.streamed is not None and frame.type not in conv.streamed | ALWAYS_STREAMED:
            return  # outside the agent's monitoring_events: never reaches a monitor
        self.frames_generated += 1
        conv.replay.append(frame.text)
        if self._gt is not None:
            self._gt.write(
                orjson.dumps(
                    {
                        "conversation_id": conv.conversation_id,
                        "agent_id": conv.agent_id,
                        "index": frame.index,
                        "frame": frame.text,
                    }
                )
            )
            self._gt.write(b"\n")
        if self.reorder.max_s > 0:
            self.timeline.push(
                self.reorder.send_at(at), schedule.SEND, conv.seq, (conv, conv.frames, frame.text)
            )
        else:
            for conn in conv.monitors:
                conn.push(frame.text)

    def _end(self, conv: SimConversation, at: float) -> None:
        conv.ended = True
        conv.end_unix = self._t0_wall + at
        self.timeline.push(at + self.reorder.max_s + 0.0005, schedule.CLOSE, conv.seq, conv)
        duration = self.settings.sim_duration
        if duration > 0:
            due = at + self._slot_rng.uniform(0.05, 0.5)
            if due < duration:
                self._push_start(due, conv.slot)

    # ----- sockets --------------------------------------------------------------------------
    def _key_ok(self, key: str | None) -> bool:
        return key is not None and hmac.compare_digest(key.encode(), self._key)

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        if MONITOR_PATH.match(request.path):
            if self.outage is not None and self.outage[0] <= self.now() < self.outage[1]:
                self.handshakes_refused += 1
                return _plain(503, "monitor unavailable (simulated outage)")
            return None
        reply = self.rest.handle(request.path, request.headers.get("xi-api-key"), time.time())
        headers = Headers(
            {"Content-Type": "application/json", "Connection": "close", **reply.headers}
        )
        body = reply.encoded()
        headers["Content-Length"] = str(len(body))
        return Response(reply.status, _REASONS.get(reply.status, "OK"), headers, body)

    async def _handle(self, ws: ServerConnection) -> None:
        match = MONITOR_PATH.match(ws.request.path if ws.request else "")
        if match is None:  # pragma: no cover - process_request routes everything else
            await ws.close(1008, "not found")
            return
        if not self._key_ok(ws.request.headers.get("xi-api-key") if ws.request else None):
            await ws.close(1008, "invalid api key")
            return
        conv = self.by_id.get(match.group(1))
        if conv is None:
            await ws.close(1008, "conversation not found")
            return
        if conv.status == "initiated":
            await ws.close(1008, "conversation has not started")
            return
        if not conv.live:
            await ws.close(1008, "conversation has ended")
            return
        self._conn_ids += 1
        conn = Connection(self, ws, conv, self._conn_ids)
        if self.settings.sim_replay_markers:
            conn.queue.append(CONNECTED)
            conn.queue.extend(conv.replay)
            conn.queue.append(HISTORY_COMPLETE)
        else:
            conn.queue.extend(conv.replay)
        conv.monitors.add(conn)
        self.sockets_open += 1
        self.connections_total += 1
        drop_at = self.disconnects.next_after(self.now())
        if drop_at is not None:
            self.timeline.push(drop_at, schedule.DROP, conv.seq, conn)
            self._wake.set()
        writer = asyncio.create_task(conn.write())
        try:
            async for message in ws:
                self._on_command(conv, conn, message)
        except ConnectionClosed:
            pass
        finally:
            conv.monitors.discard(conn)
            self.sockets_open -= 1
            if conn.closing and not conn.aborted and not writer.done():
                with contextlib.suppress(asyncio.TimeoutError, ConnectionClosed):
                    await asyncio.wait_for(asyncio.shield(writer), 2)
            writer.cancel()

    def _on_command(self, conv: SimConversation, conn: Connection, message: str | bytes) -> None:
        received = time.time()
        self.commands_received += 1
        command = commands.parse(message)
        now = self.now()
        outcome = commands.apply(conv.script, command, now)
        for frame in outcome.frames:
            self._emit(conv, frame, now)
        if outcome.ends_conversation and not conv.ended:
            self._end(conv, now)
            self._wake.set()
        if self._cmdlog is not None:
            text = message if isinstance(message, str) else message.decode("utf-8", "replace")
            record = {
                "received_at": datetime.fromtimestamp(received, UTC).isoformat(),
                "received_at_unix": received,
                "conversation_id": conv.conversation_id,
                "connection_id": conn.id,
                "frame": text,
                "binary": isinstance(message, bytes),
                "command_type": command.command_type,
                "accepted": outcome.accepted,
                "effect": outcome.effect,
            }
            self._cmdlog.write(orjson.dumps(record) + b"\n")
            self._cmdlog.flush()
        log.debug(
            "command received",
            conversation_id=conv.conversation_id,
            command_type=command.command_type,
            accepted=outcome.accepted,
        )


_REASONS = {
    200: "OK",
    401: "Unauthorized",
    404: "Not Found",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    503: "Service Unavailable",
}


def _plain(status: int, text: str) -> Response:
    body = text.encode()
    headers = Headers({"Content-Type": "text/plain", "Content-Length": str(len(body))})
    return Response(status, _REASONS.get(status, "Error"), headers, body)


def _open(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "wb", buffering=1 << 20)  # closed in Simulator.stop
