"""Canonical bytes of a ControlCommand and its HMAC-SHA256 signature (sans-I/O).

Canonical bytes: the UTF-8 JSON object of every field except ``signature`` whose value is not
null, keys sorted, no whitespace (``,`` and ``:`` separators), strings with only ``"``, ``\\``
and control characters escaped (non-ASCII left as UTF-8), timestamps as integer microseconds.
For these value types this is exactly RFC 8785 (JCS), so issuers in any language can produce
it. Null fields are left out so that a nullable field added to the schema later does not change
the bytes of commands that do not use it. The signature is the lowercase hex HMAC-SHA256 of the
canonical bytes under the issuer's key (the key's UTF-8 bytes).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

SIGNATURE_FIELD = "signature"


def canonical_bytes(command: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers (see the module docstring)."""
    fields = {k: v for k, v in command.items() if k != SIGNATURE_FIELD and v is not None}
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def sign(command: Mapping[str, Any], key: str) -> str:
    """Hex HMAC-SHA256 of the canonical bytes of ``command`` under ``key``."""
    return hmac.new(key.encode("utf-8"), canonical_bytes(command), hashlib.sha256).hexdigest()


def verify(command: Mapping[str, Any], key: str) -> bool:
    """True if ``command['signature']`` is the signature under ``key`` (constant-time)."""
    given = command.get(SIGNATURE_FIELD)
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(given.encode("utf-8"), sign(command, key).encode("ascii"))
