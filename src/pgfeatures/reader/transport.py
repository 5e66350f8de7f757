"""How one table's features travel: arrays of one element type that lose nothing (pure).

``real[]`` when every requested feature is ``real``; ``float8[]`` when they are real, double,
smallint, integer or boolean (all exact in a double; converted back to int/bool on decode);
``int8[]`` when they are all integer kinds. A table mixing ``bigint`` with floating-point features
needs two arrays, hence two subqueries (two index lookups): keep bigint out of mixed hot tables
where you can. An epoch timestamp never rides in a ``real[]``: real is exact only up to 2^24.

A table with a rich feature (a string, a list, an embedding) travels as one row value instead,
``ROW(f1, f2, ...)``, in one subquery like an array (binary records carry each field's type, so
psycopg decodes every field as itself; an expired row is the empty ``ROW()``). An embedding travels
as stored, and becomes an ``array.array("f")`` on decode (``embedding_loader``; records.py parses a
rich table's row value).

Event time (``updated_at``, and any timestamp feature) travels as int8 epoch microseconds
(``schema.event_time_micros_sql``) in an ``int8[]`` or as a raw column, and becomes an aware UTC
datetime on decode (``converter``): exact, and independent of the session's ``TimeZone``.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from ..definitions import EVENT_TIME, Feature, from_micros
from ..errors import SchemaDriftError
from ..schema import event_time_micros_sql

SWAP = sys.byteorder == "little"  # pgvector sends float4 big-endian
RAW = "raw"  # not an array: the columns themselves (join and per-table strategies)
RECORD = "record"  # not an array: one row value holding the table's features (tables with rich features)


@dataclass(frozen=True)
class Part:
    """Some of a table's features, sent as one array of one element type (or ``RAW`` columns)."""

    array_type: str  # "float4[]", "float8[]", "int8[]" or RAW
    features: tuple[Feature, ...]

    def array_sql(self, alias: str | None = None) -> sql.Composable:
        if self.array_type == RECORD:
            return sql.SQL("ROW({})").format(sql.SQL(", ").join(column_sql(f, alias) for f in self.features))
        element = self.array_type[:-2]
        cols = []
        for f in self.features:
            col: sql.Composable = column_sql(f, alias)
            if f.type is EVENT_TIME:
                cols.append(col)  # already int8
                continue
            if f.type.name == "boolean":
                col = sql.SQL("{}::int").format(col)
            if self.array_type != "float4[]":
                col = sql.SQL("{}::{}").format(col, sql.SQL(element))
            cols.append(col)
        return sql.SQL("ARRAY[{}]::{}").format(sql.SQL(", ").join(cols), sql.SQL(self.array_type))

    def empty_sql(self) -> sql.Composable:
        """An empty array of this part's type (or ``ROW()``): an expired row's marker (a missing row is NULL)."""
        if self.array_type == RECORD:
            return sql.SQL("ROW()")
        return sql.SQL("'{{}}'::{}").format(sql.SQL(self.array_type))


def column_sql(feature: Feature, alias: str | None = None) -> sql.Composable:
    """The feature's column as it travels: itself, for event time its epoch microseconds, for an
    embedding a ``real[]``."""
    col = sql.Identifier(alias, feature.name) if alias else sql.Identifier(feature.name)
    if feature.type is EVENT_TIME:
        return event_time_micros_sql(col)
    return col  # an embedding as stored: pgvector's binary form is half an array's size (``embedding_loader``)


def transport(features: tuple[Feature, ...]) -> tuple[Part, ...]:
    if any(f.type.rich for f in features):
        return (Part(RECORD, features),)
    kinds = {f.type.name for f in features}
    if kinds == {"real"}:
        return (Part("float4[]", features),)
    if all(f.type.exact_in_float8 for f in features):
        return (Part("float8[]", features),)
    if all(f.type.python is not float for f in features):
        return (Part("int8[]", features),)
    floats = tuple(f for f in features if f.type.python is float)
    ints = tuple(f for f in features if f.type.python is not float)
    return (Part("float8[]", floats), Part("int8[]", ints))


def float4_array(elements: bytes) -> array[float]:
    """pgvector's big-endian float4 elements (a binary ``vector`` past its 4-byte header) as an ``array("f")``."""
    vector = array("f")
    vector.frombytes(elements)
    if SWAP:
        vector.byteswap()
    return vector


def embedding_loader(feature: Feature) -> Callable[[Any], array[float]]:
    """An embedding as it arrives, as an ``array.array("f")``: pgvector's binary ``vector`` (int16 dim, int16
    unused, ``dim`` big-endian float4) or ``halfvec`` (the same with float2), which psycopg hands over as bytes
    (no loader is registered for the extension's types), or a ``real[]`` it decoded already. Sending the
    ``vector`` rather than ``vector::real[]`` halves what the server serializes and sends (measured with
    ``EXPLAIN (ANALYZE, SERIALIZE BINARY)``: 0.22 against 0.42 ms for 30 rows of 128).

    Why an array of float32 rather than a list of floats: it is what is stored, exactly; it is one object
    rather than ``dim`` (making and freeing 30 lists of 128 floats cost 65 µs a request against 8 µs for
    30 arrays); and numpy and torch take it without a copy (``numpy.asarray(v)``: float32).

    A stored value that is no embedding of the feature's dim (another dimension, a NULL element, a 2-D
    ``real[]``: a column changed, or a row written around pgfeatures) is a SchemaDriftError naming the
    feature, never a value of another shape (a vector output would put its elements in other features'
    places)."""
    dim = feature.type.dim or 0
    half = struct.Struct(f">{dim}e")

    def not_an_embedding(what: str) -> SchemaDriftError:
        return SchemaDriftError(
            f"{feature.name}: a stored value {what} where the definition says an embedding of dim {dim}: the "
            "column was changed or the row written around pgfeatures; run pgfeatures doctor"
        )

    def load(value: Any) -> array[float]:
        if isinstance(value, array):
            return value
        if isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
            (stored_dim,) = struct.unpack_from(">h", data)
            if stored_dim != dim:
                raise not_an_embedding(f"has {stored_dim} dimensions")
            if len(data) == 4 + 4 * dim:  # vector: float4 elements
                return float4_array(data[4:])
            if len(data) == 4 + 2 * dim:  # halfvec: float2 elements
                return array("f", half.unpack_from(data, 4))
            raise not_an_embedding(f"of {len(data)} bytes")
        tolist = getattr(value, "tolist", None)  # an adapter someone registered (pgvector's numpy arrays)
        elements = tolist() if callable(tolist) else value
        if len(elements) != dim:
            raise not_an_embedding(f"has {len(elements)} elements")
        try:
            return array("f", elements)
        except TypeError:  # a NULL element, or a 2-D real[]'s rows
            raise not_an_embedding("holds a NULL or a non-number") from None

    return load


def converter(feature: Feature, array_type: str) -> Callable[[Any], Any] | None:
    """What turns a travelled value back into the feature's Python type (None: nothing to do)."""
    if feature.type is EVENT_TIME:
        return from_micros
    if feature.type.kind == "embedding" and array_type in (RECORD, RAW):
        return embedding_loader(feature)
    if array_type in (RECORD, RAW):  # every field decoded as its own type
        return None
    if feature.type.python is bool:
        return bool
    if feature.type.python is int and array_type == "float8[]":
        return int
    return None
