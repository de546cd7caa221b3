"""``bench/e2e.py`` scaled down (1,000 conversations, a few seconds): it runs and reports every
figure, with the pipeline monitoring conversations and losing nothing, on the session's broker
engine (``--engine``: each component must accept that broker's settings). No timing is
asserted."""

from __future__ import annotations

import pytest

from tests.bench_runner import run_bench

pytestmark = [pytest.mark.integration, pytest.mark.solo]
FIELDS = {
    "conversations",
    "events_per_s",
    "cpu_us_per_event",
    "p99_event_to_row_ms",
    "kib_per_conversation",
    "processor_rss_mib",
    "lost_events",
    "checked_events",
    "load_avg_before",
    "rlimit_nofile_raised_to",
    "baseline",
}
BASELINE = {"events_per_s", "cpu_us_per_event"}


def test_e2e_bench_smoke_reports_every_figure_and_loses_nothing(broker_engine: str) -> None:
    args = ["--conversations", "1000", "--seconds", "3", "--engine", broker_engine]
    result = run_bench("e2e.py", *args, timeout=600)
    assert result.keys() >= FIELDS, FIELDS - result.keys()
    assert result["baseline"].keys() >= BASELINE
    assert result["engine"] == broker_engine
    assert result["conversations"] > 0
    assert result["checked_events"] > 0
    assert result["lost_events"] == 0
    assert result["p99_event_to_row_ms"] is not None  # rows were seen changing
