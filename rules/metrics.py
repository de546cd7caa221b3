"""Prometheus metrics of the rules engine (``convostream_rules_*``)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from convostream.plain_counts import PlainCounter

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RulesMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.events = Counter(
            "convostream_rules_events_total", "Monitor events evaluated.", registry=registry
        )
        # per event and per fire: plain counts (convostream.plain_counts)
        self.matches = PlainCounter(
            "convostream_rules_matches",
            "Distinct events that matched a rule's condition.",
            ["rule"],
            registry,
        )
        self.fires = PlainCounter(
            "convostream_rules_fires",
            "Rules fired (once per conversation), by action: the command type or alert.",
            ["rule", "action"],
            registry,
        )
        self.skipped = PlainCounter(
            "convostream_rules_skipped",
            "Fires whose command was not sent, by reason (backfill: the event was repaired "
            "after the call, so the conversation is over).",
            ["rule", "reason"],
            registry,
        )
        self.evaluation = Histogram(
            "convostream_rules_evaluation_seconds",
            "Time to evaluate one fetched batch of events against every rule.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.fire_latency = Histogram(
            "convostream_rules_fire_latency_seconds",
            "From the collector reading the event that completed a rule to its command or "
            "alert acknowledged on the topic.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.rules = Gauge("convostream_rules_loaded", "Rules currently loaded.", registry=registry)
        self.conversations = Gauge(
            "convostream_rules_conversations",
            "Conversations with rule state held by this engine.",
            registry=registry,
        )
        self.reloads = Counter(
            "convostream_rules_reloads_total",
            "Rules file reloads on SIGHUP, by result (ok, error: old rules kept).",
            ["result"],
            registry=registry,
        )
        self.lookups = Counter(
            "convostream_rules_channel_lookups_total",
            "Conversation REST lookups for the channel, by result (chat, voice, unknown, error).",
            ["result"],
            registry=registry,
        )
