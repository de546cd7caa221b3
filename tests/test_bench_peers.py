"""``bench/peers.py`` scaled down (a few thousand events) on the session's Apache Kafka: the
processor, Quix Streams and naive Faust run and agree on every window. No timing is asserted."""

from __future__ import annotations

import pytest

from bench.peers import BENCH_PYTHON
from convostream.kafka_engine import KafkaBroker
from tests.bench_runner import run_bench
from tests.needs import missing_tool

pytestmark = [pytest.mark.integration, pytest.mark.kafka_only]
ENGINES = ("processor", "quix", "naive_faust")


def test_peers_bench_smoke_three_engines_count_the_same_windows(kafka_broker: KafkaBroker) -> None:
    if not BENCH_PYTHON.exists():
        missing_tool(f"Quix Streams' venv {BENCH_PYTHON} (make bench-install)")
    args = ["--events", "3000", "--conversations", "120", "--span", "150"]
    result = run_bench("peers.py", *args, "--bootstrap", kafka_broker.bootstrap, timeout=600)
    assert result["results_equal"] is True
    assert result["windowed_events"] == result["events"] == 3000
    assert result["windows"] >= 2 * result["agents"]  # 150 s of event time: 3 or 4 windows each
    assert set(result["differing_windows"].values()) == {0}
    for engine in ENGINES:
        assert result[engine]["events_per_s"] > 0
        assert result[engine]["cpu_us_per_event"] > 0
