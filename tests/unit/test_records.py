"""The compiled record parsers (reader/records.py) against psycopg's own record parser.

A rich table's row value arrives as the bytes of a binary record. The records are built here as
PostgreSQL's ``record_send`` writes them (field count; per field its type OID, its length or -1 for
NULL, its bytes), for every field type a rich table sends, with NULLs, retyped columns, halfvecs and
truncated records: the compiled parser must give exactly what psycopg's parser gives (embeddings
decoded), never a value read as another type.
"""

from __future__ import annotations

import struct
from array import array
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgfeatures.definitions import FeatureTable
from pgfeatures.errors import SchemaDriftError
from pgfeatures.reader import records
from pgfeatures.reader.records import parse_slow, record_parser
from pgfeatures.reader.transport import embedding_loader

VECTOR_OID, HALFVEC_OID = 16390, 16500  # an extension's types: any OID from 16384 on
FLOAT4, FLOAT8, INT2, INT4, INT8, BOOL, VARCHAR, TEXT, BYTEA = 700, 701, 21, 23, 20, 16, 1043, 25, 17

# field type -> (OID, how a value is written)
WRITERS: dict[str, tuple[int, Any]] = {
    "real": (FLOAT4, lambda v: struct.pack(">f", v)),
    "double": (FLOAT8, lambda v: struct.pack(">d", v)),
    "smallint": (INT2, lambda v: struct.pack(">h", v)),
    "integer": (INT4, lambda v: struct.pack(">i", v)),
    "bigint": (INT8, lambda v: struct.pack(">q", v)),
    "boolean": (BOOL, lambda v: struct.pack(">?", v)),
    "timestamp": (INT8, lambda v: struct.pack(">q", v)),  # event time travels as epoch microseconds
    "string": (VARCHAR, lambda v: v.encode()),
    "embedding": (VECTOR_OID, lambda v: struct.pack(f">hh{len(v)}f", len(v), 0, *v)),
}


class SlowCalls:
    """Counts the records psycopg's parser takes (the compiled parser's fallback)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.count = 0
        real = records.parse_slow

        def counted(data: Any) -> tuple[Any, ...]:
            self.count += 1
            return real(data)

        monkeypatch.setattr(records, "parse_slow", counted)


@pytest.fixture()
def slow_calls(monkeypatch: pytest.MonkeyPatch) -> SlowCalls:
    return SlowCalls(monkeypatch)


def record(fields: list[tuple[int, bytes | None]]) -> bytes:
    out = struct.pack(">i", len(fields))
    for oid, data in fields:
        out += struct.pack(">Ii", oid, -1 if data is None else len(data)) + (data or b"")
    return out


def table(spec: dict[str, str]) -> Any:
    features = {
        name: {"type": "embedding", "dim": 4} if kind == "embedding" else {"type": kind} for name, kind in spec.items()
    }
    return FeatureTable.of("t", features).features


def expected(features: Any, data: bytes) -> tuple[Any, ...]:
    """psycopg's parse, with embeddings decoded as every read decodes them."""
    out = list(parse_slow(data))
    for i, f in enumerate(features):
        if f.type.kind == "embedding" and out[i] is not None:
            out[i] = embedding_loader(features[i])(out[i])
    return tuple(out)


SHAPE = {"a": "real", "b": "double", "s": "string", "n": "integer", "e": "embedding", "k": "bigint", "ok": "boolean"}


def test_a_record_parses_as_psycopg_parses_it(slow_calls: SlowCalls) -> None:
    features = table(SHAPE)
    values = [0.5, 1e300, "grüße", -7, [1.0, -2.5, 0.0, 3.25], 2**40, True]
    data = record([(WRITERS[k][0], WRITERS[k][1](v)) for k, v in zip(SHAPE.values(), values)])
    got = record_parser(features)(data)
    assert slow_calls.count == 0  # the compiled parser read it
    assert got == expected(features, data)
    assert got[4] == array("f", [1.0, -2.5, 0.0, 3.25]) and isinstance(got[4], array)
    assert got == (0.5, 1e300, "grüße", -7, array("f", [1.0, -2.5, 0.0, 3.25]), 2**40, True)


