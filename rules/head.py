"""The rules' view of a MonitorEvent, read from the leading fields of its Avro datum.

Profiling ``bench/rules.py`` showed the full decode (most of it the typed ``payload`` union,
which no rule reads) as the largest cost. The current MonitorEvent schema starts with
``event_key, conversation_id, agent_id, type, upstream_event_id, received_at, collector_id,
connection_id, connection_seq, replay, raw``: the reader stops after ``type`` when no rule
listens to it (after ``collector_id`` when silence rules need every event's time), and after
``raw`` otherwise. ``source`` comes after the payload; the post-call backfill writes its events
with ``collector_id`` ``backfill`` (``postcall/backfill.py``), which no collector uses, so that
field tells backfilled events apart without a full decode. Which schema ids have that layout is
learnt (:meth:`RuleHeadReader.learn`) from full decodes, so pinned and registry ids work alike.
Values under another schema id, or that do not parse, get ``None`` and the caller decodes them
fully (which reports bad data).
"""

from __future__ import annotations

from collections.abc import Container
from typing import Final

from rules.core import RuleEvent
from schemas.avro_head import (
    LearntLayout,
    read_event_identity,
    read_long,
    read_optional,
    read_string,
    skip_string,
)
from schemas.event_types import BACKFILL

SKIP: Final = "skip"  # the event's type has no rule: nothing else was read


class RuleHeadReader(LearntLayout):
    __slots__ = ()

    def read(
        self, data: bytes, wanted: Container[str], timed: bool = False
    ) -> RuleEvent | str | None:
        """The event, :data:`SKIP` when its type is not ``wanted``, or None (decode fully).

        ``timed``: an unwanted type still gives its event, with an empty ``raw``, for its time.
        """
        if not self.knows(data):
            return None
        try:
            event_key, conversation_id, agent_id, etype, pos = read_event_identity(data)
            take = etype in wanted
            if not (take or timed):
                return SKIP
            _, pos = read_optional(data, pos, read_long)  # upstream_event_id
            received_at, pos = read_long(data, pos)
            collector_id, pos = read_string(data, pos)
            raw = ""
            if take:
                pos = skip_string(data, pos)  # connection_id
                _, pos = read_long(data, pos)  # connection_seq
                pos += 1  # replay (boolean: one byte)
                raw, pos = read_string(data, pos)
        except (IndexError, UnicodeDecodeError):
            return None
        backfill = collector_id == BACKFILL
        return RuleEvent(event_key, conversation_id, agent_id, etype, raw, received_at, backfill)
