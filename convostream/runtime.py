"""Process plumbing shared by long-running commands: logging set-up and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable

from convostream import logs
from convostream.settings import CommonSettings


def setup(settings: CommonSettings, secrets: tuple[str | None, ...] = ()) -> None:
    """Configure logging and register secrets for redaction before anything logs."""
    for secret in secrets:
        logs.register_secret(secret)
    logs.configure(settings.log_level, settings.log_format)


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)`` where ``stop`` is set on the first SIGINT or SIGTERM.

    A second signal cancels ``main`` outright, for an operator who does not want to wait for a
    graceful drain.
    """

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        task = asyncio.current_task()

        def on_signal() -> None:
            if stop.is_set() and task is not None:
                task.cancel()
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            await main(stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(runner())