def test_an_expired_row_is_the_empty_tuple() -> None:
    assert record_parser(table(SHAPE))(record([])) == ()


def test_a_tuple_psycopg_parsed_gets_its_embeddings_decoded() -> None:
    features = table({"s": "string", "e": "embedding"})
    vector = struct.pack(">hh4f", 4, 0, 1, 2, 3, 4)
    assert record_parser(features)(("x", vector)) == ("x", array("f", [1, 2, 3, 4]))
    assert record_parser(features)(()) == ()


def test_a_halfvec_embedding_is_decoded(slow_calls: SlowCalls) -> None:
    features = table({"e": "embedding"})
    data = record([(HALFVEC_OID, struct.pack(">hh4e", 4, 0, 0.5, -1.0, 65504.0, 0.0))])
    assert record_parser(features)(data) == (array("f", [0.5, -1.0, 65504.0, 0.0]),)
    assert slow_calls.count == 0


@pytest.mark.parametrize(
    "fields, why",
    [
        ([(INT4, struct.pack(">i", 1065353216)), (VARCHAR, b"x")], "a real column retyped integer: same length"),
        ([(FLOAT8, struct.pack(">d", 1.5)), (VARCHAR, b"x")], "a real column retyped double"),
        ([(FLOAT4, None), (VARCHAR, b"x")], "a NULL fixed-width field"),
        ([(FLOAT4, struct.pack(">f", 1.5)), (TEXT, b"x")], "a string column retyped text"),
        ([(FLOAT4, struct.pack(">f", 1.5)), (INT4, struct.pack(">i", 7))], "a string column retyped integer"),
    ],
)
def test_anything_unexpected_is_parsed_by_psycopg(
    fields: list[tuple[int, bytes | None]], why: str, slow_calls: SlowCalls
) -> None:
    features = table({"a": "real", "s": "string"})
    data = record(fields)
    got = record_parser(features)(data)
    assert got == expected(features, data), why
    assert slow_calls.count == 1, why
    if fields[0][0] == INT4:
        assert got[0] == 1065353216 and isinstance(got[0], int)  # never the float those bits spell


def test_a_record_of_another_shape_is_parsed_by_psycopg(slow_calls: SlowCalls) -> None:
    features = table({"a": "real", "s": "string"})
    for data in (
        record([(FLOAT4, struct.pack(">f", 1.5))]),  # a field short
        record([(FLOAT4, struct.pack(">f", 1.5)), (VARCHAR, b"x"), (INT4, struct.pack(">i", 3))]),  # one more
    ):
        with pytest.raises(SchemaDriftError, match="a row value of . fields where the read asked for 2"):
            record_parser(features)(data)
    cases = (record([(INT2, struct.pack(">h", 3)), (VARCHAR, b"x")]),)  # shorter field: the record is shorter
    for data in cases:
        assert record_parser(features)(data) == expected(features, data)
    assert slow_calls.count == len(cases) + 2
    trailing = record([(FLOAT4, struct.pack(">f", 1.5)), (VARCHAR, b"x")]) + b"\x00"  # bytes after the last field
    assert record_parser(features)(trailing) == expected(features, trailing)  # what psycopg makes of it
    assert slow_calls.count == len(cases) + 3


