"""Names every consumer of ``convai.monitor.events`` matches on: the upstream event types the
metrics and rules count, and the values of a MonitorEvent's ``source``. One place, so the
processors, the backfill and the rules engine cannot drift apart."""

from __future__ import annotations

from typing import Final

USER_TRANSCRIPT: Final = "user_transcript"
AGENT_RESPONSE: Final = "agent_response"
INTERRUPTION: Final = "interruption"
CORRECTION: Final = "agent_response_correction"
TOOL_RESPONSE: Final = "agent_tool_response"
END_CALL: Final = "end_call"  # the system tool whose response ends a call

LIVE: Final = "live"  # read from a monitor socket
# Rebuilt from the post-call transcript; also the collector_id of backfilled events.
BACKFILL: Final = "backfill"
