"""Which issuer may send which command types to which numbers (sans-I/O once loaded).

The policy file is JSON::

    {"issuers": {
        "billing-service": {"commands": ["end_call", "transfer_to_number"],
                            "phone_numbers": ["+1415*", "+442071234567"]},
        "ops-console": {"commands": ["*"], "phone_numbers": ["+*"]}}}

``commands`` lists command types (``"*"``: all six). ``phone_numbers`` lists glob patterns
(``*``, ``?``, ``[0-9]``; case-sensitive, matched against the whole E.164 number) a
``transfer_to_number`` may target; absent or empty: no transfers. An issuer not in the file may
send nothing. Unknown keys are errors, so that a typo cannot silently widen or narrow access.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from schemas.commands import COMMAND_TYPES


class PolicyError(ValueError):
    """The policy file cannot be read or does not have the documented shape."""


@dataclass(frozen=True, slots=True)
class Grant:
    commands: frozenset[str]
    phone_numbers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Policy:
    grants: dict[str, Grant]

    def authorise(self, issuer: str, command_type: str, phone_number: str | None) -> str | None:
        """Why ``issuer`` may not send this command, or None when it may."""
        grant = self.grants.get(issuer)
        if grant is None:
            return f"issuer {issuer!r} is not in the policy"
        if command_type not in grant.commands:
            return f"issuer {issuer!r} may not send {command_type}"
        if phone_number is not None and not any(
            fnmatchcase(phone_number, pattern) for pattern in grant.phone_numbers
        ):
            return f"issuer {issuer!r} may not transfer to {phone_number}"
        return None


def parse_policy(data: Any) -> Policy:
    """Build a policy from the decoded JSON document; raises PolicyError saying what is wrong."""
    if (
        not isinstance(data, dict)
        or set(data) != {"issuers"}
        or not isinstance(data["issuers"], dict)
    ):
        raise PolicyError('expected {"issuers": {NAME: {"commands": [...], ...}}}')
    grants: dict[str, Grant] = {}
    for issuer, entry in data["issuers"].items():
        if not isinstance(entry, dict) or not set(entry) <= {"commands", "phone_numbers"}:
            raise PolicyError(f"issuer {issuer!r}: only 'commands' and 'phone_numbers' allowed")
        commands = entry.get("commands", [])
        numbers = entry.get("phone_numbers", [])
        if not _strings(commands) or not _strings(numbers):
            raise PolicyError(f"issuer {issuer!r}: commands and phone_numbers are string lists")
        unknown = set(commands) - {*COMMAND_TYPES, "*"}
        if unknown:
            raise PolicyError(f"issuer {issuer!r}: unknown command types {sorted(unknown)}")
        allowed = frozenset(COMMAND_TYPES) if "*" in commands else frozenset(commands)
        grants[issuer] = Grant(allowed, tuple(numbers))
    return Policy(grants)


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def load_policy(path: Path) -> Policy:
    """Read and parse the policy file."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc}") from None
    try:
        return parse_policy(data)
    except PolicyError as exc:
        raise PolicyError(f"policy file {path}: {exc}") from None
