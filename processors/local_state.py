"""Local table stores are kept only across orderly stops; after a crash they are rebuilt.

Faust writes a table value to its local RocksDB store at once, but it records the store's
changelog offset only when the broker acknowledges the changelog record. After a SIGKILL,
recovery replays the changelog from that offset over the newer local values. Keys written in
that range go back to their last delivered value, and the other keys keep values that never
reached the changelog. The window stage's keys of one partition (agents, agent index, source
progress) then come from different moments. Replaying the uncommitted messages over them closes
windows at other messages than the first time. This was seen on Apache Kafka: after a SIGKILL,
a final window was one event short, with no late event.

The changelog alone is always a consistent point: each partition holds the writes in order
(states are written only after their outputs are acknowledged), so it is a prefix of them. So a
worker marks an orderly stop in its data directory. A start without that mark discards the
local stores, and Faust rebuilds them from the changelogs. Only after a crash does that cost a
full changelog read.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from convostream.logs import get_logger

log = get_logger(__name__)

ORDERLY_STOP = "orderly-stop"


def discard_after_crash(datadir: Path, tabledir: Path) -> bool:
    """At start-up: consume the mark of an orderly stop or, without one, delete ``tabledir``;
    True when stores were discarded."""
    mark = datadir / ORDERLY_STOP
    if mark.exists():
        mark.unlink()
        return False
    if not tabledir.exists():
        return False
    shutil.rmtree(tabledir)
    log.warning(
        "the last run did not stop in order: local table stores discarded, "
        "rebuilding them from their changelogs",
        tabledir=str(tabledir),
    )
    return True


def mark_orderly_stop(datadir: Path) -> None:
    """After every store is flushed and closed: the next start may keep them."""
    (datadir / ORDERLY_STOP).touch()
