"""The operations port of a long-running component: ``/metrics``, ``/healthz`` and ``/readyz``.

Served from a daemon thread (like prometheus_client's own server) so that a stalled event loop
cannot stall the probes that are meant to detect it:

- ``/healthz`` (alive): the component's event loop touched its heartbeat within ``stale_after``
  seconds. A loop blocked by a bug, a deadlock or a runaway CPU-bound step fails it, and a
  Kubernetes liveness probe restarts the pod.
- ``/readyz`` (ready): every readiness condition the component declared is currently true
  (broker reachable, group joined and partitions assigned, SQL sink reachable...). Conditions are
  pushed by the component when they change (``Health.set``), so a probe never does I/O.
- ``/metrics``: the Prometheus registry in the text exposition format.

Both probes answer 200 with ``{"status": "ok"}`` or 503 with a short JSON reason naming the
failing conditions. Any other path is 404, so a probe pointed at the wrong path fails loudly.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, version
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    REGISTRY,
    CollectorRegistry,
    Gauge,
    make_wsgi_app,
)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
Environ = dict[str, Any]

HEARTBEAT_SECONDS = 1.0


class Health:
    """Liveness heartbeat and named readiness conditions of one component (thread-safe)."""

    def __init__(self, component: str, stale_after: float = 15.0) -> None:
        self.component = component
        self.stale_after = stale_after
        self._lock = threading.Lock()
        self._conditions: dict[str, tuple[bool, str]] = {}
        self._beat: float | None = None

    def declare(self, *names: str) -> None:
        """Conditions that start false ("starting") until the component sets them."""
        with self._lock:
            for name in names:
                self._conditions.setdefault(name, (False, "starting"))

    def set(self, name: str, ok: bool, reason: str = "") -> None:
        """Record whether condition ``name`` holds now; ``reason`` says why not (no secrets)."""
        with self._lock:
            self._conditions[name] = (ok, "" if ok else (reason or "not ready"))

    def beat(self) -> None:
        """Called from the component's event loop: it is alive and answering."""
        self._beat = time.monotonic()

    async def heartbeat(self) -> None:
        """Run in the component's event loop for as long as it lives."""
        while True:
            self.beat()
            await asyncio.sleep(HEARTBEAT_SECONDS)

    def start_heartbeat(self) -> asyncio.Task[None]:
        """Start :meth:`heartbeat` as a task of the running loop."""
        self.beat()
        return asyncio.get_running_loop().create_task(self.heartbeat(), name="health-heartbeat")

    def alive(self) -> tuple[bool, str]:
        beat = self._beat
        if beat is None:
            return False, "event loop not started"
        age = time.monotonic() - beat
        if age > self.stale_after:
            return False, f"event loop has not answered for {age:.0f}s"
        return True, ""

    def ready(self) -> tuple[bool, dict[str, str]]:
        """Whether every condition holds, and the reason of each one that does not."""
        alive, why = self.alive()
        with self._lock:
            failing = {name: reason for name, (ok, reason) in self._conditions.items() if not ok}
        if not alive:
            failing["event_loop"] = why
        return not failing, failing


def _json(start_response: StartResponse, status: str, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body, sort_keys=True).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


def ops_app(
    health: Health, registry: CollectorRegistry = REGISTRY
) -> Callable[[Environ, StartResponse], Iterable[bytes]]:
    """The WSGI application behind the operations port."""
    metrics = make_wsgi_app(registry)

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            alive, why = health.alive()
            if alive:
                return _json(start_response, "200 OK", {"status": "ok"})
            return _json(
                start_response, "503 Service Unavailable", {"status": "down", "reason": why}
            )
        if path == "/readyz":
            ready, failing = health.ready()
            if ready:
                return _json(start_response, "200 OK", {"status": "ok"})
            return _json(
                start_response,
                "503 Service Unavailable",
                {"status": "not ready", "failing": failing},
            )
        return _json(start_response, "404 Not Found", {"error": "not found", "paths": list(PATHS)})

    return app


PATHS = ("/metrics", "/healthz", "/readyz")


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would flood the structured logs."""


def build_version() -> str:
    try:
        return version("convostream")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def instrument(registry: CollectorRegistry, component: str) -> None:
    """Add what every component exposes: ``process_*``, ``python_*`` and
    ``convostream_build_info{component, version}`` (always 1), so a dashboard can tell versions
    apart and an ``absent()`` alert has one series per component to watch."""
    if registry is not REGISTRY:  # the default registry has the standard collectors already
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(collector)
    Gauge(
        "convostream_build_info",
        "Always 1; labels tell the component and the version it runs.",
        ["component", "version"],
        registry=registry,
    ).labels(component, build_version()).set(1)


def serve(
    port: int,
    health: Health,
    registry: CollectorRegistry = REGISTRY,
    host: str = "0.0.0.0",  # probed and scraped from outside the pod
) -> WSGIServer | None:
    """Serve the operations port from a daemon thread; nothing when ``port`` is 0.

    ``registry`` gets the standard collectors and the build info (:func:`instrument`) here, so
    every component that serves its port exposes them.
    """
    if not port:
        return None
    instrument(registry, health.component)
    server = make_server(
        host, port, ops_app(health, registry), server_class=_Server, handler_class=_QuietHandler
    )
    threading.Thread(target=server.serve_forever, name="ops-http", daemon=True).start()
    return server
