"""Prometheus metrics of the processors: labels are agent and type only, never conversation ids.

Counters move on first-seen events (after de-duplication), so a replay after a restart does not
inflate them beyond what a counter reset already implies.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_P = "convostream_"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30)


class ProcessorMetrics:
    """Every metric of one processor worker, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.live_conversations = Gauge(
            _P + "live_conversations",
            "Conversations seen by this worker that have not ended, per agent.",
            ["agent"],
            registry=r,
        )
        self.events = Counter(
            _P + "events",
            "Distinct monitor events processed (by event_key), per upstream type.",
            ["type"],
            registry=r,
        )
        self.response_latency = Histogram(
            _P + "response_latency_seconds",
            "Agent response latency (user_transcript to the next agent_response by event id).",
            ["agent"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.interruptions = Counter(
            _P + "interruptions", "Distinct interruption events.", ["agent"], registry=r
        )
        self.corrections = Counter(
            _P + "corrections", "Distinct agent_response_correction events.", ["agent"], registry=r
        )
        self.tool_errors = Counter(
            _P + "tool_errors",
            "Distinct agent_tool_response events with is_error.",
            ["agent"],
            registry=r,
        )
        self.late_events = Counter(
            _P + "late_events",
            "Events whose agent window was already final (sent to convai.events.late).",
            ["agent"],
            registry=r,
        )
        self.clamped_events = Counter(
            _P + "window_clamped_events",
            "Events whose received_at lay more than the allowed bound ahead of the processor's "
            "clock (a collector clock in the future); windowed at the bound instead.",
            ["agent"],
            registry=r,
        )
        self.windows_emitted = Counter(
            _P + "windows_emitted",
            "Final agent windows emitted, by close reason.",
            ["reason"],
            registry=r,
        )
        self.window_lag = Gauge(
            _P + "window_lag_seconds",
            "Wall clock minus the agent's event time (largest received_at seen).",
            ["agent"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            _P + "consumer_lag_messages",
            "Messages of convai.monitor.events not yet processed by this worker.",
            registry=r,
        )
        self.states_expired = Counter(
            _P + "conversation_states_expired",
            "Conversation states deleted by state retention (untouched for longer than it).",
            registry=r,
        )
        self.stored_conversations = Gauge(
            _P + "stored_conversations",
            "Conversation states stored on this worker's partitions, at the last retention sweep.",
            registry=r,
        )
        self.expired_events = Counter(
            _P + "expired_events",
            "Events skipped because they were older than the state retention and their "
            "conversation had no state (deleted, or never seen within the retention).",
            registry=r,
        )
        self.batch_seconds = Histogram(
            _P + "processor_batch_seconds",
            "Time to process one batch (decode, state, forward, emit, SQL).",
            ["stage"],
            registry=r,
        )
