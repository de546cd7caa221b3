"""aiokafka speaks only InitProducerId v0; add v3 so idempotent producers work on every broker.

v0 carries no producer id/epoch. Apache Kafka accepts it, but brokers written against the
current protocol (Tansu 0.6, the embedded broker) answer v0-v2 with UNKNOWN_SERVER_ERROR, so
``enable_idempotence=True`` could not start. v3 (Kafka >= 2.5) sends producer id and epoch -1,
which every broker reads as "allocate a new producer id". aiokafka negotiates the highest
version both sides support, so older brokers still get v0.

Nothing happens on import: :func:`install` is called once at start-up (``runtime.setup`` for
every command, ``CommandClient`` for services, the test and bench harnesses for in-process
components). It checks the aiokafka version and the attribute it replaces, and fails naming
both rather than patching a sender it was not written for.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import aiokafka.producer.sender as _sender
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.transaction import InitProducerIdRequest_v0
from aiokafka.protocol.types import CompactString, Int16, Int32, Int64, Schema, TaggedFields


class InitProducerIdResponse_v3(Response):  # type: ignore[misc]
    API_KEY = 22
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("tags", TaggedFields),
    )


class InitProducerIdRequest_v3(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 22
    API_VERSION = 3
    RESPONSE_TYPE = InitProducerIdResponse_v3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("transaction_timeout_ms", Int32),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("tags", TaggedFields),
    )


class InitProducerIdRequest(Request[InitProducerIdRequest_v0 | InitProducerIdRequest_v3]):  # type: ignore[misc]
    API_KEY = 22

    def __init__(self, transactional_id: str | None, transaction_timeout_ms: int) -> None:
        self._transactional_id = transactional_id
        self._transaction_timeout_ms = transaction_timeout_ms

    def build(self, request_struct_class: type[Any]) -> Any:
        if request_struct_class.API_VERSION >= 3:
            return request_struct_class(
                self._transactional_id, self._transaction_timeout_ms, -1, -1, {}
            )
        return request_struct_class(self._transactional_id, self._transaction_timeout_ms)


AIOKAFKA_VERSIONS = ("0.13.", "0.14.")  # the sender's InitProducerIdRequest use was read for these


class KafkaCompatError(RuntimeError):
    """The installed aiokafka is not one this patch was written for."""


def install() -> None:
    """Make aiokafka's producer use the request above (idempotent: safe to call again)."""
    installed = version("aiokafka")
    if not installed.startswith(AIOKAFKA_VERSIONS):
        raise KafkaCompatError(
            f"aiokafka {installed} installed; the InitProducerId v3 patch is for "
            f"{'/'.join(v + 'x' for v in AIOKAFKA_VERSIONS)}"
        )
    if not hasattr(_sender, "InitProducerIdRequest"):
        raise KafkaCompatError(
            f"aiokafka {installed}: aiokafka.producer.sender has no InitProducerIdRequest"
        )
    _sender.InitProducerIdRequest = InitProducerIdRequest
