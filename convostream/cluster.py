"""The replication the cluster gives its own topics, for topics that clients create.

aiokafka (and so Faust) speaks CreateTopics v3 at most, which cannot ask for "the broker's
default" replication factor (-1 needs v4), so components read ``default.replication.factor``
from a broker and pass it explicitly.
"""

from __future__ import annotations

import asyncio

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from convostream.broker import wait_until_ready
from convostream.kafka_security import PLAINTEXT, KafkaSecurity


async def default_replication(
    bootstrap: str, timeout: float = 60.0, security: KafkaSecurity = PLAINTEXT
) -> int:
    """``default.replication.factor`` of a broker of the cluster at ``bootstrap``."""
    await wait_until_ready(bootstrap, timeout, security)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=10000, **security.client_kwargs()
    )
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        broker_id = str(cluster["brokers"][0]["node_id"])
        resource = ConfigResource(
            ConfigResourceType.BROKER, broker_id, configs={"default.replication.factor": None}
        )
        (response,) = await admin.describe_configs([resource])
        # resources: (error_code, error_message, type, name, [(name, value, ...), ...])
        for resource_entry in response.resources:
            for entry in resource_entry[4]:
                if entry[0] == "default.replication.factor" and entry[1] is not None:
                    return int(str(entry[1]))
        raise RuntimeError(f"broker {broker_id} did not report default.replication.factor")
    finally:
        await admin.close()


def default_replication_sync(bootstrap: str, security: KafkaSecurity = PLAINTEXT) -> int:
    """:func:`default_replication` from synchronous start-up code."""
    return asyncio.run(default_replication(bootstrap, security=security))
