"""Health, start-up and stop of every long-running component, run as in production.

Each component runs as a ``python -m convostream`` subprocess against a real broker that clients
reach through a :class:`~tests.collector_harness.CuttableProxy`, so "broker gone" is real: the
probes must go 503 naming the broker, come back to 200, and SIGTERM must end the process in
every state (before the broker ever answered, running, and with the broker gone).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from convostream.broker import create_topics, free_port
from convostream.runtime import EXIT_STOP_TIMEOUT
from tests.cli_process import CliProcess
from tests.collector_harness import CollectorProcess, collector_env
from tests.commands_rig import POLICY_DOC
from tests.processor_harness import ProcessorProcess, processor_env
from tests.test_collector_e2e import proxied_broker
from tests.test_ops import get

pytestmark = pytest.mark.integration
__all__ = ["proxied_broker"]  # a fixture of the collector's end-to-end tests

KEY = "health-key-" + uuid.uuid4().hex
FAST = {
    "CONVOSTREAM_HEALTH_INTERVAL": "0.5",
    "CONVOSTREAM_SHUTDOWN_TIMEOUT": "10",
}


def fetch(port: int, path: str) -> tuple[int, str]:
    try:
        return get(port, path)
    except OSError:
        return 0, "{}"  # not listening yet


def probe(port: int, path: str) -> tuple[int, dict[str, Any]]:
    status, body = fetch(port, path)
    return status, json.loads(body)


async def until(
    proc: CliProcess,
    port: int,
    path: str,
    status: int,
    body_holds: Callable[[dict[str, Any]], bool] = lambda _: True,
) -> dict[str, Any]:
    """Poll ``path`` until it answers ``status`` with a body that ``body_holds``; fail with the
    process log after a minute."""
    deadline = time.monotonic() + 60
    last: tuple[int, dict[str, Any]] = (0, {})
    while time.monotonic() < deadline:
        assert proc.alive(), proc.failure_text()
        last = await asyncio.to_thread(probe, port, path)
        if last[0] == status and body_holds(last[1]):
            return last[1]
        await asyncio.sleep(0.3)
    raise AssertionError(f"{path} never answered {status}; last {last}\n{proc.failure_text()}")


async def follow_broker(proc: CliProcess, port: int, proxy: Any) -> None:
    """Ready; broker gone: 503 naming it while still alive; back: ready again."""
    assert (await until(proc, port, "/readyz", 200)) == {"status": "ok"}
    await proxy.cut()
    body = await until(proc, port, "/readyz", 503)
    assert "broker" in body["failing"], body
    assert (await asyncio.to_thread(probe, port, "/healthz"))[0] == 200
    await proxy.restore()
    await until(proc, port, "/readyz", 200)
    status, metrics = await asyncio.to_thread(fetch, port, "/metrics")
    assert status == 200
    assert "convostream_build_info{" in metrics
    assert "process_resident_memory_bytes" in metrics
    assert "python_info" in metrics


async def test_collector_health_and_stop_with_the_broker_gone(
    proxied_broker: Any, simulator_factory: Any, tmp_path: Path
) -> None:
    proxy, bootstrap = proxied_broker
    sim = await simulator_factory(api_key=KEY, seed=3, conversations=2)
    port = free_port()
    env = collector_env(bootstrap, sim.url, KEY, "", f"g-{uuid.uuid4().hex[:8]}")
    collector = CollectorProcess(
        "h", {**env, **FAST, "CONVOSTREAM_METRICS_PORT": str(port)}, tmp_path
    )
    collector.start()
    try:
        await follow_broker(collector, port, proxy)
        await proxy.cut()
        await until(collector, port, "/readyz", 503)
    finally:
        # With the broker gone the hand-over cannot be flushed: the stop is bounded by
        # CONVOSTREAM_SHUTDOWN_TIMEOUT (exit 4) and CliProcess.stop fails if it hangs instead.
        code = collector.stop()
    assert code in (0, EXIT_STOP_TIMEOUT), collector.failure_text()
    assert "Traceback" not in collector.log_text()
    await proxy.restore()


async def follow_broker_and_stop(
    command: str, env: dict[str, str], proxy: Any, tmp_path: Path
) -> None:
    """Run ``command`` with its operations port on, through :func:`follow_broker`, then stop
    it with SIGTERM: exit 0."""
    port = free_port()
    proc = CliProcess(
        command,
        {
            "CONVOSTREAM_UPSTREAM_URL": "http://127.0.0.1:9",
            "CONVOSTREAM_API_KEY": KEY,
            "CONVOSTREAM_METRICS_PORT": str(port),
            **env,
            **FAST,
        },
        tmp_path,
    )
    proc.start()
    try:
        await follow_broker(proc, port, proxy)
    finally:
        code = proc.stop()
    assert code == 0, proc.failure_text()


async def test_command_worker_health(proxied_broker: Any, tmp_path: Path) -> None:
    proxy, bootstrap = proxied_broker
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY_DOC))
    env = {
        "CONVOSTREAM_KAFKA_BOOTSTRAP": bootstrap,
        "CONVOSTREAM_COMMANDS_POLICY_FILE": str(policy),
        "CONVOSTREAM_COMMANDS_KEYS": json.dumps({"svc": "k" * 32}),
        "CONVOSTREAM_COMMANDS_GROUP_ID": f"w-{uuid.uuid4().hex[:8]}",
    }
    await follow_broker_and_stop("command-worker", env, proxy, tmp_path)


def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n  - name: any\n    when: {type: interruption}\n    then: {alert: info}\n"
    )
    return path


async def test_rules_engine_health(proxied_broker: Any, tmp_path: Path) -> None:
    proxy, bootstrap = proxied_broker
    env = {
        "CONVOSTREAM_KAFKA_BOOTSTRAP": bootstrap,
        "CONVOSTREAM_RULES_FILE": str(rules_file(tmp_path)),
        "CONVOSTREAM_COMMANDS_ISSUER": "svc",
        "CONVOSTREAM_COMMANDS_KEY": "k" * 32,
        "CONVOSTREAM_RULES_GROUP_ID": f"r-{uuid.uuid4().hex[:8]}",
    }
    await follow_broker_and_stop("rules", env, proxy, tmp_path)


async def processor(bootstrap: str, tmp_path: Path, port: int) -> ProcessorProcess:
    """A processor on topics of its own (prefix), created first as ``convostream broker`` does."""
    prefix = f"h{uuid.uuid4().hex[:8]}."
    await create_topics(bootstrap, prefix=prefix)
    return ProcessorProcess(
        processor_env(
            bootstrap,
            prefix,
            f"sqlite:///{tmp_path / 'metrics.db'}",
            tmp_path / "state",
            CONVOSTREAM_METRICS_PORT=str(port),
            CONVOSTREAM_PROCESSOR_APP_ID=f"health-{uuid.uuid4().hex[:8]}",
            **FAST,
        ),
        tmp_path,
    )


async def test_processor_health(proxied_broker: Any, tmp_path: Path) -> None:
    proxy, bootstrap = proxied_broker
    port = free_port()
    proc = await processor(bootstrap, tmp_path, port)
    proc.start()
    try:
        await follow_broker(proc, port, proxy)
    finally:
        # Faust may not finish draining after a broker outage (README, exit codes): the stop
        # is bounded by CONVOSTREAM_SHUTDOWN_TIMEOUT, and CliProcess.stop fails on a hang.
        code = proc.stop()
    assert code in (0, EXIT_STOP_TIMEOUT), proc.failure_text()


async def test_processor_drains_on_sigterm(kafka_broker: Any, tmp_path: Path) -> None:
    port = free_port()
    proc = await processor(kafka_broker.bootstrap, tmp_path, port)
    proc.start()
    await until(proc, port, "/readyz", 200)
    assert proc.stop() == 0, proc.failure_text()
    log = proc.log_text()
    # Graceful: the streams were waited for and every service stopped before the loop closed.
    for step in ("Signal received", "Wait for streams", "Closing event loop"):
        assert step in log, (step, log[-3000:])
    assert "graceful stop took too long" not in log


@pytest.mark.parametrize("command", ["collect", "process", "command-worker", "rules"])
async def test_sigterm_while_the_broker_was_never_reachable(command: str, tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY_DOC))
    port = free_port()
    proc = CliProcess(
        command,
        {
            "CONVOSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",  # nothing listens
            "CONVOSTREAM_API_KEY": KEY,
            "CONVOSTREAM_COMMANDS_POLICY_FILE": str(policy),
            "CONVOSTREAM_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}",
            "CONVOSTREAM_RULES_FILE": str(rules_file(tmp_path)),
            "CONVOSTREAM_COMMANDS_ISSUER": "svc",
            "CONVOSTREAM_COMMANDS_KEY": "k" * 32,
            "CONVOSTREAM_METRICS_PORT": str(port),
            **FAST,
        },
        tmp_path,
        stop_timeout=15,
    )
    proc.start()
    if command != "process":  # Faust serves nothing before it starts
        # 503 "starting" comes first, until the first connection attempt has failed
        await until(
            proc,
            port,
            "/readyz",
            503,
            lambda b: b.get("failing", {}).get("broker", "").startswith("broker unreachable"),
        )
    else:
        deadline = time.monotonic() + 60
        while "dependency unreachable; retrying" not in proc.log_text():
            assert time.monotonic() < deadline, proc.failure_text()
            await asyncio.sleep(0.3)
    assert proc.stop() == 0, proc.failure_text()
    assert "stopped while waiting for a dependency" in proc.log_text()


def test_unreachable_broker_past_the_startup_budget_exits_3(tmp_path: Path) -> None:
    proc = CliProcess(
        "collect",
        {
            "CONVOSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
            "CONVOSTREAM_API_KEY": KEY,
            "CONVOSTREAM_STARTUP_TIMEOUT": "2",
        },
        tmp_path,
    )
    proc.start()
    assert proc.proc is not None
    assert proc.proc.wait(60) == 3
    log = proc.log_text()
    assert "dependency unreachable; giving up" in log
    assert "Traceback" not in log
    assert KEY not in log
