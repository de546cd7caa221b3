"""Prometheus metrics of ``convostream webhooks`` (``convostream_webhooks_*``, ``_backfill_*``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

OUTCOMES = (
    "accepted",  # verified, published
    "duplicate",  # verified, already published (a retried delivery)
    "ignored",  # verified, a webhook type that is not published (audio, failures)
    "missing",  # no signature header
    "malformed",  # signature header unreadable
    "stale",  # timestamp outside the tolerance
    "mismatch",  # wrong secret or altered body
    "too_large",  # body over the bound
    "bad_request",  # verified but unreadable body
    "unavailable",  # the broker did not take the record: upstream retries
)
VERDICTS = ("complete", "repaired", "gapped")


class WebhookMetrics:
    """Every metric of one webhooks process, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "convostream_webhooks_requests",
            "Webhook deliveries by outcome (401: missing, malformed, stale, mismatch).",
            ["outcome"],
            registry=r,
        )
        for outcome in OUTCOMES:
            self.requests.labels(outcome)
        self.verdicts = Counter(
            "convostream_backfill_conversations",
            "Finished conversations by verdict: complete, repaired or gapped.",
            ["verdict"],
            registry=r,
        )
        for verdict in VERDICTS:
            self.verdicts.labels(verdict)
        self.backfilled = Counter(
            "convostream_backfill_events",
            "MonitorEvents republished from post-call transcripts, by type.",
            ["type"],
            registry=r,
        )
        self.settled = Gauge(
            "convostream_backfill_settled_conversations",
            "Conversations whose verdict is known (given since start or read back from the topic).",
            registry=r,
        )
        self.fetch_errors = Counter(
            "convostream_backfill_fetch_errors",
            "Failed REST fetches of conversation details (retried).",
            registry=r,
        )
