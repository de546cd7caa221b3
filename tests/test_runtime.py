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


async def test_a_close_cut_short_by_its_own_cancelled_task_does_not_cancel_the_caller() -> None:
    inner = asyncio.create_task(asyncio.sleep(5))
    inner.cancel()  # as aiokafka's consumer.stop() awaiting a coordinator task cancelled inside
    await runtime.unless_cancelled_here(inner)  # no CancelledError: the shutdown goes on
    assert inner.cancelled()


async def test_a_cancellation_of_the_caller_still_propagates() -> None:
    async def closing() -> None:
        await runtime.unless_cancelled_here(asyncio.sleep(5))

    task = asyncio.create_task(closing())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
