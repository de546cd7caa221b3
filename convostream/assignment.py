"""Partitions assigned to a consumer-group member, held paused until their state is rebuilt.

aiokafka sends no heartbeat while ``on_partitions_assigned`` runs, so a member that rebuilt its
state there (a changelog or result topic read to its end) was expelled whenever that took longer
than the session timeout, rejoined, rebuilt again, and the group kept rebalancing. The callback
only pauses the partitions (:meth:`PausedAssignment.assigned`); the member's reading loop
rebuilds their state and resumes them (:meth:`PausedAssignment.rebuild`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition


class PausedAssignment:
    """The latest assignment whose state the reading loop has still to rebuild."""

    def __init__(self) -> None:
        self._partitions: set[TopicPartition] | None = None

    def __bool__(self) -> bool:
        return self._partitions is not None

    def assigned(self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> None:
        """From the rebalance callback: nothing is fetched from them until :meth:`resume`."""
        consumer.pause(*partitions)
        self._partitions = set(partitions)

    async def rebuild(
        self,
        consumer: AIOKafkaConsumer,
        rebuild: Callable[[list[TopicPartition]], Awaitable[None]],
    ) -> None:
        """From the reading loop: rebuild the pending partitions still assigned (possibly none),
        then fetch them again, unless a rebalance took them away meanwhile."""
        current = consumer.assignment()
        taken = [tp for tp in self._partitions or () if tp in current]
        self._partitions = None
        await rebuild(taken)
        current = consumer.assignment()
        consumer.resume(*(tp for tp in taken if tp in current))
