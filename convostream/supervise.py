"""Child processes for ``convostream demo``: start, watch and stop pipeline components.

Each component runs as its own ``convostream`` sub-command, exactly as it would in production,
with its log in a file of the run directory, so a crash in one never takes the others down
silently: the supervisor notices and reports it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Component:
    """One ``convostream`` sub-command run as a child process."""

    name: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    log_path: Path | None = None

    async def start(self, run_dir: Path) -> None:
        self.log_path = run_dir / f"{self.name}.log"
        log_file = self.log_path.open("ab")
        env = {**os.environ, "CONVOSTREAM_LOG_FORMAT": "json", **self.env}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "convostream",
            *self.args,
            stdout=log_file,
            stderr=log_file,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the demo only; it stops children in order
        )
        log_file.close()

    @property
    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    async def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait for a graceful exit, SIGKILL if it does not come."""
        if self.proc is None or self.proc.returncode is not None:
            return self.exited
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        return self.proc.returncode

    def tail_log(self, lines: int = 5) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
