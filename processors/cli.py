"""``convostream process``: the Faust processors and the SQL sink until SIGINT/SIGTERM."""

from __future__ import annotations

import gc
from typing import Any

import click

from convostream import runtime
from convostream.settings import load_settings, settings_options
from processors.settings import ProcessorSettings

# As in the collector (ingest/cli.py): young collections far rarer than the default 700
# allocations, and the objects of start-up (modules, classes, Faust's app) frozen out of every
# collection. Measured (bench/process.py throughput phase, alternating runs): about +5 %.
GC_THRESHOLDS = (20_000, 10, 10)


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
    runtime.setup(settings)

    import faust

    from processors.app import Processor
    from processors.metrics import Metrics
    from processors.sink import open_sink

    metrics = Metrics()
    metrics.serve(settings.metrics_port)
    processor = Processor(settings, open_sink(settings.database_url), metrics)
    worker = faust.Worker(
        processor.app, loglevel=settings.log_level, override_logging=False, quiet=True
    )
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    worker.execute_from_commandline()
