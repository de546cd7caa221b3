"""Per-event integer maps held as the packed arrays they are stored as, in fixed-size chunks.

A conversation's state is written on every batch that touches it. Stored whole, an event
would cost more the longer its call had run (16 bytes a tracked event, copied and sent to the
changelog each time: 47 KiB per event after 2,000 events in ``bench/fold.py``). So a map's
entries are stored in chunks of :data:`CHUNK` entries: a full chunk is written once, under its
own table key, and only the entries after the last full chunk (the tail) travel with every
write; a chunk is written again only when one of its values changes (an earlier copy of an
event).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator

CHUNK = 64  # entries per stored chunk: 1 KiB of keys and values


class PackedMap:
    """A map of 64-bit key hashes to integers, in insertion order, held as the two packed
    arrays it is stored as, so storing it is a copy rather than a loop over its items.

    ``sealed`` entries (a multiple of :data:`CHUNK`) are stored in chunks, the rest in the tail.
    """

    __slots__ = ("_changed", "_index", "_keys", "_values", "sealed")

    def __init__(
        self, keys: array[int] | None = None, values: array[int] | None = None, sealed: int = 0
    ) -> None:
        self._keys = array("Q") if keys is None else keys
        self._values = array("q") if values is None else values
        self._index = {key: i for i, key in enumerate(self._keys)}
        self.sealed = sealed
        self._changed: set[int] = set()  # stored chunks whose values changed since

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: int) -> bool:
        return key in self._index

    def get(self, key: int) -> int | None:
        i = self._index.get(key)
        return None if i is None else self._values[i]

    def __getitem__(self, key: int) -> int:
        return self._values[self._index[key]]

    def add(self, key: int, value: int) -> None:
        """A key not in the map yet."""
        self._index[key] = len(self._keys)
        self._keys.append(key)
        self._values.append(value)

    def lower(self, key: int, value: int) -> None:
        """A key already in the map gets a smaller value."""
        i = self._index[key]
        self._values[i] = value
        if i < self.sealed:
            self._changed.add(i // CHUNK)

    def items(self) -> Iterator[tuple[int, int]]:
        return zip(self._keys, self._values, strict=True)

    def values(self) -> array[int]:
        return self._values

    def take_chunks(self) -> list[tuple[int, bytes]]:
        """The chunks to store now, by number: those whose values changed since they were
        stored, then those filled since the last call (which the tail no longer holds)."""
        out = [(n, self.chunk(n)) for n in sorted(self._changed)]
        self._changed.clear()
        while len(self._keys) - self.sealed >= CHUNK:
            out.append((self.sealed // CHUNK, self.chunk(self.sealed // CHUNK)))
            self.sealed += CHUNK
        return out

    def chunk(self, number: int) -> bytes:
        start, end = number * CHUNK, (number + 1) * CHUNK
        return self._keys[start:end].tobytes() + self._values[start:end].tobytes()

    def tail_bytes(self) -> bytes:
        """The entries after the stored chunks."""
        start = self.sealed
        return self._keys[start:].tobytes() + self._values[start:].tobytes()

    @classmethod
    def read(
        cls, chunks: list[bytes], data: bytes, start: int, count: int
    ) -> tuple[PackedMap, int]:
        """The map of ``chunks`` (in order) and a tail of ``count`` entries stored in ``data``
        at ``start``, and where the tail ends."""
        keys, values = array("Q"), array("q")
        for chunk in chunks:
            half = len(chunk) // 2
            keys.frombytes(chunk[:half])
            values.frombytes(chunk[half:])
        keys.frombytes(data[start : start + 8 * count])
        start += 8 * count
        values.frombytes(data[start : start + 8 * count])
        return cls(keys, values, CHUNK * len(chunks)), start + 8 * count
