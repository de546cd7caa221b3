"""Process plumbing shared by long-running commands: logging, start-up, health and shutdown.

Exit codes, the same for every component (README, "Exit codes"): 0 stopped by SIGINT/SIGTERM,
1 unexpected failure, 2 bad configuration (also credentials or a certificate the broker
refuses), 3 a dependency (broker, schema registry) unreachable
for the whole start-up budget, 4 a graceful stop that took longer than ``shutdown_timeout`` and
was abandoned.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from prometheus_client import CollectorRegistry

from convostream import kafka_compat, logs, readiness
from convostream.ops import Health, serve
from convostream.settings import CommonSettings, ConfigError

EXIT_UNREACHABLE = 3
EXIT_STOP_TIMEOUT = 4

# Measured (bench/ingest.py, py-spy, gc.callbacks): with the default (700, 10, 10), a collector
# of 1,000 sockets at full load spent about a third of its CPU in the garbage collector, most of
# it in full collections of ~0.3 s each (the records and frames waiting to be published survive
# the young generations), which also set the latency tail; the processors gained about 5%
# (bench/process.py, alternating runs). Their hot paths allocate a few acyclic objects per event.
GC_THRESHOLDS = (20_000, 10, 10)

log = logs.get_logger(__name__)


def setup(settings: CommonSettings, secrets: tuple[str | None, ...] = ()) -> None:
    """Configure logging, register secrets for redaction before anything logs, and make
    idempotent producers work on every broker (:mod:`convostream.kafka_compat`)."""
    kafka_compat.install()
    for secret in (*secrets, *settings.secrets()):
        logs.register_secret(secret)
    logs.configure(settings.log_level, settings.log_format)


def tune_gc() -> None:
    """Young collections 30x rarer (:data:`GC_THRESHOLDS`), and the objects of start-up
    (modules, classes, apps) frozen out of every collection; call once start-up is done."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def serve_ops(port: int, health: Health, registry: CollectorRegistry) -> None:
    """The operations port (:func:`convostream.ops.serve`); a port in use is a start-up error."""
    try:
        serve(port, health, registry)
    except OSError as exc:
        raise ConfigError(
            f"CONVOSTREAM_METRICS_PORT / --metrics-port: cannot listen on {port}: {exc.strerror}"
        ) from None


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)`` where ``stop`` is set on the first SIGINT or SIGTERM.

    A second signal cancels ``main`` outright, for an operator who does not want to wait for a
    graceful drain. A dependency that never answered at start exits with code 3. A cancellation
    that no signal asked for (a library cancelling the wrong task) is a failure, exit code 1,
    never a silent exit 0 that a supervisor would take for a requested stop.
    """
    cancelled_by_signal = False

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        task = asyncio.current_task()

        def on_signal() -> None:
            nonlocal cancelled_by_signal
            if stop.is_set() and task is not None:
                cancelled_by_signal = True
                task.cancel()
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            await main(stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(runner())
    except asyncio.CancelledError as exc:
        if not cancelled_by_signal:
            log.error("main task cancelled without a stop signal; exiting as failed", exc_info=exc)
            logs.flush()
            sys.exit(1)
    except readiness.Unreachable:
        sys.exit(EXIT_UNREACHABLE)
    except readiness.Refused as exc:
        raise ConfigError(str(exc)) from None


async def unless_cancelled_here(awaitable: Awaitable[object]) -> None:
    """Await ``awaitable``, letting a cancellation through only if it is this task's.

    A close that awaits an internal task cancelled inside it (aiokafka's ``consumer.stop()``
    during a rebalance, a monitor's own task) re-raises that cancellation in the caller; passed
    on, it would cut a shutdown short before the steps after it (the producer's close)."""
    try:
        await awaitable
    except asyncio.CancelledError:
        if (task := asyncio.current_task()) is not None and task.cancelling():
            raise


def arm_stop_watchdog(timeout: float) -> None:
    """Exit with code 4 if the process is still here ``timeout`` seconds after a stop began.

    A thread, not a loop callback: the drain it bounds may be stuck inside the event loop.
    """

    def expire() -> None:
        log.error("graceful stop took too long; abandoning it", shutdown_timeout=timeout)
        logs.flush()
        os._exit(EXIT_STOP_TIMEOUT)

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()


def await_dependencies(settings: CommonSettings, health: Health) -> None:
    """Before a component that owns its event loop (Faust) starts: wait for the broker and the
    registry, alive meanwhile; exit 0 on SIGTERM, 3 when they never answer."""
    ready = False

    async def main(stop: asyncio.Event) -> None:
        nonlocal ready
        beat = health.start_heartbeat()
        try:
            ready = await readiness.dependencies_ready(settings, stop)
        finally:
            beat.cancel()

    run_until_signal(main)
    if not ready:
        sys.exit(0)


def run_component(
    settings: CommonSettings,
    health: Health,
    body: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
) -> None:
    """Run ``body(stop)`` once the dependencies answer, with a heartbeat and a broker watch.

    ``stop`` is set by SIGINT/SIGTERM; ``body`` then has ``shutdown_timeout`` seconds to drain
    before the process exits anyway (code 4), so a stop is honoured promptly whatever state
    ``body`` is in (even blocked on an unreachable broker).
    """

    async def main(stop: asyncio.Event) -> None:
        beat = health.start_heartbeat()
        watcher = asyncio.create_task(
            readiness.watch(
                health,
                "broker",
                readiness.checks(settings)["broker"],
                settings.health_interval,
            ),
            name="broker-watch",
        )
        try:
            if not await readiness.dependencies_ready(settings, stop):
                return
            task = asyncio.create_task(body(stop), name=health.component)
            await readiness.until_stopped(asyncio.shield(task), stop)
            if not task.done():
                arm_stop_watchdog(settings.shutdown_timeout)
            await task
        finally:
            watcher.cancel()
            beat.cancel()

    run_until_signal(main)
