"""``convostream simulate``: the simulated upstream in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from convostream import runtime
from convostream.logs import get_logger
from convostream.settings import load_settings, settings_options
from simulator.server import Simulator
from simulator.settings import SimulatorSettings


@click.command()
@settings_options(SimulatorSettings)
def simulate(**values: Any) -> None:
    """Run the ElevenLabs monitoring simulator: monitor sockets and REST on one port.

    Prints the chosen port (``--port 0`` picks a free one), generates --conversations live
    conversations from --seed, writes --ground-truth and --commands-log, and runs until Ctrl-C
    (sockets close 1001, files are flushed) or, with --exit-when-done, until every conversation
    has ended.
    """
    settings = load_settings(SimulatorSettings, values)
    hook_secret = settings.sim_webhook_secret
    runtime.setup(
        settings,
        secrets=(
            settings.sim_api_key.get_secret_value(),
            hook_secret.get_secret_value() if hook_secret else None,
        ),
    )
    log = get_logger("simulator")

    async def main(stop: asyncio.Event) -> None:
        sim = Simulator(settings)
        await sim.start()
        click.echo(f"simulator listening on {sim.url} (port {sim.port})")
        waiters: list[asyncio.Task[Any]] = [asyncio.create_task(stop.wait())]
        if settings.sim_exit_when_done:
            waiters.append(asyncio.create_task(sim.wait_finished()))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waiters:
                task.cancel()
            await sim.stop()
            log.info("simulator stopped", **sim.status())

    runtime.run_until_signal(main)
