"""A rich table's row value, parsed by a parser compiled for its fields (pure).

A table with a string, list or embedding travels as one binary record, ``ROW(f1, f2, ...)``
(``transport.RECORD``). psycopg parses a record field by field in Python: for 30 tables of 8
fields that was two thirds of the client's time on a rich read. The read connections hand such
records over as bytes instead (``register_record_bytes``), and each table's decoder parses them with a parser
compiled for what the table sends: runs of fixed-width fields in one ``struct`` call, strings and
embeddings sliced out by length.

The fast path trusts nothing it did not check: every field's type OID and length are compared with
what the compiled plan expects (so a column retyped under a running reader, or a NULL, is never
read as something else) and a record that differs in any way is parsed by psycopg's own record
loader instead. Either way the result is a tuple of the fields, an embedding already decoded
(``transport.embedding_loader``).
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable
from enum import IntEnum
from operator import itemgetter
from typing import Any, NamedTuple

from psycopg import adapters, postgres
from psycopg.types.composite import RecordBinaryLoader
from psycopg.types.string import ByteaBinaryLoader

from ..definitions import EVENT_TIME, Feature
from ..errors import SchemaDriftError
from .transport import embedding_loader, float4_array

# Fixed-width fields by the PostgreSQL type they travel as: (struct code, width, type OID).
_FIXED = {
    "real": ("f", 4, postgres.types["float4"].oid),
    "double precision": ("d", 8, postgres.types["float8"].oid),
    "smallint": ("h", 2, postgres.types["int2"].oid),
    "integer": ("i", 4, postgres.types["int4"].oid),
    "bigint": ("q", 8, postgres.types["int8"].oid),
    "boolean": ("?", 1, postgres.types["bool"].oid),
}
_STRING_OID = postgres.types["varchar"].oid  # a string feature's column (anything else: psycopg parses it)
_FIRST_USER_OID = 16384  # pgvector's types are an extension's: their OIDs are never below this
_RECORD_OID = postgres.types["record"].oid
EMPTY = b"\x00\x00\x00\x00"  # ROW(): no fields (an expired row)


def register_record_bytes(cursor: Any) -> None:
    """Make ``cursor`` return binary records as bytes, for the compiled parsers to read (psycopg's own
    bytea loader: its C implementation hands the field over as ``bytes``, a subclass would not)."""
    cursor.adapters.register_loader(_RECORD_OID, ByteaBinaryLoader)


_psycopg_record = RecordBinaryLoader(_RECORD_OID, adapters)


def parse_slow(data: Any) -> tuple[Any, ...]:
    """Any binary record, parsed by psycopg (what the read returned before records came as bytes)."""
    return tuple(_psycopg_record.load(data))


class _Then(IntEnum):
    """What follows a segment's fixed-width fields."""

    NOTHING = 0
    STRING = 1
    EMBEDDING = 2


STRING, EMBEDDING = _Then.STRING, _Then.EMBEDDING  # module globals: no class attribute lookup per field


class _Segment(NamedTuple):
    """One ``struct`` call of a compiled parser: fixed-width fields, then the header (OID, length) of the
    variable field after them, if any. ``meta`` picks every OID and length it must check (and, first, the
    field count), ``expected`` is what they must be; ``values`` slices the fixed fields' values out. A fixed
    field's OID and length are read as one 64-bit int (half the ints made and compared)."""

    unpack: Callable[[Any, int], tuple[Any, ...]]
    size: int
    meta: Callable[[tuple[Any, ...]], Any]
    expected: Any
    values: slice
    then: _Then
    dim: int
    half: struct.Struct  # an embedding's halfvec elements (empty for a string or nothing)


def _nothing(_: tuple[Any, ...]) -> None:
    return None


