"""Start-up waits and readiness checks against real servers: a broker, an HTTP registry, and a
port where nothing listens."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from convostream.broker import free_port
from convostream.readiness import (
    Unreachable,
    broker_problem,
    dependencies_ready,
    registry_problem,
)
from convostream.settings import CommonSettings

pytestmark = pytest.mark.integration


@pytest.fixture
async def registry() -> AsyncIterator[tuple[str, dict[str, int]]]:
    """A stand-in registry whose /subjects answers the status in ``state``."""
    state = {"status": 200}

    async def subjects(_request: web.Request) -> web.Response:
        return web.json_response([], status=state["status"])

    app = web.Application()
    app.router.add_get("/subjects", subjects)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://user:secret@127.0.0.1:{port}", state
    finally:
        await runner.cleanup()


def settings(**values: Any) -> CommonSettings:
    return CommonSettings(_env_file=None, **values)


async def test_broker_check(kafka_broker: Any) -> None:
    assert await broker_problem(kafka_broker.bootstrap) is None
    problem = await broker_problem(f"127.0.0.1:{free_port()}", timeout=3)
    assert problem is not None
    assert problem.startswith("broker unreachable")


async def test_registry_check_names_no_credentials(registry: Any) -> None:
    url, state = registry
    assert await registry_problem(url) is None
    state["status"] = 503
    assert await registry_problem(url) == "schema registry answered HTTP 503"
    problem = await registry_problem(f"http://user:secret@127.0.0.1:{free_port()}")
    assert problem is not None
    assert "unreachable" in problem
    assert "secret" not in problem


async def test_start_waits_for_the_registry_then_gives_up(kafka_broker: Any, registry: Any) -> None:
    url, state = registry
    state["status"] = 503
    wanted = settings(
        kafka_bootstrap=kafka_broker.bootstrap, schema_registry_url=url, startup_timeout=1.5
    )
    with pytest.raises(Unreachable, match="schema_registry"):
        await dependencies_ready(wanted, asyncio.Event())
    state["status"] = 200
    assert await dependencies_ready(wanted, asyncio.Event()) is True


async def test_stop_ends_the_wait(registry: Any) -> None:
    wanted = settings(kafka_bootstrap=f"127.0.0.1:{free_port()}", startup_timeout=600)
    stop = asyncio.Event()
    waiting = asyncio.create_task(dependencies_ready(wanted, stop))
    await asyncio.sleep(1.0)
    assert not waiting.done()
    stop.set()
    assert await asyncio.wait_for(waiting, 10) is False
