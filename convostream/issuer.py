"""The signing identity of a service that issues commands: its name, key and command lifetime.

Shared by ``send-command`` and the rules engine so that both read keys the same way. Keys never
come from flags (they would show in ``ps``): environment variables, a ``.env`` file or a file.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from convostream.settings import CommonSettings, flag


class KeysError(ValueError):
    """Signing keys that cannot be read; the message never contains a key."""


class IssuerSettings(CommonSettings):
    """An issuer's name, its HMAC signing key and how long its commands stay valid."""

    commands_issuer: str | None = Field(
        None,
        description="Issuer name put in issued_by; selects the key and policy (required).",
        json_schema_extra=flag("--issuer"),
    )
    commands_key: SecretStr | None = Field(
        None,
        description="The issuer's HMAC signing key (environment only).",
        json_schema_extra={"cli": False},
    )
    commands_key_id: str | None = Field(
        None,
        description="Id of the signing key, put in key_id (unset: the issuer's key without id).",
        json_schema_extra=flag("--key-id"),
    )
    commands_key_file: Path | None = Field(
        None,
        description="File holding the issuer's signing key (instead of CONVOSTREAM_COMMANDS_KEY).",
        json_schema_extra=flag("--key-file"),
    )
    commands_ttl: float = Field(
        30.0,
        gt=0,
        description="Seconds until the command expires (expires_at = now + TTL).",
        json_schema_extra=flag("--ttl"),
    )

    def issuer_and_key(self) -> tuple[str, str]:
        """The issuer name and its key; raises KeysError naming what is missing."""
        if not self.commands_issuer:
            raise KeysError("CONVOSTREAM_COMMANDS_ISSUER / --issuer is required")
        return self.commands_issuer, self.signing_key()

    def signing_key(self) -> str:
        """The key from the file, else the variable; raises KeysError when there is none."""
        if self.commands_key_file is not None:
            try:
                key = self.commands_key_file.read_text("utf-8").strip()
            except OSError as exc:
                raise KeysError(f"cannot read key file {self.commands_key_file}: {exc}") from None
            if key:
                return key
        if self.commands_key is not None and self.commands_key.get_secret_value():
            return self.commands_key.get_secret_value()
        raise KeysError("no signing key: set CONVOSTREAM_COMMANDS_KEY or --key-file")
