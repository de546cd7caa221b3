"""``bench/fold.py`` scaled down: it runs and reports both figures for every length asked.
No timing is asserted."""

from __future__ import annotations

from tests.bench_runner import run_bench


def test_fold_bench_smoke_reports_stage_and_bare_fold_per_length() -> None:
    args = ["--conversations", "50", "--lengths", "5,40", "--batches", "2"]
    result = run_bench("fold.py", *args, timeout=120)
    assert result["conversations"] == 50
    assert set(result["by_length"]) == {"5", "40"}
    for figures in result["by_length"].values():
        assert figures["stage_us_per_event"] > 0
        assert figures["fold_us_per_event"] > 0
        assert figures["stored_kib_per_event"] > 0
