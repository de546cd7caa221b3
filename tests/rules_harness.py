"""Helpers for the rules engine's integration tests and benchmark: engine subprocesses and the
ground truth of which conversations asked for a human."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from convostream.broker import free_port
from tests.cli_process import CliProcess

EXAMPLE_RULES = Path(__file__).parent.parent / "deploy" / "rules" / "example.yaml"
TAKEOVER = {"chat": "enable_human_takeover", "voice": "transfer_to_number"}


class RulesProcess(CliProcess):
    """``python -m convostream rules`` with its own operations port."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.metrics_port = free_port()
        super().__init__(
            "rules", {**env, "CONVOSTREAM_METRICS_PORT": str(self.metrics_port)}, log_dir, name
        )


def rules_env(
    bootstrap: str, prefix: str, upstream: str, api_key: str, issuer: str, key: str, **extra: str
) -> dict[str, str]:
    return {
        "CONVOSTREAM_KAFKA_BOOTSTRAP": bootstrap,
        "CONVOSTREAM_TOPIC_PREFIX": prefix,
        "CONVOSTREAM_UPSTREAM_URL": upstream,
        "CONVOSTREAM_API_KEY": api_key,
        "CONVOSTREAM_RULES_FILE": str(EXAMPLE_RULES),
        "CONVOSTREAM_RULES_GROUP_ID": f"{prefix}rules",
        "CONVOSTREAM_COMMANDS_ISSUER": issuer,
        "CONVOSTREAM_COMMANDS_KEY": key,
        **extra,
    }


def escalated(truth_file: Path) -> set[str]:
    """Conversations whose generated frames include a user_transcript asking for a human."""
    out = set()
    for line in truth_file.read_text().splitlines():
        row = json.loads(line)
        frame = json.loads(row["frame"])
        if frame.get("type") == "user_transcript":
            text = frame["user_transcription_event"]["user_transcript"]
            if "talk to a human" in text:
                out.add(row["conversation_id"])
    return out


def received_types(log: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    """(conversation, command_type) -> how many frames the upstream received."""
    return Counter((r["conversation_id"], r["command_type"]) for r in log)
