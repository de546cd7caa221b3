"""Helpers for tests and benchmarks: start simulators in-process and read monitor sockets."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from simulator.server import Simulator
from simulator.settings import SimulatorSettings

API_KEY = "sim-test-key"


class SimulatorFactory:
    """``await factory(conversations=3, seed=1)`` starts a simulator on a free port."""

    def __init__(self) -> None:
        self.started: list[Simulator] = []

    async def __call__(self, **knobs: Any) -> Simulator:
        values = {k if k.startswith("sim_") else f"sim_{k}": v for k, v in knobs.items()}
        values.setdefault("sim_api_key", API_KEY)
        values.setdefault("sim_port", 0)
        # Sockets opened right after start would meet "initiated" (1008): tests of that ask.
        values.setdefault("sim_initiated_seconds", 0.0)
        sim = Simulator(SimulatorSettings(_env_file=None, **values))
        await sim.start()
        self.started.append(sim)
        return sim

    async def __aenter__(self) -> SimulatorFactory:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for sim in self.started:
            await sim.stop()


@dataclass
class Received:
    """What one monitor connection saw: frames with arrival time, and how it ended."""

    frames: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    code: int | None = None
    reason: str = ""


def monitor(sim: Simulator, conversation_id: str, key: str | None = API_KEY) -> Any:
    """Open a monitor socket (an async context manager) with ``xi-api-key`` unless None."""
    headers = {"xi-api-key": key} if key is not None else {}
    return connect(
        sim.monitor_url(conversation_id),
        additional_headers=headers,
        max_queue=None,
        compression=None,
    )


async def read_all(
    ws: ClientConnection, timeout: float = 30.0, limit: int | None = None
) -> Received:
    """Read until the socket closes (or ``limit`` frames); record the close code and reason."""
    out = Received()
    loop = asyncio.get_running_loop()

    async def reader() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                out.frames.append(message if isinstance(message, str) else message.decode())
                out.times.append(loop.time())
                if limit is not None and len(out.frames) >= limit:
                    return

    await asyncio.wait_for(reader(), timeout)
    if ws.close_code is not None or limit is None:
        out.code = ws.close_code
        out.reason = ws.close_reason or ""
    return out


async def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.01) -> None:
    """Poll ``predicate()`` until true."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polls state owned by the simulator
            await asyncio.sleep(interval)
