"""Per-event integer maps held as the packed arrays they are stored as."""

from __future__ import annotations

from array import array
from collections.abc import Iterator


class PackedMap:
    """A map of 64-bit key hashes to integers, in insertion order, held as the two packed
    arrays it is stored as, so storing it is a copy rather than a loop over its items."""

    __slots__ = ("_index", "_keys", "_values")

    def __init__(self, keys: array[int] | None = None, values: array[int] | None = None) -> None:
        self._keys = array("Q") if keys is None else keys
        self._values = array("q") if values is None else values
        self._index = {key: i for i, key in enumerate(self._keys)}

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
        self._values[self._index[key]] = value

    def items(self) -> Iterator[tuple[int, int]]:
        return zip(self._keys, self._values, strict=True)

    def values(self) -> array[int]:
        return self._values

    def to_bytes(self) -> bytes:
        return self._keys.tobytes() + self._values.tobytes()

    @classmethod
    def read(cls, data: bytes, start: int, count: int) -> tuple[PackedMap, int]:
        """The map of ``count`` items stored at ``start``, and where its bytes end."""
        keys, values = array("Q"), array("q")
        keys.frombytes(data[start : start + 8 * count])
        start += 8 * count
        values.frombytes(data[start : start + 8 * count])
        return cls(keys, values), start + 8 * count
