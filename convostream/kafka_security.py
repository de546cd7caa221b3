"""Kafka TLS and SASL in one place: the connection options of every aiokafka client.

Every producer, consumer and admin client convostream builds takes ``**security.client_kwargs()``
(and Faust the same options as ``broker_credentials``), so a component can never talk to the
broker with settings different from its neighbours'. Passwords stay :class:`SecretStr` until the
moment they are handed to aiokafka, so no repr or log line of this object shows them.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


@dataclass(frozen=True)
class KafkaSecurity:
    """How clients authenticate to the broker and verify it (Kafka's client names)."""

    protocol: SecurityProtocol = "PLAINTEXT"
    mechanism: SaslMechanism = "PLAIN"
    username: str | None = None
    password: SecretStr | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context (system CAs unless ``ca_file``; a client certificate if given)."""
        if not self.tls:
            return None
        context = ssl.create_default_context(
            cafile=None if self.ca_file is None else str(self.ca_file)
        )
        if self.cert_file is not None:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``AIOKafkaProducer``, ``AIOKafkaConsumer`` and the admin client."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            kwargs["ssl_context"] = self.ssl_context()
        if self.sasl:
            kwargs["sasl_mechanism"] = self.mechanism
            kwargs["sasl_plain_username"] = self.username
            kwargs["sasl_plain_password"] = (
                None if self.password is None else self.password.get_secret_value()
            )
        return kwargs


PLAINTEXT = KafkaSecurity()
"""No TLS, no authentication: the embedded broker and local tests."""
