"""``convostream process``: the Faust processors and the SQL sink until SIGINT/SIGTERM."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import click

from convostream import runtime
from convostream.ops import Health
from convostream.settings import load_settings, settings_options
from processors.settings import ProcessorSettings


@click.command()
@settings_options(ProcessorSettings)
def process(**values: Any) -> None:
    """Compute conversation metrics and agent windows from convai.monitor.events.

    Writes convai.metrics.conversations (compacted), convai.metrics.agent-windows and
    convai.events.late, upserts the SQL tables conversation_metrics and agent_window_metrics
    (schema migrated at start), serves Prometheus metrics and GET /conversations/{id}/.
    Run several with the same --processor-app-id to share the partitions.
    """
    settings = load_settings(ProcessorSettings, values)
    runtime.setup(settings, (settings.database_password(),))
    from processors.health import CONDITIONS, HealthService
    from processors.metrics import ProcessorMetrics

    metrics = ProcessorMetrics()
    health = Health("processor")
    health.declare(*CONDITIONS)
    runtime.serve_ops(settings.metrics_port, health, metrics.registry)
    runtime.await_dependencies(settings, health)
    # Until Faust installs its own handlers (a graceful stop), a stop exits cleanly at once.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    import faust

    from processors.app import Processor
    from processors.local_state import discard_after_crash, mark_orderly_stop
    from processors.sink import open_sink

    sink = open_sink(settings.database_url)
    processor = Processor(settings, sink, metrics)
    discard_after_crash(settings.processor_data_dir, Path(processor.app.conf.tabledir))
    processor.app.service(HealthService(processor.app, health, settings, sink))  # type: ignore[arg-type]
    if settings.processor_window_retention_days:
        from processors.retention import RetentionService

        retention = RetentionService(sink, settings.processor_window_retention_days)
        processor.app.service(retention)  # type: ignore[arg-type]

    class Worker(faust.Worker):
        async def on_first_start(self) -> None:
            self.heartbeat = health.start_heartbeat()  # alive from the loop's first moment
            await super().on_first_start()

        def _schedule_shutdown(self, signal: Any) -> None:
            """Faust drains gracefully on SIGTERM; this bounds how long that may take."""
            if not self._signal_stop_time:
                runtime.arm_stop_watchdog(settings.shutdown_timeout)
            super()._schedule_shutdown(signal)

    worker = Worker(processor.app, loglevel=settings.log_level, override_logging=False, quiet=True)
    runtime.tune_gc()
    try:
        worker.execute_from_commandline()
    except SystemExit as stop:
        if stop.code in (0, None) and not processor.app.crashed:
            mark_orderly_stop(settings.processor_data_dir)
        raise
