"""A ``python -m convostream <command>`` subprocess for integration tests, its log in a file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


class CliProcess:
    """One component run as in production; each (re)start gets its own log file."""

    def __init__(
        self,
        command: str,
        env: dict[str, str],
        log_dir: Path,
        name: str | None = None,
        stop_timeout: float = 30.0,
        cwd: Path | None = None,
    ) -> None:
        self.command = command
        self.env = env
        self.log_dir = log_dir
        self.name = name or command
        self.stop_timeout = stop_timeout
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []

    def start(self) -> None:
        path = self.log_dir / f"{self.name}-{len(self.logs)}.log"
        self.logs.append(path)
        with path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "convostream", self.command],
                env={**os.environ, "CONVOSTREAM_LOG_FORMAT": "json", **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        """SIGTERM and wait for the graceful exit; a process that hangs is killed and fails."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def failure_text(self, tail: int = 3000) -> str:
        """What an assertion should show: the exit code, every warning/error line and traceback
        (the cause of a crash is usually far above the shutdown chatter), then the log's tail."""
        lines = self.log_text().splitlines()
        marked = [
            line
            for line in lines
            if any(
                m in line for m in ('"level": "error"', '"level": "critical"', '"level": "warning"')
            )
            or line.startswith(("Traceback", "  File ", "    "))
            or "Error" in line
        ]
        code = None if self.proc is None else self.proc.poll()
        return (
            f"{self.name} exit code {code}\n--- errors and warnings ---\n"
            + "\n".join(marked[-60:])
            + "\n--- log tail ---\n"
            + "\n".join(lines)[-tail:]
        )