def test_an_embedding_of_another_dim_or_a_builtin_type_is_parsed_by_psycopg(slow_calls: SlowCalls) -> None:
    features = table({"e": "embedding"})
    vector_sized_bytea = record([(BYTEA, struct.pack(">hh4f", 4, 0, 1, 2, 3, 4))])  # a builtin type: not pgvector's
    assert record_parser(features)(vector_sized_bytea) == expected(features, vector_sized_bytea)
    assert slow_calls.count == 1
    three = record([(VECTOR_OID, struct.pack(">hh3f", 3, 0, 1, 2, 3))])  # the column changed under the reader
    with pytest.raises(SchemaDriftError, match="has 3 dimensions where the definition says an embedding of dim 4"):
        record_parser(features)(three)
    eight_halves = record([(HALFVEC_OID, struct.pack(">hh8e", 8, 0, *range(8)))])  # as long as 4 floats
    with pytest.raises(SchemaDriftError, match="has 8 dimensions"):
        record_parser(features)(eight_halves)
    assert record_parser(features)(record([(VECTOR_OID, None)])) == (None,)
    elements = b"".join(struct.pack(">if", 4, x) for x in (1, 2, 3, 4))
    real_array = record([(1021, struct.pack(">iiIii", 1, 0, FLOAT4, 4, 1) + elements)])
    assert record_parser(features)(real_array) == (array("f", [1, 2, 3, 4]),)  # real[] storage: psycopg's list


KINDS = ["real", "double", "smallint", "integer", "bigint", "boolean", "timestamp", "string", "embedding"]
VALUES = {
    "real": st.floats(width=32, allow_nan=False),
    "double": st.floats(allow_nan=False),
    "smallint": st.integers(-(2**15), 2**15 - 1),
    "integer": st.integers(-(2**31), 2**31 - 1),
    "bigint": st.integers(-(2**63), 2**63 - 1),
    "boolean": st.booleans(),
    "timestamp": st.integers(-(2**62), 2**62),
    "string": st.text(st.characters(blacklist_categories=("Cs",))),
    "embedding": st.lists(st.floats(width=32, allow_nan=False), min_size=4, max_size=4),
    "halfvec": st.lists(st.floats(width=16, allow_nan=False), min_size=4, max_size=4),
}
KINDS.append("halfvec")  # an embedding column stored as halfvec
WRITERS["halfvec"] = (HALFVEC_OID, lambda v: struct.pack(f">hh{len(v)}e", len(v), 0, *v))


@st.composite
def shapes_and_records(draw: st.DrawFn) -> tuple[Any, bytes]:
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=8))
    features = table({f"f{i}": "embedding" if k == "halfvec" else k for i, k in enumerate(kinds)})
    fields = []
    for kind in kinds:
        value = draw(st.none() | VALUES[kind])
        oid, write = WRITERS[kind]
        fields.append((oid, None if value is None else write(value)))
    return features, record(fields)


@settings(max_examples=300, deadline=None)
@given(shapes_and_records())
def test_any_record_parses_as_psycopg_parses_it(case: tuple[Any, bytes]) -> None:
    features, data = case
    calls = []
    real = records.parse_slow
    records.parse_slow = lambda data: calls.append(data) or real(data)  # type: ignore[assignment]
    try:
        got = record_parser(features)(data)
    finally:
        records.parse_slow = real
    assert got == expected(features, data)
    assert [type(v) for v in got] == [type(v) for v in expected(features, data)]
    fields = struct.unpack_from(">i", data)[0]
    if fields and b"\xff\xff\xff\xff" not in data:  # no NULL (a length of -1) anywhere: the fast path read it
        assert not calls


def test_a_field_of_a_type_psycopg_cannot_read_is_drift_not_bytes(slow_calls: SlowCalls) -> None:
    """A column retyped to a domain (or any type without a loader) under a running reader: psycopg hands its
    field over as bytes, which is no value of the feature."""
    features = table({"a": "real", "s": "string"})
    domain = 16999
    for fields in (
        [(domain, struct.pack(">f", 1.5)), (VARCHAR, b"x")],
        [(FLOAT4, struct.pack(">f", 1.5)), (domain, b"x")],
        [(FLOAT4, struct.pack(">f", 1.5)), (BYTEA, b"\xff\xfe")],  # a string column retyped bytea
    ):
        with pytest.raises(SchemaDriftError, match="a stored value of a type pgfeatures does not read"):
            record_parser(features)(record(fields))
