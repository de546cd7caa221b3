"""Health of a processor worker, fed from Faust's own event loop.

The heartbeat starts with the worker (``processors.cli``), before table recovery, which can
take minutes; the watches below start with the app's services.

Ready means: the broker answers, the worker's partitions are assigned and its tables recovered
(Faust's ``on_rebalance_complete``, so a pod is not sent traffic or counted as rolled out while
it is still replaying changelogs), and the SQL store answers a trivial query.
"""

from __future__ import annotations

from typing import Any

import faust
from mode import Service

from convostream.ops import Health
from convostream.readiness import checks, watch
from processors.settings import ProcessorSettings
from processors.sink import Sink

CONDITIONS = ("broker", "assignment", "sql")


class HealthService(Service):
    """Heartbeat and readiness watches of one worker, started and stopped with the app."""

    def __init__(
        self, app: faust.App, health: Health, settings: ProcessorSettings, sink: Sink, **kw: Any
    ) -> None:
        super().__init__(**kw)
        self.health = health
        self.settings = settings
        self.sink = sink
        health.declare(*CONDITIONS)
        app.on_partitions_revoked.connect(self._revoked)  # type: ignore[arg-type]
        app.on_partitions_assigned.connect(self._assigned)  # type: ignore[arg-type]
        app.on_rebalance_complete.connect(self._recovered)  # type: ignore[arg-type]

    async def _revoked(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        self.health.set("assignment", False, "rebalancing")

    async def _assigned(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        self.health.set("assignment", False, "recovering tables")

    async def _recovered(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        self.health.set("assignment", True)

    async def _sql_problem(self) -> str | None:
        try:
            await self.sink.ping()
        except Exception as exc:  # any driver error: the reason names its type, not the URL
            return f"SQL store unreachable ({type(exc).__name__})"
        return None

    @Service.task
    async def _watch_broker(self) -> None:
        broker = checks(self.settings)["broker"]
        await watch(self.health, "broker", broker, self.settings.health_interval)

    @Service.task
    async def _watch_sql(self) -> None:
        await watch(self.health, "sql", self._sql_problem, self.settings.health_interval)
