"""Prometheus metrics of the command path (``convostream_commands_*``).

``command_type`` is one of the six known types or ``other``, so a rogue issuer cannot grow the
label set; reasons stay out of labels (they are in the results and the logs).
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from schemas.commands import COMMAND_TYPES

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def type_label(command_type: object) -> str:
    known = isinstance(command_type, str) and command_type in COMMAND_TYPES
    return str(command_type) if known else "other"


class CommandMetrics:
    """The worker's metrics, registered on ``registry`` (the default one in production)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = REGISTRY if registry is None else registry
        self.results = Counter(
            "convostream_commands_total",
            "Command results written, by command type and status.",
            ["command_type", "status"],
            registry=registry,
        )
        self.delivery = Histogram(
            "convostream_commands_delivery_seconds",
            "Command record timestamp to frame written upstream, by socket (warm or cold).",
            ["socket"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.sockets = Gauge(
            "convostream_commands_sockets_open",
            "Pooled monitor sockets open for writing commands.",
            registry=registry,
        )
        self.ledger = Gauge(
            "convostream_commands_ledger_entries",
            "Command ids and source offsets the worker remembers for de-duplication.",
            registry=registry,
        )
