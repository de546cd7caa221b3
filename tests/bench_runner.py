"""Running a ``bench/`` script the way a user does (its own process, ``--json``), for the
scaled-down smoke tests of the benchmarks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_bench(script: str, *args: str, timeout: float) -> Any:
    """The JSON object ``bench/<script>`` prints with ``--json``; fails the test with the tail
    of its stderr when it exits non-zero."""
    done = subprocess.run(
        [sys.executable, f"bench/{script}", *args, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)
