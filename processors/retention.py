"""Retention of the ``agent_window_metrics`` rows: final windows older than the configured age
are deleted (by the indexed ``window_end``) a minute after start and then hourly."""

from __future__ import annotations

from typing import Any

from mode import Service

from convostream.logs import get_logger
from processors.sink import Sink
from schemas.clock import now_micros

log = get_logger(__name__)

FIRST_PRUNE = 60.0
PRUNE_EVERY = 3600.0
DAY_MICROS = 86_400 * 1_000_000


class RetentionService(Service):
    """Prunes old final windows while the worker runs (every worker may: deletes are idempotent)."""

    def __init__(self, sink: Sink, days: float, **kw: Any) -> None:
        super().__init__(**kw)
        self.sink = sink
        self.days = days

    @Service.task
    async def _prune(self) -> None:
        delay = FIRST_PRUNE
        while not self.should_stop:
            await self.sleep(delay)
            delay = PRUNE_EVERY
            cutoff = now_micros() - int(self.days * DAY_MICROS)
            try:
                deleted = await self.sink.prune_windows(cutoff)
            except Exception as exc:  # the store is away: the next round tries again
                log.warning("window retention failed", error=type(exc).__name__)
                continue
            if deleted:
                log.info("old agent windows deleted", rows=deleted, older_than_days=self.days)
