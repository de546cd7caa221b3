"""``convostream demo`` starts every component and stops them all cleanly."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from convostream.demo_scale import SHOWN

pytestmark = pytest.mark.integration
COMPONENTS = ("broker", "simulator", "collector", "processor", "command-worker", "rules")
SCALE_COMPONENTS = ("broker", "simulator", "collector", "processor")
TAKEOVERS = {"enable_human_takeover", "transfer_to_number"}


def _demo(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "convostream", "demo", "--dir", str(tmp_path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CONVOSTREAM_LOG_FORMAT": "json"},
    )


def _stopped_components(stderr: str) -> dict[str, int]:
    out = {}
    for line in stderr.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == "stopped":
                out[entry["component"]] = entry["exit_code"]
    return out


def test_demo_runs_the_whole_pipeline_and_stops_by_itself(tmp_path: Path) -> None:
    proc = _demo(
        tmp_path,
        "--run-for",
        "20",
        "--conversations",
        "5",
        "--events-per-second",
        "10",
        "--steer-every",
        "5",
        "--escalation-ratio",
        "1",
    )
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    assert "convostream demo: broker 127.0.0.1:" in stdout
    assert _stopped_components(stderr) == dict.fromkeys(COMPONENTS, 0)
    lines = (tmp_path / "ground-truth.jsonl").read_text().splitlines()
    assert lines, "the simulator generated no frames"
    with sqlite3.connect(tmp_path / "convostream.db") as db:
        rows = db.execute("SELECT COUNT(*), SUM(events_total) FROM conversation_metrics").fetchone()
    assert rows[0] > 0, "the processors wrote no metrics"
    assert rows[1] > 0
    results = [
        json.loads(line)
        for line in (tmp_path / "send-command.log").read_text().splitlines()
        if line.startswith('{"command_id"')
    ]
    assert results, "no command was sent"
    received = [json.loads(line) for line in (tmp_path / "commands.jsonl").read_text().splitlines()]
    assert TAKEOVERS & {r["command_type"] for r in received}, "the rules engine steered nothing"
    # A conversation may end between the listing and the command: that command is rightly
    # rejected as not live; any other outcome is a failure.
    assert any(r["status"] == "delivered" for r in results), results
    assert all(r["status"] == "delivered" or "not live" in (r["reason"] or "") for r in results), (
        results
    )
    assert re.search(r"rules matches=\d+ fires=[1-9]", stdout), stdout[-2000:]


def test_demo_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    proc = _demo(tmp_path, "--conversations", "3")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (tmp_path / "ground-truth.jsonl").exists():
            time.sleep(0.2)
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    stopped = _stopped_components(stderr)
    assert set(stopped) == set(COMPONENTS)
    assert all(code == 0 for code in stopped.values()), stopped


def test_demo_scale_measures_and_prints_the_headline_figures(tmp_path: Path) -> None:
    proc = _demo(tmp_path, "--scale", "200", "--scale-seconds", "3")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    figures = dict(re.findall(r"^  (\S.*?)\s{2,}([\d.]+)", stdout, re.MULTILINE))
    assert set(figures) == {label for label, _, _ in SHOWN}, stdout
    assert 0 < float(figures["conversations monitored"]) <= 200
    assert float(figures["events/s (published)"]) > 0
    assert float(figures["collector RSS per conversation"]) > 0
    assert float(figures["processor RSS"]) > 0
    assert _stopped_components(stderr) == dict.fromkeys(SCALE_COMPONENTS, 0)
