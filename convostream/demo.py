"""``convostream demo``: the whole pipeline on one machine, with a live status line.

Runs the embedded broker, the upstream simulator and every pipeline component as child
processes (their logs go to the run directory), shows what flows, and on Ctrl-C stops them in
reverse order so that producers flush before the broker goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import aiohttp
import click
from prometheus_client.parser import text_string_to_metric_families
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
    demo_steer_every: float = Field(
        15.0,
        ge=0,
        description="Send a contextual_update command to a live conversation this often, "
        "through send-command (0: never).",
        json_schema_extra={"flag": "--steer-every"},
    )
    demo_escalation_ratio: float = Field(
        0.3,
        ge=0,
        le=1,
        description='Share of simulated conversations whose user asks to "talk to a human"; '
        "the rules engine hands them to a person.",
        json_schema_extra={"flag": "--escalation-ratio"},
    )
    demo_rules_file: Path = Field(
        Path(__file__).resolve().parents[1] / "deploy" / "rules" / "example.yaml",
        description="Rules file of the demo's rules engine.",
        json_schema_extra={"flag": "--rules-file"},
    )
    demo_scale: int = Field(
        0,
        ge=0,
        description="Run the scale variant instead (e.g. 1000): this many concurrent "
        "conversations through one collector and one processor, then print the headline figures "
        "and stop (0: the ordinary demo).",
        json_schema_extra={"flag": "--scale"},
    )
    demo_scale_rate: float = Field(
        0.5,
        gt=0,
        description="Scale variant: frames per second per conversation.",
        json_schema_extra={"flag": "--scale-rate"},
    )
    demo_scale_seconds: float = Field(
        20.0,
        gt=0,
        description="Scale variant: length of the steady-state window measured.",
        json_schema_extra={"flag": "--scale-seconds"},
    )
    demo_dir: Path = Field(
        Path("var/demo"),
        description="Directory for component logs and simulator files.",
        json_schema_extra={"flag": "--dir"},
    )


@dataclass(frozen=True)
class Ports:
    """Loopback ports of one demo run, chosen free at start."""

    broker: int
    simulator: int
    collector_metrics: int
    processor_metrics: int
    processor_web: int
    commands_metrics: int
    rules_metrics: int

    @classmethod
    def pick(cls) -> Ports:
        return cls(*(free_port() for _ in fields(cls)))


ISSUER = "demo"


def write_command_credentials(run: Path) -> tuple[Path, Path, str]:
    """A policy allowing the demo issuer everything, and its key in a file only we can read."""
    policy = run / "policy.json"
    policy.write_text(
        json.dumps({"issuers": {ISSUER: {"commands": ["*"], "phone_numbers": ["+*"]}}}, indent=2)
    )
    key = secrets.token_urlsafe(32)
    key_file = run / "issuer.key"
    key_file.touch(mode=0o600)
    key_file.write_text(key)
    return policy, key_file, key


def shared_env(settings: DemoSettings, ports: Ports, api_key: str) -> dict[str, str]:
    """The environment every component of a demo run shares."""
    return {
        "CONVOSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{ports.broker}",
        "CONVOSTREAM_UPSTREAM_URL": f"http://127.0.0.1:{ports.simulator}",
        "CONVOSTREAM_API_KEY": api_key,
        "CONVOSTREAM_TOPIC_PREFIX": settings.topic_prefix,
        "CONVOSTREAM_LOG_LEVEL": settings.log_level,
        # the embedded broker holds a group join for half a session: keep it short here
        "CONVOSTREAM_GROUP_SESSION_TIMEOUT_MS": "2000",
        "CONVOSTREAM_BROKER_COMPAT": "tansu",
    }


def broker(ports: Ports, shared: dict[str, str]) -> Component:
    return Component("broker", ["broker", "--port", str(ports.broker)], shared)


def collector_and_processor(
    settings: DemoSettings, ports: Ports, shared: dict[str, str]
) -> list[Component]:
    """The monitoring path: ``collect`` and ``process`` (SQLite store in the run directory)."""
    run = settings.demo_dir
    return [
        Component(
            "collector",
            ["collect"],
            {**shared, "CONVOSTREAM_METRICS_PORT": str(ports.collector_metrics)},
        ),
        Component(
            "processor",
            ["process"],
            {
                **shared,
                "CONVOSTREAM_METRICS_PORT": str(ports.processor_metrics),
                "CONVOSTREAM_DATABASE_URL": f"sqlite:///{run / 'convostream.db'}",
                "CONVOSTREAM_PROCESSOR_DATA_DIR": str(run / "processors"),
                "CONVOSTREAM_PROCESSOR_WEB_PORT": str(ports.processor_web),
            },
        ),
    ]


def components(
    settings: DemoSettings, ports: Ports, api_key: str, policy: Path, issuer_key: str
) -> list[Component]:
    """The pipeline in start order; the demo stops them in reverse."""
    run = settings.demo_dir
    shared = shared_env(settings, ports, api_key)
    return [
        broker(ports, shared),
        Component(
            "simulator",
            [
                "simulate",
                "--port",
                str(ports.simulator),
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
                "--reorder-ms",
                "200",
                "--disconnect-every",
                "20",
                "--escalation-ratio",
                str(settings.demo_escalation_ratio),
            ],
            {**shared, "CONVOSTREAM_SIM_API_KEY": api_key},
        ),
        *collector_and_processor(settings, ports, shared),
        Component(
            "command-worker",
            ["command-worker", "--policy-file", str(policy)],
            {
                **shared,
                "CONVOSTREAM_METRICS_PORT": str(ports.commands_metrics),
                "CONVOSTREAM_COMMANDS_KEYS": json.dumps({ISSUER: issuer_key}),
            },
        ),
        Component(
            "rules",
            ["rules", "--rules-file", str(settings.demo_rules_file), "--issuer", ISSUER],
            {
                **shared,
                "CONVOSTREAM_METRICS_PORT": str(ports.rules_metrics),
                "CONVOSTREAM_COMMANDS_KEY": issuer_key,
            },
        ),
    ]


async def _metrics(session: aiohttp.ClientSession, port: int) -> dict[str, float]:
    """Sum of every sample of each metric family of one /metrics endpoint (labels folded)."""
    try:
        async with session.get(
            f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(total=2)
        ) as resp:
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return {}
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith(("_bucket", "_created", "_sum")):
                continue
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


async def _http_json(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
            if resp.status == 200:
                data = await resp.json()
                return data if isinstance(data, dict) else None
    except (aiohttp.ClientError, TimeoutError):
        return None
    return None


# (label, metric) shown on the status line for each component's /metrics
FRAMES = "convostream_collector_frames_total"
COLLECTOR_FIELDS = (
    ("sockets", "convostream_collector_live_sockets"),
    ("frames", FRAMES),
    ("reconnects", "convostream_collector_reconnects_total"),
    ("dlq", "convostream_collector_dlq_records_total"),
    ("buffer", "convostream_collector_buffer_fill_ratio"),
)
PROCESSOR_FIELDS = (
    ("live", "convostream_live_conversations"),
    ("events", "convostream_events_total"),
    ("late", "convostream_late_events_total"),
)
COMMAND_FIELDS = (("commands", "convostream_commands_total"),)
RULES_FIELDS = (
    ("matches", "convostream_rules_matches_total"),
    ("fires", "convostream_rules_fires_total"),
)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value == int(value) else f"{value:.2f}"


def _status_line(
    elapsed: float,
    sim: dict[str, Any] | None,
    collector: dict[str, float],
    processor: dict[str, float],
    commands: dict[str, float],
    rules: dict[str, float],
    frames_per_s: float | None,
) -> str:
    upstream = "starting" if sim is None else f"live={sim.get('live')} ended={sim.get('ended')}"
    rate = "-" if frames_per_s is None else f"{frames_per_s:.0f}"
    parts = [f"{elapsed:5.0f}s", f"upstream {upstream}", f"frames/s {rate}"]
    for name, values, wanted in (
        ("collector", collector, COLLECTOR_FIELDS),
        ("processor", processor, PROCESSOR_FIELDS),
        ("commands", commands, COMMAND_FIELDS),
        ("rules", rules, RULES_FIELDS),
    ):
        missing = 0.0 if values else None  # reachable but nothing counted yet: zero
        shown = " ".join(f"{label}={_fmt(values.get(metric, missing))}" for label, metric in wanted)
        parts.append(f"{name} {shown}")
    return " | ".join(parts)


def _where_to_look(settings: DemoSettings, ports: Ports, key_file: Path) -> str:
    run = settings.demo_dir
    bootstrap = f"CONVOSTREAM_KAFKA_BOOTSTRAP=127.0.0.1:{ports.broker}"
    return "\n".join(
        [
            "Where to look next (while the demo runs, in another terminal):",
            f"  events:    {bootstrap} convostream tail convai.monitor.events",
            f"  metrics:   {bootstrap} convostream tail convai.metrics.conversations",
            f"  SQL:       sqlite3 {run / 'convostream.db'} "  # noqa: S608 - a shell hint
            "'SELECT * FROM conversation_metrics'",
            f"  lookup:    curl http://127.0.0.1:{ports.processor_web}/conversations/<id>",
            f"  command:   {bootstrap} convostream send-command end_call --conversation <id> "
            f"--issuer {ISSUER} --key-file {key_file}",
            f"  alerts:    {bootstrap} convostream tail convai.alerts",
            f"  rules:     {settings.demo_rules_file} (edit, then kill -HUP the rules process)",
            f"  Prometheus: http://127.0.0.1:{ports.collector_metrics}/metrics (collector), "
            f":{ports.processor_metrics} (processor), :{ports.commands_metrics} (commands), "
            f":{ports.rules_metrics} (rules)",
            f"  logs:      {run}/*.log",
        ]
    )


async def _steer(
    session: aiohttp.ClientSession, ports: Ports, api_key: str, key_file: Path, run: Path
) -> None:
    """Send one signed command to a live conversation, as another service would.

    The newest live conversation is steered: it is the least likely to end before the command
    arrives (a command for an ended conversation is rightly rejected as not live).
    """
    url = f"http://127.0.0.1:{ports.simulator}/v1/convai/conversations"
    params = [("page_size", "100")] + [
        ("exclude_statuses", s) for s in ("done", "failed", "processing", "initiated")
    ]
    try:
        async with session.get(url, params=params, headers={"xi-api-key": api_key}) as resp:
            listed = (await resp.json()).get("conversations") or []
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return
    if not listed:
        return
    newest = max(listed, key=lambda c: c.get("start_time_unix_secs") or 0)
    with (run / "send-command.log").open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "convostream",
            "send-command",
            "contextual_update",
            "--conversation",
            newest["conversation_id"],
            "--text",
            "The caller is a premium customer.",
            "--issuer",
            ISSUER,
            "--key-file",
            str(key_file),
            stdout=out,
            stderr=out,
            env={
                **os.environ,
                "CONVOSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{ports.broker}",
                "CONVOSTREAM_LOG_FORMAT": "json",
            },
        )
        await proc.wait()


async def stop_all(procs: list[Component]) -> None:
    """Stop ``procs`` in reverse start order, so producers flush before the broker goes."""
    for comp in reversed(procs):
        code = await comp.stop()
        log.info("stopped", component=comp.name, exit_code=code)


def failure(failed: Component) -> int:
    """Say which component exited, with its last log lines; the demo's exit code."""
    click.echo(
        f"{failed.name} exited with code {failed.exited}; last log lines:\n{failed.tail_log()}",
        err=True,
    )
    return 1


