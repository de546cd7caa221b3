"""Every private Faust and aiokafka internal the processor relies on, checked before use.

The batch path (``processors.app``) reaches past Faust's public interface in six places:

- ``Consumer._drain_messages`` is replaced by :func:`replace_drain`, which keeps Faust's
  offset bookkeeping (``_read_offset``, ``_add_gap``, ``_unacked_messages``, ``ack``,
  ``callback``, ``_stopped``, ``consumer_stopped_errors``) for the topics it does not batch;
- ``faust.streams._current_event`` picks a table's partition (:func:`in_partition_of`);
- aiokafka's ``Fetcher._fetch_max_wait_ms`` (reached through Faust's consumer thread) bounds
  the long poll (:func:`shorten_fetch_wait`);
- ``Table.key_serializer`` / ``value_serializer``, read when the store is created
  (:func:`raw_table`);
- the producer buffer's ``flush`` and ``_send_pending`` (:func:`complete_flush`);
- the RocksDB store's per-partition databases (``_dbs``, ``_visible_items``), iterated by
  :func:`stored_items` for state retention.

They hold for the versions below. :func:`check_versions` (at start-up) refuses others and each
helper checks the attributes it touches, so a Faust or aiokafka upgrade fails loudly, naming
the version and the attribute, instead of silently losing acks or partitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from contextvars import ContextVar
from importlib.metadata import version
from typing import Any

import faust
import faust.streams

# Tested together (pyproject.toml pins the same ranges).
FAUST_VERSIONS = ("0.15.",)
AIOKAFKA_VERSIONS = ("0.13.", "0.14.")

_CONSUMER_ATTRIBUTES = (
    "_drain_messages",
    "_read_offset",
    "_unacked_messages",
    "_stopped",
    "_add_gap",
    "ack",
    "callback",
    "getmany",
    "consumer_stopped_errors",
)

BatchHandler = Callable[[list[Any]], Awaitable[None]]


class FaustGlueError(RuntimeError):
    """An installed Faust or aiokafka lacks what the processor relies on."""


def installed() -> str:
    return f"faust-streaming {version('faust-streaming')}, aiokafka {version('aiokafka')}"


def check_versions() -> None:
    """Refuse versions whose internals were not checked against this module."""
    faust_version, aiokafka_version = version("faust-streaming"), version("aiokafka")
    if not faust_version.startswith(FAUST_VERSIONS) or not aiokafka_version.startswith(
        AIOKAFKA_VERSIONS
    ):
        raise FaustGlueError(
            f"{installed()} installed; the processor's Faust internals are known for "
            f"faust-streaming {'/'.join(v + 'x' for v in FAUST_VERSIONS)} and aiokafka "
            f"{'/'.join(v + 'x' for v in AIOKAFKA_VERSIONS)}"
        )
    if not isinstance(getattr(faust.streams, "_current_event", None), ContextVar):
        raise FaustGlueError(f"{installed()}: faust.streams._current_event is not a ContextVar")


def _require(owner: Any, names: Collection[str], what: str) -> None:
    missing = [name for name in names if not hasattr(owner, name)]
    if missing:
        raise FaustGlueError(f"{installed()}: {what} has no {', '.join(missing)}")


@contextlib.contextmanager
def in_partition_of(event: Any) -> Iterator[None]:
    """Make table reads and writes go to ``event``'s partition.

    Faust picks a table's store and changelog partition from the *current* event, which inside
    a batch is whichever event came last; each key's own event must be current instead.
    """
    current: ContextVar[Any] = faust.streams._current_event
    token = current.set(weakref.ref(event))
    try:
        yield
    finally:
        current.reset(token)


def raw_table(app: faust.App, name: str, partitions: int) -> Any:
    """A table of bytes keys and values (tables otherwise JSON-encode anything not a Record)."""
    table: Any = app.Table(name, partitions=partitions, key_type=bytes, value_type=bytes)
    _require(table, ("key_serializer", "value_serializer"), "Table")
    table.key_serializer = table.value_serializer = "raw"  # read when the store is created
    return table


def stored_items(table: Any, partition: int) -> Iterator[tuple[bytes, bytes]] | None:
    """The stored keys and values of one partition of ``table`` (an empty iterator when this
    worker has no database for it), or None for a store without partitions (``memory://``).

    Faust iterates a table over all of a worker's active partitions at once and does not say
    which partition a key is in; a delete must go to that partition's changelog.
    """
    store = table.data
    if not hasattr(store, "_dbs"):
        return None
    _require(store, ("_visible_items",), type(store).__name__)
    db = store._dbs.get(partition)
    if db is None:
        return iter(())
    items: Iterator[tuple[bytes, bytes]] = store._visible_items(db)
    return items


def complete_flush(buffer: Any) -> None:
    """Make the flush before each offset commit wait for every buffered table write.

    Faust commits offsets after ``producer.flush()``, whose buffer flush
    (``ProducerBuffer.flush_atmost``) returns as soon as no message leaves the buffer within
    0.1 s. Table writes (changelog records) still in the buffer then go unsent while the
    offsets of the events they hold are committed, and a SIGKILL loses them: the restored
    state lacks events that are never read again (seen as agent windows and SQL rows short
    of the events after a kill on a loaded machine). Here the flush returns only when the
    buffer is empty and no message is on its way into the Kafka producer, whose own flush
    then waits for the acknowledgements.
    """
    _require(buffer, ("flush", "_send_pending", "pending", "message_sent", "state"), "buffer")
    send = buffer._send_pending
    sending = 0

    async def send_pending(message: Any) -> None:
        nonlocal sending
        sending += 1
        try:
            await send(message)
        finally:
            sending -= 1

    async def flush() -> None:
        while buffer.pending.qsize() or sending:
            if buffer.state != "running" and buffer.pending.qsize():
                raise FaustGlueError(
                    f"producer {buffer.state} with {buffer.pending.qsize()} table writes unsent"
                )
            buffer.message_sent.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):
                    await buffer.message_sent.wait()

    buffer._send_pending = send_pending
    buffer.flush = flush


def rewind_uncommitted(consumer: Any, topics: Collection[str]) -> None:
    """Start partitions of ``topics`` that have no committed offset from their first record.

    Once table recovery is done Faust seeks the stream partitions to their committed offsets
    (``Consumer.perform_seek``), but aiokafka's ``seek_to_committed`` leaves a partition with
    no committed offset (or offset 0) wherever its fetch position is, and fetches made while
    the tables recovered had moved it on: Faust's ``getmany`` drops the records of partitions
    not yet active, which aiokafka counts as consumed. So a partition with records but without
    a commit (a new group over a filled events topic, or a partition that changed owner before
    its first commit) skipped its first records for good. Seen in the 3-broker failover test:
    a worker's first events batch of a partition began at offset 29 and, after a rebalance
    before any commit, its successor's at 83; the conversations there stayed short in SQL in
    about half of the runs. The reset policy is "earliest", so such partitions are sought to
    their beginning here (re-reading is harmless: the states are idempotent).
    """
    thread: Any = getattr(consumer, "_thread", None)
    _require(consumer, ("seek_to_committed",), type(consumer).__name__)
    _require(thread, ("seek_to_beginning",), "Consumer._thread")
    seek_to_committed = consumer.seek_to_committed

    async def seek() -> Mapping[Any, int | None]:
        committed: Mapping[Any, int | None] = await seek_to_committed()
        fresh = [tp for tp, offset in committed.items() if tp.topic in topics and not offset]
        if fresh:
            await thread.seek_to_beginning(*fresh)
        return committed

    consumer.seek_to_committed = seek


def shorten_fetch_wait(consumer: Any, wait_ms: int) -> None:
    """Bound the long poll (Faust fixes ``fetch_max_wait_ms`` at 1,500).

    Measured (bench/process.py, per-batch trace): with the embedded broker a poll that finds no
    new data is answered only at its deadline, so at 5,000 events/s every second or so the
    fetcher sat 0.3-0.6 s on an empty poll while events piled up, which set the SQL latency
    tail. aiokafka reads the value per fetch request.
    """
    thread = getattr(consumer, "_thread", None)
    fetcher: Any = getattr(getattr(thread, "_consumer", None), "_fetcher", None)
    _require(fetcher, ("_fetch_max_wait_ms",), "Consumer._thread._consumer._fetcher")
    fetcher._fetch_max_wait_ms = wait_ms


def replace_drain(
    app: faust.App,
    handlers: Mapping[str, BatchHandler],
    *,
    ready: asyncio.Event,
    fetch_wait_ms: int,
) -> None:
    """Hand each ``getmany`` batch to the handler of its topic (``handlers``: topic name ->
    handler), whole and one topic group after another; other topics (the changelogs) go
    through Faust's per-message path.

    No handled topic goes through Faust's streams: ``FlowControlEvent.resume()`` empties the
    stream queues, and Faust calls it again once recovery has sought the stream partitions, so
    records fetched in between were dropped unprocessed. Seen: a restarted worker lost the
    forwarded events its previous life had not windowed yet, while later records moved its
    read offset past them. A stream also acks, unprocessed, a message it skips as belonging to
    an older generation.

    Kept from Faust's loop: messages before the read offset (re-fetched after a seek) are
    dropped, holes in the offsets (compaction, transaction markers) are recorded as gaps so
    commits can pass them, and batch messages are tracked as unacked, so a rebalance or a
    shutdown (``Consumer.wait_empty``) waits until the batch in flight is handled and acked
    (tracking its last message is enough for that, and costs one WeakSet entry per batch).
    A batch is acked only after its handler returns. ``ready`` is awaited before the first
    batch is handled, not before the loop: table recovery after a restart reads the changelogs
    through this loop (the per-message path) and the services start after it.
    """
    consumer: Any = app.consumer  # Consumer internals, not on the ConsumerT interface
    _require(consumer, _CONSUMER_ATTRIBUTES, type(consumer).__name__)
    order = list(dict.fromkeys(handlers.values()))  # each handler once, in the given order

    async def drain(fetcher: Any) -> None:
        _require(fetcher, ("_stopped",), type(fetcher).__name__)
        read_offsets = consumer._read_offset
        unacked = consumer._unacked_messages
        stopped = consumer._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        shorten_fetch_wait(consumer, fetch_wait_ms)
        try:
            while not (stopped() or fetcher_stopped()):
                await asyncio.sleep(0)  # getmany may not yield to the loop on its own
                batches: dict[BatchHandler, list[Any]] = {}
                async for tp, message in consumer.getmany(timeout=1.0):
                    offset = read_offsets[tp]
                    if offset is not None:
                        if message.offset < offset:
                            continue  # re-fetched after a seek: already handed on
                        if message.offset - offset > 1:
                            await consumer._add_gap(tp, offset + 1, message.offset)
                    read_offsets[tp] = message.offset
                    handle = handlers.get(tp.topic)
                    if handle is not None:
                        batches.setdefault(handle, []).append(message)
                    else:
                        await consumer.callback(message)
                if batches:
                    await ready.wait()
                for handle in order:
                    batch = batches.get(handle)
                    if not batch:
                        continue
                    last = batch[-1]  # one tracked message keeps wait_empty waiting
                    unacked.add(last)
                    try:
                        await handle(batch)
                    except BaseException:  # stopped or failed: replayed from the last commit
                        unacked.discard(last)
                        raise
                    ack = consumer.ack
                    for message in batch:
                        ack(message)
        except consumer.consumer_stopped_errors:
            if not app.should_stop:
                raise

    consumer._drain_messages = drain