def _segments(features: tuple[Feature, ...]) -> list[_Segment] | None:
    """The compiled plan of ``ROW(features...)``; None when a field has no fast path (lists)."""
    segments: list[_Segment] = []
    # The segment being built: its struct codes, the positions (in what it unpacks) of what must be
    # checked and their expected values, where its values start and how many there are.
    codes, meta, expected = ["i"], [0], [len(features)]  # the first segment starts with the field count
    first, count = 0, 0

    def close(then: _Then, dim: int = 0) -> None:
        nonlocal codes, meta, expected, first, count
        if then:
            if then == _Then.STRING:  # a string's OID is checked; an embedding's is pgvector's, checked at parse
                meta.append(len(codes))
                expected.append(_STRING_OID)
            codes += ["I", "i"]  # the variable field's OID and length
            if then == _Then.EMBEDDING:  # and an embedding's own header: its dim (checked) and a spare int16
                codes += ["h", "h"]
        unpack = struct.Struct(">" + "".join(codes))
        segments.append(
            _Segment(
                unpack.unpack_from,
                unpack.size,
                itemgetter(*meta) if meta else _nothing,  # itemgetter of one index returns the item itself
                tuple(expected) if len(expected) > 1 else expected[0] if expected else None,
                slice(first, first + 2 * count, 2),
                then,
                dim,
                struct.Struct(f">{dim}e"),
            )
        )
        codes, meta, expected, first, count = [], [], [], 0, 0

    for f in features:
        if f.type is EVENT_TIME:  # travels as int8 epoch microseconds (transport.column_sql)
            code, width, oid = _FIXED["bigint"]
        elif f.type.name in _FIXED:
            code, width, oid = _FIXED[f.type.name]
        elif f.type.kind == "string":
            close(_Then.STRING)
            continue
        elif f.type.kind == "embedding":
            close(_Then.EMBEDDING, f.type.dim or 0)
            continue
        else:
            return None
        if not count:
            first = len(codes) + 1
        meta.append(len(codes))
        expected.append(oid << 32 | width)  # the field's OID and length read as one unsigned 64-bit int
        codes += ["Q", code]
        count += 1
    if count or not segments:
        close(_Then.NOTHING)
    return segments


def record_parser(features: tuple[Feature, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """A parser of the binary record ``ROW(features...)`` as bytes, into its fields (embeddings decoded);
    given the tuple psycopg parsed instead, it decodes the embeddings in it.

    An empty record (``ROW()``, an expired row) is the empty tuple. A record whose fields are not
    exactly the expected types and lengths (a NULL, a retyped column) is parsed by psycopg.
    """
    loaders = [(i, embedding_loader(f)) for i, f in enumerate(features) if f.type.kind == "embedding"]

    def slow(data: Any) -> tuple[Any, ...]:
        return finish(parse_slow(data))

    others = [(i, f) for i, f in enumerate(features) if f.type.kind != "embedding"]

    def finish(fields: tuple[Any, ...]) -> tuple[Any, ...]:
        if not fields:
            return fields
        if len(fields) != len(features):  # the statement names its fields: never from PostgreSQL
            raise SchemaDriftError(f"a row value of {len(fields)} fields where the read asked for {len(features)}")
        for i, feature in others:
            if isinstance(fields[i], (bytes, memoryview)):  # psycopg has no loader for the field's type
                raise SchemaDriftError(
                    f"{feature.name}: a stored value of a type pgfeatures does not read where the definition says "
                    f"{feature.type.spec} (a domain, or another type, given to the column under a running "
                    "reader); run pgfeatures doctor"
                )
        if not loaders:
            return fields
        out = list(fields)
        for i, load in loaders:
            if out[i] is not None:
                out[i] = load(out[i])
        return tuple(out)

    segments = _segments(features)
    if segments is None:
        return lambda data: finish(data) if type(data) is tuple else slow(data)
    plan = tuple(segments)  # unpacked in the loop: no attribute lookups per field

    def parse(data: Any) -> tuple[Any, ...]:
        if type(data) is tuple:  # psycopg parsed it already (a cursor that hands records over as tuples)
            return finish(data)
        if len(data) == 4:
            return () if data == EMPTY else slow(data)
        out: list[Any] = []
        pos = 0
        try:  # a NULL fixed-width field shortens the record: a struct call may run past its end
            for unpack, size, meta, expected, values, then, dim, half in plan:
                header = unpack(data, pos)
                if meta(header) != expected:
                    return slow(data)
                out += header[values]
                pos += size
                if then is STRING:
                    length = header[-1]
                    if length < 0:
                        out.append(None)
                    else:
                        out.append(data[pos : pos + length].decode())
                        pos += length
                elif then is EMBEDDING:
                    # (OID, length, dim, spare) read: the dim and spare are the value's first 4 bytes (for a
                    # NULL embedding, the next field's header; a NULL embedding as the last field makes the
                    # struct call run past the end, and psycopg parses that record). pgvector's vector is
                    # 4 + 4 * dim bytes, halfvec 4 + 2 * dim; the dim must be the definition's.
                    length = header[-3]
                    pos -= 4
                    if length < 0:
                        out.append(None)
                        continue
                    if header[-4] < _FIRST_USER_OID or header[-2] != dim:
                        return slow(data)
                    if length == 4 + 4 * dim:
                        out.append(float4_array(data[pos + 4 : pos + length]))
                    elif length == 4 + 2 * dim:
                        out.append(array("f", half.unpack_from(data, pos + 4)))
                    else:
                        return slow(data)
                    pos += length
        except (struct.error, UnicodeDecodeError, ValueError):  # psycopg's parser says what is wrong, if anything
            return slow(data)
        if pos != len(data):
            return slow(data)
        return tuple(out)

    return parse
