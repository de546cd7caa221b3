"""How a component's main coroutine ends decides its exit: signals stop it, nothing else does
silently."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from convostream import runtime


def test_a_cancellation_no_signal_asked_for_exits_as_a_failure() -> None:
    async def main(stop: asyncio.Event) -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # as a library cancelling the wrong task would
        await asyncio.sleep(5)

    with pytest.raises(SystemExit) as exited:
        runtime.run_until_signal(main)
    assert exited.value.code == 1


def test_a_second_signal_cancels_the_drain_and_ends_cleanly() -> None:
    drained: list[bool] = []

    async def main(stop: asyncio.Event) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        await stop.wait()
        os.kill(os.getpid(), signal.SIGTERM)  # the operator does not wait for the drain
        try:
            await asyncio.sleep(5)
            drained.append(True)
        except asyncio.CancelledError:
            drained.append(False)
            raise

    runtime.run_until_signal(main)  # returns: exit code 0
    assert drained == [False]


def test_a_first_signal_lets_main_drain() -> None:
    async def main(stop: asyncio.Event) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        await stop.wait()

    runtime.run_until_signal(main)
