"""What a process costs, read from /proc, and what a component reports on ``/metrics``.

Shared by the benchmarks (``bench/``) and ``convostream demo --scale``, so that the figures
the demo prints are measured exactly as the README's are.
"""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | str = "self") -> float:
    """CPU seconds (user + system, all threads) process ``pid`` (default: this one) has used
    so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_kib(pid: int) -> int:
    """Resident set of process ``pid``, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback http
        return str(resp.read().decode())


def wait_http(url: str, timeout: float = 30) -> None:
    """Return once ``url`` answers; raise the last connection error after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            http_get(url)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def scrape(port: int) -> dict[str, float]:
    """Every sample of the loopback ``/metrics`` on ``port``, by its exposition name."""
    out: dict[str, float] = {}
    for line in http_get(f"http://127.0.0.1:{port}/metrics").splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def published_events(m: dict[str, float]) -> float:
    """Records the broker acknowledged to a collector on the events topic, from a scrape."""
    return sum(v for k, v in m.items() if "published_records_total" in k and "monitor.events" in k)
