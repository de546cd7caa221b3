"""The leading-field primitives read what fastavro writes, on both sides of their one-byte
fast paths (lengths under 64, longs within -64..63) and for nullable unions."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer
from hypothesis import given
from hypothesis import strategies as st

from schemas.avro_head import read_long, read_optional, read_string, skip_string

SCHEMA = parse_schema(
    {
        "type": "record",
        "name": "Head",
        "fields": [
            {"name": "s", "type": "string"},
            {"name": "n", "type": "long"},
            {"name": "o", "type": ["null", "string"]},
            {"name": "m", "type": ["null", "long"]},
            {"name": "t", "type": "string"},
        ],
    }
)
LONGS = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def _write(record: dict[str, Any]) -> bytes:
    buf = BytesIO()
    schemaless_writer(buf, SCHEMA, record)
    return buf.getvalue()


@given(st.text(max_size=150), LONGS, st.none() | st.text(max_size=80), st.none() | LONGS)
def test_primitives_read_what_fastavro_writes(s: str, n: int, o: str | None, m: int | None) -> None:
    data = _write({"s": s, "n": n, "o": o, "m": m, "t": "end"})
    assert skip_string(data, 0) == read_string(data, 0)[1]
    got_s, pos = read_string(data, 0)
    got_n, pos = read_long(data, pos)
    got_o, pos = read_optional(data, pos, read_string)
    got_m, pos = read_optional(data, pos, read_long)
    got_t, pos = read_string(data, pos)
    assert (got_s, got_n, got_o, got_m, got_t) == (s, n, o, m, "end")
    assert pos == len(data)


@pytest.mark.parametrize("size", [0, 1, 63, 64, 200])
def test_a_string_cut_short_raises_index_error(size: int) -> None:
    data = _write({"s": "x" * size, "n": 0, "o": None, "m": None, "t": ""})
    cut = data[: 1 + size - 1] if size else data[:0]
    with pytest.raises(IndexError):
        read_string(cut, 0)


def test_a_union_branch_other_than_null_or_the_type_raises_index_error() -> None:
    with pytest.raises(IndexError):
        read_optional(b"\x04\x02", 0, read_long)  # branch 2
