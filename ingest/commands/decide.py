"""The decision for one command record, before any I/O (sans-I/O).

Order matters and is part of the contract:
1. an offset already answered is skipped (a restart before the offset commit);
2. an offset with an intent but no result is ``failed`` as in doubt (never written twice);
3. undecodable value, then shape (type, parameters, E.164, text, lifetime): ``rejected``;
4. signature, then policy: ``rejected`` (checked before de-dup, so an unsigned copy can never
   claim a command id and block the real one);
5. a taken (conversation_id, command_id): ``duplicate``;
6. past ``expires_at``: ``expired``;
7. the per-conversation rate limit: ``rejected``.
What remains is delivered; the worker still checks the conversation (live, chat or voice) and
the expiry again right before the socket write.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ingest.commands.frames import build_frame
from ingest.commands.ledger import Ledger
from ingest.commands.policy import Policy
from ingest.commands.ratelimit import RateLimiter
from ingest.commands.signing import verify
from ingest.commands.validate import Limits, check_shape

Status = Literal["delivered", "rejected", "expired", "duplicate", "failed"]
STATUSES: tuple[Status, ...] = ("delivered", "rejected", "expired", "duplicate", "failed")
IN_DOUBT_REASON = (
    "delivery outcome unknown: a worker stopped after recording its intent to write this "
    "command and before recording the result; not retried, so that it is never delivered twice"
)


@dataclass(frozen=True, slots=True)
class Skip:
    """Already answered: commit the offset, write nothing."""


@dataclass(frozen=True, slots=True)
class Finish:
    """A final result without delivery."""

    status: Status
    reason: str


@dataclass(frozen=True, slots=True)
class Deliver:
    """Valid, authorised, new, in time and within the rate: write ``frame`` upstream."""

    frame: dict[str, Any]


Decision = Skip | Finish | Deliver


class Decider:
    """Applies the checks above; owns no I/O, only the rate limiter's state."""

    def __init__(
        self,
        policy: Policy,
        keys: Mapping[str, str],
        limits: Limits,
        ledger: Ledger,
        limiter: RateLimiter,
    ) -> None:
        self.policy = policy
        self.keys = keys
        self.limits = limits
        self.ledger = ledger
        self.limiter = limiter

    def decide(
        self, partition: int, offset: int, command: Mapping[str, Any] | str, now_micros: int
    ) -> Decision:
        """``command`` is the decoded record, or the reason it could not be decoded."""
        state = self.ledger.state(partition, offset)
        if state == "answered":
            return Skip()
        if state == "in_doubt":
            return Finish("failed", IN_DOUBT_REASON)
        if isinstance(command, str):
            return Finish("rejected", f"undecodable command: {command}")
        problem = check_shape(command, self.limits)
        if problem is not None:
            return Finish("rejected", problem)
        issuer = command["issued_by"]
        key = self.keys.get(issuer)
        if command.get("signature") is None:
            return Finish("rejected", "unsigned command")
        if key is None:
            return Finish("rejected", f"no signing key for issuer {issuer!r}")
        if not verify(command, key):
            return Finish("rejected", f"bad signature for issuer {issuer!r}")
        problem = self.policy.authorise(
            issuer, command["command_type"], command.get("phone_number")
        )
        if problem is not None:
            return Finish("rejected", problem)
        conversation = command["conversation_id"]
        if self.ledger.taken(partition, (conversation, command["command_id"])):
            return Finish("duplicate", "command_id already delivered or in delivery")
        if now_micros >= command["expires_at"]:
            late = (now_micros - command["expires_at"]) / 1_000_000
            return Finish("expired", f"expired {late:.3f} s before it could be delivered")
        if not self.limiter.allow(conversation, now_micros / 1_000_000):
            return Finish(
                "rejected",
                f"rate limit: more than {self.limiter.burst:g} commands at once or "
                f"{self.limiter.rate:g}/s for this conversation",
            )
        return Deliver(build_frame(command))
