"""Prometheus counters kept in plain ints, for the hot paths.

A ``Counter`` child costs a lock per increment and ``labels()`` a lookup under another lock
(1.3 and 5.5 µs on this machine); per frame or per event that was a visible share of the
collector's and the rules engine's CPU. These are plain dict increments, read when scraped
(the GIL makes the read of a dict's items safe).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector


class PlainCounter(Collector):
    """``name{labelnames}``, one int per tuple of label values in :attr:`counts`."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.counts: dict[tuple[str, ...], int] = {}
        if registry is not None:
            registry.register(self)

    def inc(self, *labels: str) -> None:
        counts = self.counts
        counts[labels] = counts.get(labels, 0) + 1

    def value(self, *labels: str) -> int:
        return self.counts.get(labels, 0)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, count in list(self.counts.items()):
            family.add_metric(list(labels), count)
        yield family
