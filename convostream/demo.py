"""``convostream demo``: the whole pipeline on one machine, with a live status line.

Runs the embedded broker, the upstream simulator and every pipeline component as child
processes (their logs go to the run directory), shows what flows, and on Ctrl-C stops them in
reverse order so that producers flush before the broker goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import click
from pydantic import Field

from convostream import runtime
from convostream.broker import create_topics, free_port, wait_until_ready
from convostream.logs import get_logger
from convostream.settings import CommonSettings, load_settings, settings_options
from convostream.supervise import Component

log = get_logger("convostream.demo")


class DemoSettings(CommonSettings):
    demo_conversations: int = Field(
        20,
        ge=1,
        description="Concurrent simulated conversations.",
        json_schema_extra={"flag": "--conversations"},
    )
    demo_events_per_second: float = Field(
        2.0,
        gt=0,
        description="Frames per second per simulated conversation.",
        json_schema_extra={"flag": "--events-per-second"},
    )
    demo_seed: int = Field(7, description="Simulator seed.", json_schema_extra={"flag": "--seed"})
    demo_run_for: float = Field(
        0.0,
        ge=0,
        description="Stop by itself after this many seconds (0: run until Ctrl-C).",
        json_schema_extra={"flag": "--run-for"},
    )
    demo_dir: Path = Field(
        Path("var/demo"),
        description="Directory for component logs and simulator files.",
        json_schema_extra={"flag": "--dir"},
    )


def components(
    settings: DemoSettings, broker_port: int, sim_port: int, key: str
) -> list[Component]:
    """The pipeline in start order; the demo stops them in reverse."""
    run = settings.demo_dir
    shared = {
        "CONVOSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{broker_port}",
        "CONVOSTREAM_UPSTREAM_URL": f"http://127.0.0.1:{sim_port}",
        "CONVOSTREAM_API_KEY": key,
        "CONVOSTREAM_TOPIC_PREFIX": settings.topic_prefix,
        "CONVOSTREAM_LOG_LEVEL": settings.log_level,
    }
    return [
        Component("broker", ["broker", "--port", str(broker_port)], shared),
        Component(
            "simulator",
            [
                "simulate",
                "--port",
                str(sim_port),
                "--conversations",
                str(settings.demo_conversations),
                "--events-per-second",
                str(settings.demo_events_per_second),
                "--seed",
                str(settings.demo_seed),
                "--duration",
                "86400",
                "--ground-truth",
                str(run / "ground-truth.jsonl"),
                "--commands-log",
                str(run / "commands.jsonl"),
            ],
            {**shared, "CONVOSTREAM_SIM_API_KEY": key},
        ),
    ]


async def _http_json(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
            if resp.status == 200:
                data = await resp.json()
                return data if isinstance(data, dict) else None
    except (aiohttp.ClientError, TimeoutError):
        return None
    return None


# simulator status field -> label on the status line
SIM_FIELDS = {
    "live": "live",
    "ended": "ended",
    "frames_generated": "frames",
    "sockets_open": "sockets",
    "drops": "drops",
    "commands_received": "commands",
}


def _status_line(elapsed: float, sim: dict[str, Any] | None) -> str:
    parts = [f"{elapsed:5.0f}s"]
    if sim is None:
        parts.append("simulator: starting")
    else:
        parts.append(
            "upstream: "
            + " ".join(f"{label}={sim.get(key, '?')}" for key, label in SIM_FIELDS.items())
        )
    return "  ".join(parts)


async def _run(settings: DemoSettings, stop: asyncio.Event) -> int:
    settings.demo_dir.mkdir(parents=True, exist_ok=True)
    broker_port, sim_port = free_port(), free_port()
    key = secrets.token_urlsafe(24)
    procs = components(settings, broker_port, sim_port, key)
    tty = sys.stdout.isatty()
    started = time.monotonic()
    failed: Component | None = None
    try:
        for comp in procs:
            await comp.start(settings.demo_dir)
            log.info("started", component=comp.name, log=str(comp.log_path))
            if comp.name == "broker":  # everything after it needs the topics
                await wait_until_ready(f"127.0.0.1:{broker_port}", timeout=60)
                await create_topics(f"127.0.0.1:{broker_port}", prefix=settings.topic_prefix)
        click.echo(
            f"convostream demo: broker 127.0.0.1:{broker_port}, simulator "
            f"http://127.0.0.1:{sim_port}, logs in {settings.demo_dir}/ (Ctrl-C stops)"
        )
        async with aiohttp.ClientSession() as session:
            last_print = 0.0
            while not stop.is_set():
                failed = next((c for c in procs if c.exited is not None), None)
                if failed is not None:
                    break
                elapsed = time.monotonic() - started
                if settings.demo_run_for and elapsed >= settings.demo_run_for:
                    break
                sim = await _http_json(session, f"http://127.0.0.1:{sim_port}/_sim/status")
                line = _status_line(elapsed, sim)
                if tty:
                    click.echo("\r\x1b[2K" + line, nl=False)
                elif elapsed - last_print >= 5:
                    click.echo(line)
                    last_print = elapsed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        if tty:
            click.echo("")
        for comp in reversed(procs):
            code = await comp.stop()
            log.info("stopped", component=comp.name, exit_code=code)
    if failed is not None:
        click.echo(
            f"{failed.name} exited with code {failed.exited}; last log lines:\n{failed.tail_log()}",
            err=True,
        )
        return 1
    click.echo(
        "Next: `convostream tail convai.monitor.events` against a running pipeline, "
        f"component logs in {settings.demo_dir}/."
    )
    return 0


@click.command()
@settings_options(DemoSettings)
def demo(**values: Any) -> None:
    """Run broker, simulator and the pipeline together, with a live status line.

    Everything binds to loopback and keeps its state in memory; logs and the simulator's
    ground truth and commands log go to --dir. Ctrl-C stops every component cleanly.
    """
    settings = load_settings(DemoSettings, values)
    runtime.setup(settings)
    result = 0

    async def main(stop: asyncio.Event) -> None:
        nonlocal result
        result = await _run(settings, stop)

    runtime.run_until_signal(main)
    sys.exit(result)
