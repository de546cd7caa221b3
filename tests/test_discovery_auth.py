"""A revoked or wrong API key is counted by status, so it cannot pass for quiet traffic."""

from __future__ import annotations

from typing import Any

import pytest

from ingest.discovery import RestClient
from ingest.metrics import Metrics

pytestmark = pytest.mark.integration


async def test_rejected_key_is_counted_as_401(simulator_factory: Any) -> None:
    sim = await simulator_factory(conversations=3, seed=4)
    metrics = Metrics()
    rest = RestClient(sim.url, "not-the-key", metrics, 5, 0.01, 0.05)
    try:
        with pytest.raises(ConnectionError, match="401"):
            [c async for c in rest.in_progress(None, page_size=10)]
    finally:
        await rest.close()
    assert (
        metrics.registry.get_sample_value(
            "convostream_collector_discovery_errors_total", {"status": "401"}
        )
        == 1.0
    )
