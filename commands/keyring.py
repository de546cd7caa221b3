"""The issuers' signing keys: several active keys per issuer, told apart by key id (rotation).

A command names its key with ``key_id``; a command without one uses the issuer's key without
an id (the only kind of key before rotation existed, so old issuers keep working). Rotation:
add the new key under a new id, move the issuer to it, then remove the old key.

Sources, merged (later wins per issuer and key id):
- ``CONVOSTREAM_COMMANDS_KEYS``: JSON ``{"issuer": "key"}`` (key without id) or
  ``{"issuer": {"2026-11": "key", "2026-12": "key"}}``; the id ``""`` is the key without id;
- ``--keys-dir``: a file ``ISSUER`` holds the issuer's key without id, a file ``ISSUER/KEY_ID``
  one key with an id (Kubernetes secret volumes give sub-paths with ``items[].path``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The key id of an issuer's key that commands select by leaving ``key_id`` null.
NO_KEY_ID = ""


class KeyRingError(ValueError):
    """Keys that cannot be read; the message never contains a key."""


@dataclass(frozen=True, slots=True)
class KeyRing:
    """issuer -> key id -> key."""

    issuers: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @classmethod
    def of(cls, keys: Mapping[str, str]) -> KeyRing:
        """One key without id per issuer: ``{"issuer": "key"}``."""
        return cls({issuer: {NO_KEY_ID: key} for issuer, key in keys.items()})

    def knows(self, issuer: str) -> bool:
        return issuer in self.issuers

    def key(self, issuer: str, key_id: str | None) -> str | None:
        """The key that signs ``issuer``'s commands carrying ``key_id`` (None: no such key)."""
        return self.issuers.get(issuer, {}).get(NO_KEY_ID if key_id is None else key_id)

    def secrets(self) -> tuple[str, ...]:
        """Every key, for log redaction."""
        return tuple(key for keys in self.issuers.values() for key in keys.values())

    def merged(self, other: KeyRing) -> KeyRing:
        issuers = {issuer: dict(keys) for issuer, keys in self.issuers.items()}
        for issuer, keys in other.issuers.items():
            issuers.setdefault(issuer, {}).update(keys)
        return KeyRing(issuers)


def parse_keys_json(data: Any) -> KeyRing:
    """The decoded ``CONVOSTREAM_COMMANDS_KEYS`` document (see the module docstring)."""
    shape = 'expected JSON {"issuer": "key"} or {"issuer": {"key_id": "key"}}'
    if not isinstance(data, dict):
        raise KeyRingError(shape)
    issuers: dict[str, dict[str, str]] = {}
    for issuer, value in data.items():
        keys = {NO_KEY_ID: value} if isinstance(value, str) else value
        if not isinstance(keys, dict) or not keys:
            raise KeyRingError(f"issuer {issuer!r}: {shape}")
        if not all(isinstance(k, str) and isinstance(v, str) and v for k, v in keys.items()):
            raise KeyRingError(f"issuer {issuer!r}: key ids and keys must be non-empty strings")
        issuers[issuer] = dict(keys)
    return KeyRing(issuers)


def read_keys_dir(directory: Path) -> KeyRing:
    """Keys from files: ``ISSUER`` (no key id) and ``ISSUER/KEY_ID``; dot files are skipped
    (Kubernetes secret volumes hold ``..data`` links)."""
    issuers: dict[str, dict[str, str]] = {}
    try:
        for path in sorted(directory.iterdir()):
            if path.name.startswith("."):
                continue
            if path.is_dir():
                for key_file in sorted(path.iterdir()):
                    if key_file.is_file() and not key_file.name.startswith("."):
                        _add(issuers, path.name, key_file.name, key_file)
            elif path.is_file():
                _add(issuers, path.name, NO_KEY_ID, path)
    except OSError as exc:
        raise KeyRingError(f"cannot read keys dir {directory}: {exc.strerror}") from None
    return KeyRing(issuers)


def _add(issuers: dict[str, dict[str, str]], issuer: str, key_id: str, path: Path) -> None:
    key = path.read_text("utf-8").strip()
    if key:
        issuers.setdefault(issuer, {})[key_id] = key
