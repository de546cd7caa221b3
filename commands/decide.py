"""The decision for one command record, before any I/O (sans-I/O).

Order matters and is part of the contract:
1. an offset already answered is skipped (a restart before the offset commit);
2. an offset with an intent but no result is ``failed`` as in doubt (never written twice);
3. undecodable value, then shape (ids, type, parameters, E.164, text, lifetime): ``rejected``;
4. signature under the issuer's key named by ``key_id``, then policy: ``rejected`` (checked
   before de-dup, so an unsigned copy can never claim a command id and block the real one);
5. ``issued_at`` further ahead of the worker's clock than the allowed skew: ``rejected``;
6. an (issued_by, command_id) claimed by any worker, from any partition: ``duplicate``;
7. past ``expires_at``: ``expired``;
8. the per-conversation rate limit: ``rejected``.
What remains is delivered; the worker still checks the conversation (live, chat or voice) on
every command, writes its intent and confirms its claim (see the ledger), and checks the expiry
again right before the socket write.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from commands.frames import build_frame
from commands.keyring import KeyRing
from commands.ledger import CommandKey, CommandLedger
from commands.policy import Policy
from commands.ratelimit import RateLimiter
from commands.validate import Limits, check_clock, check_shape
from schemas.signing import verify

Status = Literal["delivered", "rejected", "expired", "duplicate", "failed"]
STATUSES: tuple[Status, ...] = ("delivered", "rejected", "expired", "duplicate", "failed")
DUPLICATE_REASON = "command_id already delivered or in delivery"
IN_DOUBT_REASON = (
    "delivery outcome unknown: a worker stopped after recording its intent to write this "
    "command and before recording the result; not retried, so that it is never delivered twice"
)


@dataclass(frozen=True, slots=True)
class Skip:
    """Already answered: commit the offset, write nothing."""


@dataclass(frozen=True, slots=True)
class Finish:
    """A final result: the one outcome of a command, written to ``convai.command-results``
    by the worker in one place (``delivered`` ones carry ``delivered_at``)."""

    status: Status
    reason: str | None
    delivered_at: int | None = None


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
        keys: KeyRing,
        limits: Limits,
        ledger: CommandLedger,
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
        problem = check_shape(command, self.limits) or self._authenticate(command)
        if problem is None:
            problem = self.policy.authorise(
                command["issued_by"], command["command_type"], command.get("phone_number")
            )
        if problem is None:
            problem = check_clock(command["issued_at"], now_micros, self.limits)
        if problem is not None:
            return Finish("rejected", problem)
        if self.ledger.claim(command_key(command)) is not None:
            return Finish("duplicate", DUPLICATE_REASON)
        if now_micros >= command["expires_at"]:
            late = (now_micros - command["expires_at"]) / 1_000_000
            return Finish("expired", f"expired {late:.3f} s before it could be delivered")
        conversation = command["conversation_id"]
        if not self.limiter.allow(conversation, now_micros / 1_000_000):
            return Finish(
                "rejected",
                f"rate limit: more than {self.limiter.burst:g} commands at once or "
                f"{self.limiter.rate:g}/s for this conversation",
            )
        return Deliver(build_frame(command))

    def _authenticate(self, command: Mapping[str, Any]) -> str | None:
        issuer, key_id = command["issued_by"], command.get("key_id")
        if command.get("signature") is None:
            return "unsigned command"
        if not self.keys.knows(issuer):
            return f"no signing key for issuer {issuer!r}"
        key = self.keys.key(issuer, key_id)
        named = "without key id" if key_id is None else repr(key_id)
        if key is None:
            return f"no active key {named} for issuer {issuer!r}"
        if not verify(command, key):
            return f"bad signature for issuer {issuer!r} (key {named})"
        return None

    def housekeeping(self, now_micros: int) -> None:
        """Drop expired claims and full rate buckets, on the clock ``decide`` is given."""
        self.ledger.prune(now_micros)
        self.limiter.prune(now_micros / 1_000_000)


def command_key(command: Mapping[str, Any]) -> CommandKey:
    """What de-duplication is keyed on: command ids are the issuer's idempotency keys."""
    return command["issued_by"], command["command_id"]
