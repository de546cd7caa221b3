"""The topic catalogue: every topic the pipeline reads or writes, and how it is configured."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CleanupPolicy = Literal["delete", "compact"]


@dataclass(frozen=True, slots=True)
class Topic:
    """One Kafka topic of the contract (DESIGN.md §2)."""

    name: str
    key: str
    value_schema: str
    partitions: int
    cleanup_policy: CleanupPolicy
    description: str

    def full_name(self, prefix: str = "") -> str:
        return f"{prefix}{self.name}"

    def configs(self) -> dict[str, str]:
        """Topic configs sent on creation (retention.ms is set for brokers that need it)."""
        if self.cleanup_policy == "compact":
            return {"cleanup.policy": "compact"}
        return {"cleanup.policy": "delete", "retention.ms": str(7 * 24 * 3600 * 1000)}


CONVERSATIONS = Topic(
    "convai.conversations",
    "conversation_id",
    "ConversationLifecycle",
    12,
    "delete",
    "Conversation lifecycle: discovered, monitoring, ended, gap; announcements from services.",
)
MONITOR_EVENTS = Topic(
    "convai.monitor.events",
    "conversation_id",
    "MonitorEvent",
    12,
    "delete",
    "Every monitored upstream frame, exactly once in normal operation.",
)
MONITOR_DLQ = Topic(
    "convai.monitor.dlq",
    "conversation_id or null",
    "DeadLetter",
    3,
    "delete",
    "Frames that could not be read, with the reason and the raw bytes.",
)
COMMANDS = Topic(
    "convai.commands",
    "conversation_id",
    "ControlCommand",
    6,
    "delete",
    "Control commands written by other services.",
)
COMMAND_RESULTS = Topic(
    "convai.command-results",
    "conversation_id",
    "CommandResult",
    6,
    "delete",
    "Exactly one result per command, whatever happened.",
)
COMMAND_INTENTS = Topic(
    "convai.command-intents",
    "command_id",
    "ControlCommand",
    6,
    "delete",
    "Internal write-ahead log of the command workers: a command about to be written upstream "
    "(headers: source partition/offset). Keyed by command_id, so every copy of a command lands "
    "in one partition and the first intent there claims it; every worker reads all partitions. "
    "Copies share a key, and claims must stay in order: time retention, not compaction.",
)
METRICS_CONVERSATIONS = Topic(
    "convai.metrics.conversations",
    "conversation_id",
    "ConversationMetrics",
    12,
    "compact",
    "Latest per-conversation metrics summary (compacted).",
)
METRICS_AGENT_WINDOWS = Topic(
    "convai.metrics.agent-windows",
    "agent_id + window start",
    "AgentWindowMetrics",
    6,
    "delete",
    "Final per-agent tumbling windows, emitted once.",
)
EVENTS_LATE = Topic(
    "convai.events.late",
    "conversation_id",
    "MonitorEvent",
    3,
    "delete",
    "Events that arrived after their window was final.",
)

ALERTS = Topic(
    "convai.alerts",
    "conversation_id",
    "Alert",
    6,
    "delete",
    "Alerts raised by the rules engine; at most one per (rule, conversation) by alert_id.",
)
RULES_STATE = Topic(
    "convai.rules.state",
    "group id / conversation_id",
    "RuleState",
    12,
    "compact",
    "Internal changelog of the rules engine: per-conversation rule progress, written to the "
    "partition number of the conversation's events; same partition count as "
    "convai.monitor.events.",
)
POSTCALL = Topic(
    "convai.postcall",
    "conversation_id",
    "PostCall",
    6,
    "compact",
    "Verified post-call webhooks (latest per conversation, compacted).",
)

CATALOGUE: tuple[Topic, ...] = (
    CONVERSATIONS,
    MONITOR_EVENTS,
    MONITOR_DLQ,
    COMMANDS,
    COMMAND_RESULTS,
    COMMAND_INTENTS,
    METRICS_CONVERSATIONS,
    METRICS_AGENT_WINDOWS,
    EVENTS_LATE,
    ALERTS,
    RULES_STATE,
    POSTCALL,
)

BY_NAME: dict[str, Topic] = {t.name: t for t in CATALOGUE}


def lookup(name: str, prefix: str = "") -> Topic:
    """Find a catalogue topic by its name, with or without the configured prefix."""
    if prefix and name.startswith(prefix):
        name = name[len(prefix) :]
    try:
        return BY_NAME[name]
    except KeyError:
        known = ", ".join(sorted(BY_NAME))
        raise KeyError(f"unknown topic {name!r}; known topics: {known}") from None
