"""The binary COPY forms of the rich types (load/rich.py, load/copy.py), byte for byte against forms built
here with ``struct`` from PostgreSQL's and pgvector's send functions (array_send, vector_send, halfvec_send),
without a database; and the rules' masks and reasons. The round trips through a real server are in
tests/test_load_rich.py."""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa
import pytest

from pgfeatures.definitions import Feature, feature_type
from pgfeatures.load.copy import encode_copy_rows
from pgfeatures.load.eventtime import EventClock
from pgfeatures.load.rich import json_lists, rich_column

CLOCK = EventClock(0, 0, None)


def array_send(oid: int, items: list[bytes]) -> bytes:
    """PostgreSQL's binary array of one dimension (the loader sends an empty one with size 0, lower bound 1)."""
    return struct.pack(">iiiii", 1, 0, oid, len(items), 1) + b"".join(struct.pack(">i", len(x)) + x for x in items)


def field(value: bytes | None) -> bytes:
    return struct.pack(">i", -1) if value is None else struct.pack(">i", len(value)) + value


def values_of(encoded: object, n: int) -> list[bytes | None]:
    """Each row's value bytes of one column, by encoding it alone and walking the rows."""
    values, nulls, problems = encoded  # type: ignore[misc]
    assert problems == []
    raw = bytes(encode_copy_rows([(values, nulls)]))
    out: list[bytes | None] = []
    pos = 0
    for _ in range(n):
        assert struct.unpack_from(">h", raw, pos)[0] == 1
        (length,) = struct.unpack_from(">i", raw, pos + 2)
        pos += 6
        out.append(None if length == -1 else raw[pos : pos + length])
        pos += max(length, 0)
    assert pos == len(raw)
    return out


def test_rows_of_fixed_and_variable_columns_are_laid_out_field_by_field() -> None:
    keys = np.array([1, -2, 3], dtype=np.int64)
    text = pa.array([b"ab", b"", b"xyz"], pa.large_binary())
    reals = np.array([0.5, 0.0, -1.0], dtype=np.float32)
    raw = bytes(
        encode_copy_rows(
            [(keys, None), (text, np.array([False, True, False])), (reals, np.array([False, False, True]))]
        )
    )
    expected = b"".join(
        struct.pack(">h", 3) + field(struct.pack(">q", k)) + field(t) + field(r)
        for k, t, r in [(1, b"ab", struct.pack(">f", 0.5)), (-2, None, struct.pack(">f", 0.0)), (3, b"xyz", None)]
    )
    assert raw == expected


@pytest.mark.parametrize(
    "spec, arrow, rows, oid, fmt",
    [
        ("list<integer>", pa.list_(pa.int64()), [[1, -2], [], None, [2**31 - 1]], 23, ">i"),
        ("list<bigint>", pa.large_list(pa.int32()), [[2**30], None, []], 20, ">q"),
        ("list<real>", pa.list_(pa.float64()), [[0.1, 3.0], []], 700, ">f"),
        ("list<double>", pa.list_(pa.float32(), 2), [[0.5, 1.5], None], 701, ">d"),
    ],
)
def test_numeric_lists_are_postgresql_binary_arrays(
    spec: str, arrow: pa.DataType, rows: list[list[float] | None], oid: int, fmt: str
) -> None:
    got = values_of(rich_column(pa.array(rows, arrow), Feature("x", feature_type(spec)), CLOCK), len(rows))
    assert got == [None if r is None else array_send(oid, [struct.pack(fmt, v) for v in r]) for r in rows]


def test_string_lists_and_strings_are_utf8() -> None:
    rows = [["a", "ünï 😀", ""], None, []]
    got = values_of(rich_column(pa.array(rows), Feature("x", feature_type("list<string>")), CLOCK), 3)
    assert got == [array_send(1043, [s.encode() for s in rows[0]]), None, array_send(1043, [])]  # type: ignore[index]
    strings = pa.array(["ÄÖÜß", None, ""]).dictionary_encode()
    got = values_of(rich_column(strings, Feature("s", feature_type("string", max_length=4)), CLOCK), 3)
    assert got == ["ÄÖÜß".encode(), None, b""]


@pytest.mark.parametrize("storage", ["vector", "halfvec", "array"])
def test_embeddings_are_their_columns_binary_forms(storage: str) -> None:
    rows = [[0.1, -2.0, 65504.0], None]
    feature = Feature("e", feature_type("embedding", dim=3))
    got = values_of(rich_column(pa.array(rows, pa.list_(pa.float64(), 3)), feature, CLOCK, storage), 2)
    floats = [float(np.float32(x)) for x in rows[0]]  # type: ignore[union-attr]
    if storage == "vector":  # vector_send: int16 dim, int16 unused, float4s
        expected = struct.pack(">hh3f", 3, 0, *floats)
    elif storage == "halfvec":  # halfvec_send: the same with float2s
        expected = struct.pack(">hh3e", 3, 0, *[float(np.float16(x)) for x in floats])
    else:
        expected = array_send(700, [struct.pack(">f", x) for x in floats])
    assert got == [expected, None]


def test_every_invalid_element_is_found_with_its_row_and_position() -> None:
    feature = Feature("e", feature_type("embedding", dim=2))
    arr = pa.array([[1.0, 2.0], [1.0, float("nan")], [3.0], None, [None, 1.0], [1e39, 0.0]], pa.list_(pa.float64()))
    _, nulls, problems = rich_column(arr, feature, CLOCK, "vector")
    assert nulls is not None and nulls.tolist() == [False, False, False, True, False, False]
    found = {(i, p.reason(i)) for p in problems for i in np.flatnonzero(p.mask)}
    assert found == {
        (1, "element 1 is nan; an embedding's values must be finite numbers"),
        (2, "1 values where the embedding has dim 2"),
        (4, "element 0 is null; an embedding's values may not be NULL (they must be finite numbers)"),
        (5, "element 0 is 1e+39, out of range for real (at most ±3.4028235e+38)"),
    }


def test_json_arrays_are_parsed_by_arrow_and_explained_by_python() -> None:
    text = pa.array(["[1, 2]", None, "[]", "null", '[1, "a"]', "[1,\n3]", '[2]}{"v":[3]'])
    lists, problems = json_lists(text, "x", pa.int64())
    assert lists.to_pylist() == [[1, 2], None, [], None, None, [1, 3], None]
    reasons = {int(i): p.reason(int(i)) for p in problems for i in np.flatnonzero(p.mask)}
    assert reasons[4] == "element 1 is 'a', not an integer"
    assert reasons[6].startswith("'[2]}{\"v\":[3]' is not a JSON array (Extra data")
    assert set(reasons) == {4, 6}