async def _run(settings: DemoSettings, stop: asyncio.Event) -> int:
    run = settings.demo_dir
    run.mkdir(parents=True, exist_ok=True)
    ports = Ports.pick()
    api_key = secrets.token_urlsafe(24)
    policy, key_file, issuer_key = write_command_credentials(run)
    procs = components(settings, ports, api_key, policy, issuer_key)
    tty = sys.stdout.isatty()
    started = time.monotonic()
    failed: Component | None = None
    try:
        for comp in procs:
            await comp.start(run)
            log.info("started", component=comp.name, log=str(comp.log_path))
            if comp.name == "broker":  # everything after it needs the topics
                await wait_until_ready(f"127.0.0.1:{ports.broker}", timeout=60)
                await create_topics(f"127.0.0.1:{ports.broker}", prefix=settings.topic_prefix)
        click.echo(
            f"convostream demo: broker 127.0.0.1:{ports.broker}, simulator "
            f"http://127.0.0.1:{ports.simulator}, logs in {run}/ (Ctrl-C stops)"
        )
        click.echo(_where_to_look(settings, ports, key_file))
        async with aiohttp.ClientSession() as session:
            last_print = 0.0
            last_frames: tuple[float, float] | None = None  # (elapsed, frames) of the last poll
            steering: asyncio.Task[None] | None = None
            last_steer = 0.0
            while not stop.is_set():
                failed = next((c for c in procs if c.exited is not None), None)
                if failed is not None:
                    break
                elapsed = time.monotonic() - started
                if settings.demo_run_for and elapsed >= settings.demo_run_for:
                    break
                sim, collector, processor, commands, rules = await asyncio.gather(
                    _http_json(session, f"http://127.0.0.1:{ports.simulator}/_sim/status"),
                    _metrics(session, ports.collector_metrics),
                    _metrics(session, ports.processor_metrics),
                    _metrics(session, ports.commands_metrics),
                    _metrics(session, ports.rules_metrics),
                )
                frames_per_s = None
                if FRAMES in collector and last_frames is not None:
                    frames_per_s = (collector[FRAMES] - last_frames[1]) / max(
                        1e-3, elapsed - last_frames[0]
                    )
                if FRAMES in collector:
                    last_frames = (elapsed, collector[FRAMES])
                line = _status_line(
                    elapsed, sim, collector, processor, commands, rules, frames_per_s
                )
                every = settings.demo_steer_every
                if (
                    every
                    and elapsed - last_steer >= every
                    and (steering is None or steering.done())
                ):
                    last_steer = elapsed
                    steering = asyncio.create_task(_steer(session, ports, api_key, key_file, run))
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
        await stop_all(procs)
    if failed is not None:
        return failure(failed)
    click.echo(f"Stopped. Logs, SQLite store and simulator files are in {run}/.")
    return 0


@click.command()
@settings_options(DemoSettings)
def demo(**values: Any) -> None:
    """Run broker, simulator and the pipeline together, with a live status line.

    Everything binds to loopback and keeps its state in memory; logs and the simulator's
    ground truth and commands log go to --dir. Ctrl-C stops every component cleanly.
    With --scale N: broker, simulator, collector and processor only, N conversations, the
    headline figures measured as bench/e2e.py measures them.
    """
    settings = load_settings(DemoSettings, values)
    runtime.setup(settings)
    result = 0

    async def main(stop: asyncio.Event) -> None:
        nonlocal result
        if settings.demo_scale:
            from convostream.demo_scale import run_scale  # it builds on this module

            result = await run_scale(settings, stop)
        else:
            result = await _run(settings, stop)

    runtime.run_until_signal(main)
    sys.exit(result)
