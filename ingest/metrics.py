"""Prometheus metrics of a collector (``convostream_collector_*``).

Labels stay low-cardinality: event types are the documented ones plus ``other`` (upstream may
invent types), DLQ reasons are the frame core's fixed codes, never conversation ids.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from convostream.plain_counts import PlainCounter
from schemas.payloads import PAYLOAD_RECORDS

_P = "convostream_collector_"
KNOWN_TYPES = frozenset(PAYLOAD_RECORDS)
OTHER = ("other",)  # the frames label of types the upstream may add
# Fine below 100 ms (the target is a p99 of 50 ms), so that a quantile interpolated inside a
# bucket (histogram_quantile, bench/ingest.py) is within a few ms of the real one.
LATENCY_BUCKETS = (
    0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.025, 0.03, 0.04,
    0.05, 0.06, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30,
)  # fmt: skip


class Metrics:
    """Every metric of one collector process, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.frames = PlainCounter(
            _P + "frames", "Frames read from monitor sockets, by upstream type.", ["type"], r
        )
        # the documented types (each shown from 0) and "other", each with its key made once
        self._frame_keys = {t: (t,) for t in sorted(KNOWN_TYPES)}
        self.frames.counts.update(dict.fromkeys(self._frame_keys.values(), 0))
        self.frames.counts[OTHER] = 0
        self.live_sockets = Gauge(_P + "live_sockets", "Open monitor sockets.", registry=r)
        self.monitored = Gauge(
            _P + "monitored_conversations",
            "Conversations this collector owns and monitors.",
            registry=r,
        )
        self.partitions = Gauge(
            _P + "owned_partitions",
            "Partitions of convai.conversations assigned here.",
            registry=r,
        )
        self.reconnects = Counter(_P + "reconnects", "Monitor socket reconnects.", registry=r)
        self.duplicates = Counter(
            _P + "replay_duplicates_dropped", "Replayed frames dropped as duplicates.", registry=r
        )
        self.gaps = Counter(
            _P + "gaps", "Reconnects whose replay could not cover what was missed.", registry=r
        )
        self.markers = Counter(
            _P + "replay_markers",
            "Upstream connected / history_complete control frames read (never published).",
            registry=r,
        )
        self.ambiguous = Counter(
            _P + "replay_ambiguous",
            "Replayed copies of a repeated frame matched across the replay window's edge, where "
            "the upstream gives no way to tell a replay from a new repeat.",
            registry=r,
        )
        self.refused = Counter(
            _P + "monitor_refused",
            "Monitor sockets refused (1008) while REST still said in-progress.",
            registry=r,
        )
        self.dlq = Counter(
            _P + "dlq_records",
            "Frames sent to convai.monitor.dlq, by reason.",
            ["reason"],
            registry=r,
        )
        self.buffer_records = Gauge(
            _P + "buffer_records", "Records waiting for a broker acknowledgement.", registry=r
        )
        self.buffer_bytes = Gauge(
            _P + "buffer_bytes", "Bytes waiting for a broker acknowledgement.", registry=r
        )
        self.buffer_fill = Gauge(
            _P + "buffer_fill_ratio",
            "Buffer use against its bound (1: back-pressure).",
            registry=r,
        )
        self.published = Counter(
            _P + "published_records",
            "Records acknowledged by the broker, by topic.",
            ["topic"],
            registry=r,
        )
        self.publish_latency = Histogram(
            _P + "publish_latency_seconds",
            "From reading a frame to the broker's acknowledgement of its record.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.discovery_errors = Counter(
            _P + "discovery_errors",
            "Failed REST discovery requests, by HTTP status or error.",
            ["status"],
            registry=r,
        )
        self.ended = Counter(
            _P + "conversations_ended",
            "Monitored conversations that ended, by how.",
            ["how"],
            registry=r,
        )

    def frame(self, event_type: str) -> None:
        self.frames.counts[self._frame_keys.get(event_type, OTHER)] += 1
