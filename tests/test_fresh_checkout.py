"""Every long-running command starts from an empty working directory (a fresh checkout)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from convostream.broker import free_port
from tests.cli_process import CliProcess

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent


async def _metrics_answer(port: int, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline and proc.poll() is None:
            try:
                async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    if resp.status == 200:
                        return True
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.25)
    return False


@pytest.mark.parametrize("command", ["process", "collect", "command-worker"])
async def test_command_starts_in_an_empty_directory(
    command: str, kafka_broker: Any, tmp_path: Path
) -> None:
    workdir = tmp_path / "empty"
    workdir.mkdir()
    port = free_port()
    env = {
        "PYTHONPATH": str(REPO),
        "CONVOSTREAM_KAFKA_BOOTSTRAP": kafka_broker.bootstrap,
        "CONVOSTREAM_METRICS_PORT": str(port),
        "CONVOSTREAM_UPSTREAM_URL": "http://127.0.0.1:9",  # nothing to monitor: start-up only
        "CONVOSTREAM_API_KEY": "k",
        "CONVOSTREAM_LOG_FORMAT": "json",
    }
    if command == "command-worker":  # its required configuration lives outside the directory
        policy = tmp_path / "policy.json"
        policy.write_text('{"issuers": {"svc": {"commands": ["*"]}}}')
        env["CONVOSTREAM_COMMANDS_POLICY_FILE"] = str(policy)
        env["CONVOSTREAM_COMMANDS_KEYS"] = '{"svc": "k"}'
    proc = CliProcess(command, env, tmp_path, cwd=workdir)
    proc.start()
    assert proc.proc is not None
    try:
        started = await _metrics_answer(port, proc.proc, 90.0)
        await asyncio.sleep(3.0)  # past start-up: still running
        assert started, proc.failure_text()
        assert proc.alive(), proc.failure_text()
    finally:
        code = proc.stop()
    assert code == 0, proc.failure_text()
