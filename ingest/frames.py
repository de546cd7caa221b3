"""From monitor-socket frames to records (sans-I/O): one MonitorEvent or one DeadLetter each.

Replay duplicates are dropped before parsing, on the exact bytes, so a malformed frame that is
replayed reaches the DLQ once, like a good one reaches the events topic once. Nothing raises on
bad input: whatever cannot be read becomes a DeadLetter with a machine-readable reason. The
upstream's ``connected`` / ``history_complete`` markers are connection control frames: they
steer the replay alignment and are counted, never published. Replay bursts are held until
aligned (:mod:`ingest.replay`), so one frame may release several records at once.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from ingest.replay import Gap, Outcome, ReplayFilter, Verdict, event_key, frame_digest
from schemas.payloads import monitor_payload, upstream_event_ids

DEFAULT_MAX_FRAME_BYTES = 1024 * 1024  # agent_tool_response_full_payload carries up to 64 KB
DLQ_RAW_LIMIT = 256 * 1024  # an oversize frame is kept up to this many bytes in the DLQ
MARKERS = frozenset({"connected", "history_complete"})
MARKER_MAX_BYTES = 512  # markers are tiny: larger frames are never parsed to look for one


@dataclass(frozen=True, slots=True)
class Unreadable:
    """Why a frame goes to the DLQ: a machine-readable reason and a human-readable detail."""

    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class FrameResult:
    """What one frame became: an event, a dead letter, or nothing (a replay duplicate)."""

    event: dict[str, Any] | None = None
    dead_letter: dict[str, Any] | None = None
    end_call: bool = False  # an agent_tool_response of the end_call tool: the conversation ends

    @property
    def duplicate(self) -> bool:
        return self.event is None and self.dead_letter is None


@dataclass(frozen=True, slots=True)
class Released:
    """Records released by one call, in arrival order, and a gap if the replay fell short."""

    results: list[FrameResult]
    gap: Gap | None = None


class FrameReader:
    """Turns the frames of one conversation's monitor sockets into records."""

    __slots__ = (
        "_connection_id",
        "_filter",
        "_held",
        "agent_id",
        "collector_id",
        "conversation_id",
        "markers",
        "max_frame_bytes",
    )

    def __init__(
        self,
        conversation_id: str,
        collector_id: str,
        agent_id: str | None = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        replay: ReplayFilter | None = None,
    ) -> None:
        self.conversation_id = conversation_id
        self.collector_id = collector_id
        self.agent_id = agent_id
        self.max_frame_bytes = max_frame_bytes
        self._filter = replay or ReplayFilter()
        self._connection_id = ""
        self._held: deque[tuple[bytes, bytes, int]] = deque()  # (raw, digest, received_at)
        self.markers = 0

    @property
    def gaps(self) -> int:
        return self._filter.gaps

    @property
    def ambiguous(self) -> int:
        """Replay matches the upstream gave no way to decide exactly (see :mod:`ingest.replay`)."""
        return self._filter.ambiguous

    @property
    def pending(self) -> bool:
        """Replay frames are held for alignment: call :meth:`tick` if the socket goes quiet."""
        return self._filter.pending

    @property
    def size(self) -> int:
        return self._filter.size

    def connected(self, connection_id: str, now: float) -> Released:
        out = self._filter.connected(now)  # what the last connection still held
        released = self._release(out)
        self._connection_id = connection_id
        return released

    def disconnected(self) -> Released:
        return self._release(self._filter.disconnected())

    def tick(self, now: float) -> Released:
        return self._release(self._filter.tick(now))

    def stalled(self, seconds: float) -> None:
        """The socket was not read for ``seconds``: that is no quiet spell."""
        self._filter.stalled(seconds)

    def discard(self) -> None:
        """Drop a held replay burst unrecorded: the next connection's replay brings it again."""
        self._held.clear()
        self._filter.discard()

    def history(self, start: int = 0) -> bytes:
        """Frame digests this reader has seen (from frame ``start``), for the next owner."""
        return self._filter.history(start)

    def seed(self, history: bytes, lasts: Iterable[int] = ()) -> None:
        """Continue from a previous owner's :meth:`history` and :meth:`lasts`."""
        self._filter.seed(history, lasts)

    def lasts(self, start: int = 0, end: int | None = None) -> list[int]:
        """Where the last frames of closed connections sit in the history (for the next owner)."""
        return self._filter.lasts(start, end)

    def frame(self, data: bytes | str, received_at: int, now: float) -> Released:
        """Classify one frame; ``received_at`` is epoch microseconds, ``now`` monotonic seconds."""
        raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
        kind = _marker(raw)
        if kind is not None:
            self.markers += 1
            return self._release(self._filter.marker(kind, now))
        digest = frame_digest(raw)
        self._held.append((raw, digest, received_at))
        return self._release(self._filter.observe(digest, now))

    def _release(self, outcome: Outcome) -> Released:
        verdicts, gap = outcome
        held = self._held
        results = []
        for verdict in verdicts:
            raw, digest, received_at = held.popleft()
            if verdict.duplicate:
                results.append(DUPLICATE)
            else:
                results.append(self._record(raw, digest, received_at, verdict))
        return Released(results, gap)

    def _record(self, raw: bytes, digest: bytes, received_at: int, verdict: Verdict) -> FrameResult:
        parsed = self._parse(raw)
        if isinstance(parsed, Unreadable):
            key = event_key(self.conversation_id, digest, verdict.occurrence)
            letter = self._dead_letter(raw, parsed, received_at, verdict.connection_seq, key)
            return FrameResult(dead_letter=letter)
        text, obj = parsed
        event_type: str = obj["type"]
        payload = monitor_payload(event_type, obj)
        event = {
            "event_key": event_key(self.conversation_id, digest, verdict.occurrence),
            "conversation_id": self.conversation_id,
            "agent_id": self.agent_id,
            "type": event_type,
            **upstream_event_ids(payload),
            "received_at": received_at,
            "collector_id": self.collector_id,
            "connection_id": self._connection_id,
            "connection_seq": verdict.connection_seq,
            "replay": verdict.replay,
            "raw": text,
            "payload": payload,
        }
        end_call = event_type == "agent_tool_response" and payload[1].get("tool_name") == "end_call"
        return FrameResult(event=event, end_call=end_call)

    def _parse(self, raw: bytes) -> tuple[str, dict[str, Any]] | Unreadable:
        """``(text, object)`` of a readable frame, else why it cannot be read."""
        if len(raw) > self.max_frame_bytes:
            return Unreadable(
                "oversize", f"frame of {len(raw)} bytes exceeds {self.max_frame_bytes}"
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Unreadable("invalid_utf8", f"invalid UTF-8 at byte {exc.start}: {exc.reason}")
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            try:  # orjson refuses integers beyond 64 bits, which are valid JSON
                obj = json.loads(text)
            except (ValueError, RecursionError) as exc:
                return Unreadable("invalid_json", str(exc)[:500])
        if not isinstance(obj, dict):
            return Unreadable(
                "not_an_object", f"frame is a JSON {type(obj).__name__}, not an object"
            )
        if not isinstance(obj.get("type"), str) or not obj["type"]:
            return Unreadable("missing_type", "frame has no non-empty string 'type'")
        return text, obj

    def _dead_letter(
        self, raw: bytes, why: Unreadable, received_at: int, seq: int, key: str
    ) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id,
            "reason": why.reason,
            "detail": why.detail,
            "raw": raw[:DLQ_RAW_LIMIT],
            "received_at": received_at,
            "collector_id": self.collector_id,
            "connection_id": self._connection_id or None,
            "connection_seq": seq,
            "event_key": key,
        }


DUPLICATE = FrameResult()


def _marker(raw: bytes) -> str | None:
    """The marker kind when the frame is an upstream ``connected`` / ``history_complete``."""
    if len(raw) > MARKER_MAX_BYTES or (b"connected" not in raw and b"history_complete" not in raw):
        return None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    kind = obj.get("type") if isinstance(obj, dict) else None
    return kind if kind in MARKERS else None
