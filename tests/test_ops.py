"""The operations port: probes answer from the component's declared state over real HTTP."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

from prometheus_client import CollectorRegistry, Counter

from convostream.broker import free_port
from convostream.ops import Health, serve


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_probes_follow_the_heartbeat_and_conditions() -> None:
    registry = CollectorRegistry()
    Counter("convostream_test_things", "Things.", registry=registry).inc(3)
    health = Health("test", stale_after=0.5)
    health.declare("broker", "assignment")
    port = free_port()
    server = serve(port, health, registry, host="127.0.0.1")
    assert server is not None
    try:
        # Before the loop beats: neither alive nor ready.
        status, body = await asyncio.to_thread(get, port, "/healthz")
        assert status == 503
        task = health.start_heartbeat()
        assert (await asyncio.to_thread(get, port, "/healthz"))[0] == 200
        status, body = await asyncio.to_thread(get, port, "/readyz")
        assert status == 503
        assert json.loads(body)["failing"] == {"broker": "starting", "assignment": "starting"}

        health.set("broker", True)
        health.set("assignment", True)
        assert (await asyncio.to_thread(get, port, "/readyz"))[0] == 200
        health.set("broker", False, "broker unreachable")
        status, body = await asyncio.to_thread(get, port, "/readyz")
        assert (status, json.loads(body)["failing"]) == (503, {"broker": "broker unreachable"})

        status, body = await asyncio.to_thread(get, port, "/metrics")
        assert status == 200
        assert "convostream_test_things_total 3.0" in body
        assert (await asyncio.to_thread(get, port, "/other"))[0] == 404

        # A loop that stops answering is reported dead and not ready.
        task.cancel()
        await asyncio.sleep(0.7)
        status, body = await asyncio.to_thread(get, port, "/healthz")
        assert status == 503
        assert "has not answered" in json.loads(body)["reason"]
        assert (await asyncio.to_thread(get, port, "/readyz"))[0] == 503
    finally:
        server.shutdown()
        server.server_close()


def test_port_zero_serves_nothing() -> None:
    assert serve(0, Health("test")) is None
