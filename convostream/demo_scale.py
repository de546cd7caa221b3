"""``convostream demo --scale N``: the headline on this machine.

Broker, simulator (N concurrent conversations, starts ramped at 1,000 a second), one collector
and one processor, measured by :mod:`convostream.headline` exactly as ``bench/e2e.py`` measures
them: once the collector holds every socket and the replay bursts have reached SQL, a
steady-state window gives conversations monitored, events/s, CPU per event, collector RSS per
conversation and processor RSS. Then every component is stopped and the figures printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from typing import Any

import click

from convostream.broker import create_topics, wait_until_ready
from convostream.demo import (
    DemoSettings,
    Ports,
    broker,
    collector_and_processor,
    failure,
    shared_env,
    stop_all,
)
from convostream.headline import (
    Pipeline,
    raise_nofile,
    ramp_seconds,
    settle,
    steady_state,
    watch,
)
from convostream.logs import get_logger
from convostream.measure import wait_http
from convostream.supervise import Component

log = get_logger("convostream.demo")

SHOWN = (
    ("conversations monitored", "conversations", ""),
    ("events/s (published)", "events_per_s", ""),
    ("events/s (in SQL)", "processed_events_per_s", ""),
    ("CPU per event (collector + processor)", "cpu_us_per_event", " µs"),
    ("collector RSS per conversation", "kib_per_conversation", " KiB"),
    ("processor RSS", "processor_rss_mib", " MiB"),
)


def simulator(
    settings: DemoSettings, ports: Ports, shared: dict[str, str], api_key: str
) -> Component:
    n = settings.demo_scale
    return Component(
        "simulator",
        [
            "simulate",
            "--port",
            str(ports.simulator),
            "--conversations",
            str(n),
            "--events-per-second",
            str(settings.demo_scale_rate),
            "--seed",
            str(settings.demo_seed),
            "--turns",
            "100000",  # conversations outlast the run
            "--duration",
            "86400",
            "--ramp-seconds",
            str(ramp_seconds(n)),
            "--replay-markers",
        ],
        {**shared, "CONVOSTREAM_SIM_API_KEY": api_key},
    )


def measure(pipeline: Pipeline, conversations: int, seconds: float) -> dict[str, Any]:
    """Wait for every socket and the replay bursts, then one steady-state window."""
    wait_http(f"http://127.0.0.1:{pipeline.metrics_port}/metrics", timeout=60)
    live = watch(pipeline.metrics_port, 60 + conversations / 100, until_sockets=conversations)
    settle(pipeline.metrics_port, pipeline.db)
    return steady_state(pipeline, seconds, live)


def report(settings: DemoSettings, figures: dict[str, Any], load: tuple[float, ...]) -> str:
    lines = [
        f"convostream demo --scale {settings.demo_scale}: {settings.demo_scale_rate} events/s "
        f"per conversation, {settings.demo_scale_seconds:.0f} s steady state, load average "
        f"before {' '.join(f'{x:.2f}' for x in load)}"
    ]
    lines += [f"  {label:<40}{figures[key]}{unit}" for label, key, unit in SHOWN]
    return "\n".join(lines)


def _pid(comp: Component) -> int:
    if comp.proc is None:
        raise RuntimeError(f"{comp.name} was not started")
    return comp.proc.pid


async def run_scale(settings: DemoSettings, stop: asyncio.Event) -> int:
    run = settings.demo_dir
    run.mkdir(parents=True, exist_ok=True)
    raise_nofile()  # one socket per conversation in the collector and the simulator
    load = os.getloadavg()
    ports = Ports.pick()
    api_key = secrets.token_urlsafe(24)
    shared = shared_env(settings, ports, api_key)
    procs = [
        broker(ports, shared),
        simulator(settings, ports, shared, api_key),
        *collector_and_processor(settings, ports, shared),
    ]
    failed: Component | None = None
    figures: dict[str, Any] | None = None
    try:
        for comp in procs:
            await comp.start(run)
            log.info("started", component=comp.name, log=str(comp.log_path))
            if comp.name == "broker":
                await wait_until_ready(f"127.0.0.1:{ports.broker}", timeout=60)
                await create_topics(f"127.0.0.1:{ports.broker}", prefix=settings.topic_prefix)
        click.echo(
            f"convostream demo --scale {settings.demo_scale}: opening the sockets, then "
            f"measuring {settings.demo_scale_seconds:.0f} s (progress on stderr, logs in {run}/)"
        )
        collector, processor = (_pid(c) for c in procs[2:])
        pipeline = Pipeline(collector, ports.collector_metrics, processor, run / "convostream.db")
        measuring = asyncio.create_task(
            asyncio.to_thread(measure, pipeline, settings.demo_scale, settings.demo_scale_seconds)
        )
        while not measuring.done() and not stop.is_set():
            failed = next((c for c in procs if c.exited is not None), None)
            if failed is not None:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(measuring), 1.0)
        if measuring.done():
            figures = measuring.result()
    finally:
        await stop_all(procs)
    if failed is not None:
        return failure(failed)
    if figures is None:
        click.echo("Stopped before the measurement ended.")
        return 0
    click.echo(report(settings, figures, load))
    return 0
