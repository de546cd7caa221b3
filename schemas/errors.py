"""Serde and registry errors: each message says what was found and what was expected.

::

    SerdeError (retriable=False unless said otherwise)
    ├── UnknownMagicByte, TruncatedMessage, CorruptMessage   bad bytes: never retried
    ├── UnknownSchemaId                                       resolve it from the registry
    ├── EncodeError                                           a record that does not fit
    └── RegistryError          retriable when unreachable, timed out, 408, 429 or 5xx

The schema registry client retries what is retriable (look-ups while reading: until the
registry answers). The upstream's counterpart is ``upstream.rest.UpstreamError``, with the same
flag (its tree is in ``upstream``'s docstring); Kafka's is aiokafka's ``KafkaError.retriable``.
"""

from __future__ import annotations


class SerdeError(Exception):
    """Bytes that cannot be decoded, a record that cannot be encoded, or a registry failure.

    ``retriable``: the same request may succeed later (the registry was away or busy).
    """

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


class UnknownMagicByte(SerdeError):
    """The value does not start with the Confluent wire format's magic byte 0."""


class TruncatedMessage(SerdeError):
    """The value ends before the header or the datum is complete."""


class CorruptMessage(SerdeError):
    """The datum does not match the writer schema named by its id."""


class UnknownSchemaId(SerdeError):
    """The registry does not know the schema id in the header."""

    def __init__(self, schema_id: int, hint: str = "") -> None:
        self.schema_id = schema_id
        message = f"unknown schema id {schema_id}"
        super().__init__(f"{message}: {hint}" if hint else message)


class EncodeError(SerdeError):
    """A record does not fit its schema, or the schema has no id to write with."""


class RegistryError(SerdeError):
    """A Schema Registry could not be reached or refused a request."""
