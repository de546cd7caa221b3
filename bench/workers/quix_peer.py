"""The Quix Streams peer of ``bench/peers.py``: per-agent tumbling-window counts, written the
way Quix's documentation writes them.

Runs in the bench venv (``make bench-install``: Quix pins dependencies below the pipeline's).
Reads the events topic from the beginning, decodes the Avro values with the project's serde,
takes each event's time from ``received_at`` (as convostream's processor does), re-keys by
agent (``group_by``: a repartition topic, as the processor's forward topic) and counts in
60 s tumbling windows with 10 s grace, final windows only. Once the final windows (plus any
late events) account for ``--events`` events it writes one JSON object to ``--result``: events/s
and CPU µs per event (this process, /proc) from its first event to that moment, the windows
(``agent@start_ms``: count) and the late events, then stops.

    .venv-bench/bin/python bench/workers/quix_peer.py --bootstrap HOST:PORT --topic T --events N
        --result FILE [--state-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from quixstreams import Application
from quixstreams.models.serializers import Deserializer

from convostream.measure import cpu_seconds
from schemas.serde import Serde

WINDOW = timedelta(seconds=60)
GRACE_MS = 10_000


class MonitorEventDeserializer(Deserializer):
    """Avro ``MonitorEvent`` bytes, as the collectors write them, to the record dict."""

    def __init__(self) -> None:
        super().__init__()
        self._serde = Serde()

    def __call__(self, value: bytes, ctx: Any) -> Any:
        return self._serde.decode(value).record


def received_at_ms(value: Any, headers: Any, timestamp: int, timestamp_type: Any) -> int:
    """Event time: the collector's ``received_at`` (µs), in Quix's milliseconds."""
    return int(value["received_at"]) // 1000


class Progress:
    """The clock and the tally: started at the first event, done when every counted event
    is in a final window or was late."""

    def __init__(self, events: int, result: Path) -> None:
        self.events = events
        self.result = result
        self.started: tuple[float, float] | None = None
        self.windows: dict[str, int] = {}
        self.late = 0
        self.app: Application | None = None

    def first(self, value: Any) -> None:
        if self.started is None:
            self.started = (time.perf_counter(), cpu_seconds())

    def on_late(self, *args: Any) -> bool:
        self.late += 1
        self._check()
        return False  # counted here, not logged per event

    def final(self, value: dict[str, Any], key: Any, timestamp: int, headers: Any) -> None:
        agent = key.decode() if isinstance(key, bytes) else str(key)
        self.windows[f"{agent}@{value['start']}"] = value["value"]
        self._check()

    def _check(self) -> None:
        if self.started is None or sum(self.windows.values()) + self.late < self.events:
            return
        elapsed = time.perf_counter() - self.started[0]
        cpu = cpu_seconds() - self.started[1]
        figures = {
            "events_per_s": self.events / elapsed,
            "cpu_us_per_event": cpu / self.events * 1e6,
            "counts": self.windows,
            "late_events": self.late,
        }
        tmp = self.result.with_suffix(".tmp")
        tmp.write_text(json.dumps(figures))
        os.replace(tmp, self.result)  # the bench never reads half a file
        if self.app is not None:
            self.app.stop()


def build(bootstrap: str, topic: str, progress: Progress, state_dir: str) -> Application:
    app = Application(
        broker_address=bootstrap,
        consumer_group=f"quix-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        state_dir=state_dir,
        loglevel="WARNING",
    )
    events = app.topic(
        topic,
        value_deserializer=MonitorEventDeserializer(),
        key_deserializer="bytes",
        timestamp_extractor=received_at_ms,
    )
    sdf = app.dataframe(events)
    sdf = sdf.update(progress.first)
    sdf = sdf[["agent_id"]]  # only what the window needs crosses the repartition topic
    sdf = sdf.group_by("agent_id")
    sdf = sdf.tumbling_window(WINDOW, grace_ms=GRACE_MS, on_late=progress.on_late).count().final()
    sdf.update(progress.final, metadata=True)
    progress.app = app
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--events", type=int, required=True, help="events before the fences")
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--state-dir", default=None)
    args = parser.parse_args()
    progress = Progress(args.events, args.result)
    with tempfile.TemporaryDirectory() as tmp:
        build(args.bootstrap, args.topic, progress, args.state_dir or tmp).run()


if __name__ == "__main__":
    main()
