"""PlainCounter renders as the Counter it replaces: same family name, labels and values."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from convostream.plain_counts import PlainCounter


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_plain_counter_exposes_what_a_counter_would() -> None:
    plain_registry, counter_registry = CollectorRegistry(), CollectorRegistry()
    plain = PlainCounter("x_fires", "Fires.", ["rule", "action"], plain_registry)
    counter = Counter("x_fires_total", "Fires.", ["rule", "action"], registry=counter_registry)
    for rule, action in [("a", "alert"), ("a", "alert"), ("b", "end_call"), ("a", "alert")]:
        plain.inc(rule, action)
        counter.labels(rule, action).inc()
    assert _samples(plain_registry) == _samples(counter_registry)
    assert plain.value("a", "alert") == 3
    assert plain.value("c", "alert") == 0
