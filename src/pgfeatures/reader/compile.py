"""Compiling a request into statements and a decoder (pure): the read strategies.

A request (tables, their features, one key per entity or a batch) is compiled once into a
``Reader``: its SQL text (bytes, ``$n`` placeholders, ready for a prepared statement), how its
results are fetched, how keys become parameters (one per entity), and a decoder that turns rows
into a FeatureResult. Strategies, all returning identical results:

``single`` (default)
    One statement; one scalar subquery per table, each returning the table's requested features
    as one array. One round-trip, one row, N index lookups.
``union``
    One statement; a UNION ALL of per-table selects returning ``(part number, array)``.
``join``
    One statement; the keys LEFT JOINed to every table. Kept for comparison: each join level
    carries every column gathered so far.
``pipeline``
    One statement per table, all sent in one psycopg pipeline (one flush), each on its own cursor.
    A cursor that executes several statements in a pipeline keeps only the last result, so one
    cursor per statement is required for correctness (see tests/test_pipeline_pitfall.py).
``sequential``
    One statement per table, each executed and fetched in turn: N round-trips. The baseline.

A table with a ttl is decided fresh or expired inside the statement, on the server's clock::

    (SELECT CASE WHEN "updated_at" >= now() - '604800 seconds'::interval
                 THEN ARRAY[...]::float4[] ELSE '{}'::float4[] END
     FROM "s"."user_stats" WHERE "user_id" = $1::int8)

so a missing row is NULL, an expired one an empty array, and the request stays one statement
and one round-trip: an entity's age is ``now() - updated_at`` (to the microsecond), and a row of
age exactly ``ttl`` is still served.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from itertools import chain
from typing import Any, Generic, TypeVar

from psycopg import sql

from ..definitions import UPDATED_AT, FeatureTable
from ..errors import UnknownStrategyError
from .decode import EXPIRED, MISSING, PRESENT, FeatureResult, Row, TableDecoder, array_row_decoder, result
from .keys import KeyBinder
from .selection import Selection
from .transport import RAW, RECORD, Part, column_sql, transport


class Strategy(str, enum.Enum):
    SINGLE = "single"
    UNION = "union"
    JOIN = "join"
    PIPELINE = "pipeline"
    SEQUENTIAL = "sequential"

    @classmethod
    def parse(cls, value: str | Strategy) -> Strategy:
        try:
            return cls(value)
        except ValueError:
            raise UnknownStrategyError(
                f"unknown strategy {value!r}; valid strategies: {', '.join(s.value for s in cls)}"
            ) from None


DEFAULT_STRATEGY = Strategy.SINGLE


VectorRows = Callable[[Sequence[str]], Callable[[Any], tuple[list[Any], dict[str, str]]]]
"""For an order of ``table.feature`` names: a decoder of one row into (values in that order, status per table)."""

D = TypeVar("D", covariant=True)  # what a reader decodes to: a FeatureResult, or a ServiceVector (vector.py)
E = TypeVar("E")


class Fetch(enum.Enum):
    """How an I/O shell runs a reader's statements and what it hands to ``decode``."""

    ONE = "one"  # one statement; decode(fetchone())
    ALL = "all"  # one statement; decode(fetchall())
    PIPELINE = "pipeline"  # one statement per table in one pipeline; decode([fetchone() per cursor])
    SEQUENTIAL = "sequential"  # one statement per table, one round-trip each; decode([fetchone() ...])


@dataclass(frozen=True)
class Reader(Generic[D]):
    """A compiled single-request reader. Build with ``compile_reader``; reuse for every request of that shape.

    ``binder`` turns the request's keys into the parameters; ``param_index[i]`` is the parameter
    statement ``i`` takes (per-table strategies: each statement takes its table's entity key only).
    ``D`` is what ``decode`` returns: a FeatureResult (``Reader[FeatureResult]``, every compiled
    reader), or a ServiceVector (``vector.vector_reader``).
    """

    strategy: Strategy
    selection: Selection
    statements: tuple[bytes, ...]
    fetch: Fetch
    decode: Callable[[Any], D]  # what ``fetch`` fetched (a row, or rows) -> the request's result
    binder: KeyBinder
    param_index: tuple[int, ...] = ()
    materialized: bool = False  # reads a materialized service's serving rows
    # A materialized reader's flexible twin (same request, same result type), for when the serving
    # rows it was compiled for cannot be read any more (rebuilt for another layout, or stale).
    fallback: Callable[[], Reader[D]] | None = field(default=None, compare=False, repr=False)
    # A decoder of this reader's row straight into a vector (``vector.vector_reader``), compiled for an order
    # of ``table.feature`` names; None: the vector is built from the decoded result.
    vector_rows: VectorRows | None = field(default=None, compare=False, repr=False)

    @property
    def tables(self) -> tuple[str, ...]:
        return self.selection.tables

    def decoding(self, decode: Callable[[Any], E]) -> Reader[E]:
        """This reader with another decoder: the same statements (so the same prepared statements)."""
        same: Reader[Any] = self
        return replace(same, decode=decode)


@dataclass(frozen=True)
class BatchReader(Generic[D]):
    """A compiled many-keys reader: one statement taking one array per entity; rows come back in input order.

    ``D`` is what ``decode`` returns per row: a FeatureResult, or a ServiceVector (``vector.vector_batch_reader``).
    """

    selection: Selection
    statement: bytes
    decode: Callable[[Sequence[Row]], list[D]]
    binder: KeyBinder
    materialized: bool = False
    fallback: Callable[[], BatchReader[D]] | None = field(default=None, compare=False, repr=False)  # see Reader
    vector_rows: VectorRows | None = field(default=None, compare=False, repr=False)  # see Reader

    @property
    def tables(self) -> tuple[str, ...]:
        return self.selection.tables

    def decoding(self, decode: Callable[[Sequence[Row]], list[E]]) -> BatchReader[E]:
        """This reader with another decoder: the same statement (so the same prepared statement)."""
        same: BatchReader[Any] = self
        return replace(same, decode=decode)


def _binder(selection: Selection) -> KeyBinder:
    return KeyBinder(selection.entities, selection.known, selection.needs())


def fresh_sql(ttl: int, alias: str | None = None) -> sql.Composable:
    """The row is at most ``ttl`` seconds old, by the server's clock (the statement's ``now()``)."""
    col = sql.Identifier(alias, UPDATED_AT) if alias else sql.Identifier(UPDATED_AT)
    return sql.SQL("{} >= now() - {}::interval").format(col, sql.Literal(f"{ttl} seconds"))


def _param(selection: Selection, table: FeatureTable) -> sql.Composable:
    entity = table.entity
    return sql.SQL(f"${selection.entity_index(table) + 1}::{entity.cast}")


def _subqueries(
    selection: Selection, key_of: Callable[[FeatureTable], sql.Composable]
) -> tuple[list[sql.Composable], list[tuple[Part, ...]]]:
    cols: list[sql.Composable] = []
    parts_per_table: list[tuple[Part, ...]] = []
    for (table, features), ttl in zip(selection.items, selection.ttls):
        parts = transport(features)
        parts_per_table.append(parts)
        ident = sql.Identifier(selection.schema, table.name)
        for part in parts:
            value: sql.Composable = part.array_sql()
            if ttl is not None:
                value = sql.SQL("CASE WHEN {} THEN {} ELSE {} END").format(fresh_sql(ttl), value, part.empty_sql())
            cols.append(
                sql.SQL("(SELECT {} FROM {} WHERE {} = {})").format(
                    value, ident, sql.Identifier(table.key_column), key_of(table)
                )
            )
    return cols, parts_per_table


def _decoders(selection: Selection, parts_per_table: list[tuple[Part, ...]]) -> list[TableDecoder]:
    return [TableDecoder(parts, fs) for (_, fs), parts in zip(selection.items, parts_per_table)]


def _lazy(selection: Selection) -> bool:
    return not selection.has_ttl and not selection.has_defaults


def _plain_vector_rows(
    selection: Selection, decoders: Sequence[TableDecoder], parts_per_table: Sequence[tuple[Part, ...]]
) -> VectorRows | None:
    """For a row of one array per table whose values need nothing (no conversion, no default, in the order
    asked): vector decoders straight from the arrays, no per-table dicts. A table's array is NULL when it
    has no row, empty when its row expired (see the module docstring)."""
    if not all(d.simple for d in decoders) or not all(len(p) == 1 for p in parts_per_table):
        return None
    tables = selection.tables
    flat = [f"{t}.{f}" for t, d in zip(tables, decoders) for f in d.names]
    position = {f"{t}.{f}": (i, j) for i, (t, d) in enumerate(zip(tables, decoders)) for j, f in enumerate(d.names)}
    nones = [[None] * len(d.names) for d in decoders]  # only read (chained), never handed out

    def vector_rows(names: Sequence[str]) -> Callable[[Row], tuple[list[Any], dict[str, str]]]:
        if list(names) == flat:  # the vector is the arrays one after the other

            def decode(row: Row) -> tuple[list[Any], dict[str, str]]:
                values = list(chain.from_iterable([a if a else none for a, none in zip(row, nones)]))
                status = {t: PRESENT if a else MISSING if a is None else EXPIRED for t, a in zip(tables, row)}
                return values, status

            return decode
        picks = tuple(position[n] for n in names)

        def pick(row: Row) -> tuple[list[Any], dict[str, str]]:
            values = [a[j] if (a := row[i]) else None for i, j in picks]
            status = {t: PRESENT if a else MISSING if a is None else EXPIRED for t, a in zip(tables, row)}
            return values, status

        return pick

    return vector_rows


def _compile_single(selection: Selection) -> Reader[FeatureResult]:
    cols, parts_per_table = _subqueries(selection, lambda t: _param(selection, t))
    query = sql.SQL("SELECT {}").format(sql.SQL(", ").join(cols))
    decoders = _decoders(selection, parts_per_table)
    decode = array_row_decoder(selection.tables, decoders, parts_per_table, _lazy(selection))
    return Reader(
        Strategy.SINGLE,
        selection,
        (query.as_bytes(None),),
        Fetch.ONE,
        decode,
        _binder(selection),
        vector_rows=_plain_vector_rows(selection, decoders, parts_per_table),
    )


def _compile_union(selection: Selection) -> Reader[FeatureResult]:
    # Every branch must return the same column types: floating-point parts share one array type
    # (real[] when all are real, else float8[]); bigint parts ride in a second int8[] column,
    # present only when some table needs it.
    parts_per_table = [transport(fs) for _, fs in selection.items]
    rich = [t.name for (t, _), parts in zip(selection.items, parts_per_table) if parts[0].array_type == RECORD]
    if rich:
        raise UnknownStrategyError(
            f"strategy 'union' reads numeric features only; {', '.join(rich)} hold(s) strings, lists or "
            "embeddings: use 'single' (the default), 'join', 'pipeline' or 'sequential'"
        )
    float_types = {p.array_type for parts in parts_per_table for p in parts if p.array_type != "int8[]"}
    common = "float4[]" if float_types <= {"float4[]"} else "float8[]"
    has_int8 = any(p.array_type == "int8[]" for parts in parts_per_table for p in parts)
    parts_per_table = [
        tuple(p if p.array_type == "int8[]" else Part(common, p.features) for p in parts) for parts in parts_per_table
    ]
    branches = []
    spans = []
    number = 0
    for (table, _), parts, ttl in zip(selection.items, parts_per_table, selection.ttls):
        spans.append((number, number + len(parts)))
        for part in parts:
            value: sql.Composable = part.array_sql()
            if ttl is not None:
                value = sql.SQL("CASE WHEN {} THEN {} ELSE {} END").format(fresh_sql(ttl), value, part.empty_sql())
            cols: list[sql.Composable] = [sql.SQL("{}::int2").format(sql.Literal(number))]
            if part.array_type == "int8[]":
                cols += [sql.SQL("NULL::{}").format(sql.SQL(common)), value]
            else:
                cols.append(value)
                if has_int8:
                    cols.append(sql.SQL("NULL::int8[]"))
            branches.append(
                sql.SQL("SELECT {} FROM {} WHERE {} = {}").format(
                    sql.SQL(", ").join(cols),
                    sql.Identifier(selection.schema, table.name),
                    sql.Identifier(table.key_column),
                    _param(selection, table),
                )
            )
            number += 1
    query = sql.SQL(" UNION ALL ").join(branches)
    decoders = _decoders(selection, parts_per_table)
    layout = [
        (name, dec.from_array if b - a == 1 else dec.from_parts, a, b)
        for name, dec, (a, b) in zip(selection.tables, decoders, spans)
    ]
    n_parts = number

    def decode(rows: Sequence[Row]) -> FeatureResult:
        arrays: list[Any] = [None] * n_parts
        for row in rows:
            arrays[row[0]] = row[1] if row[1] is not None else row[-1]
        values: dict[str, Any] = {}
        status: dict[str, str] = {}
        for name, dec, a, b in layout:
            status[name], values[name] = dec(arrays[a] if b - a == 1 else arrays[a:b])
        return result(values, status)

    return Reader(Strategy.UNION, selection, (query.as_bytes(None),), Fetch.ALL, decode, _binder(selection))


def _compile_join(selection: Selection) -> Reader[FeatureResult]:
    keys = sql.SQL(", ").join(
        sql.SQL(f"${i + 1}::{e.cast} AS {{}}").format(sql.Identifier(f"e{i}")) for i, e in enumerate(selection.entities)
    )
    cols: list[sql.Composable] = []
    joins: list[sql.Composable] = []
    layout = []
    for i, ((table, features), ttl) in enumerate(zip(selection.items, selection.ttls)):
        alias = f"t{i}"
        start = len(cols)
        cols.append(sql.SQL("{} IS NOT NULL").format(sql.Identifier(alias, table.key_column)))
        cols.append(fresh_sql(ttl, alias) if ttl is not None else sql.SQL("true"))
        cols.extend(column_sql(f, alias) for f in features)
        layout.append((table.name, TableDecoder((Part(RAW, features),), features), start, len(cols)))
        joins.append(
            sql.SQL("LEFT JOIN {} {} ON {} = k.{}").format(
                sql.Identifier(selection.schema, table.name),
                sql.Identifier(alias),
                sql.Identifier(alias, table.key_column),
                sql.Identifier(f"e{selection.entity_index(table)}"),
            )
        )
    query = sql.SQL("SELECT {} FROM (SELECT {}) k {}").format(sql.SQL(", ").join(cols), keys, sql.SQL(" ").join(joins))

    def decode(row: Row) -> FeatureResult:
        values: dict[str, Any] = {}
        status: dict[str, str] = {}
        for name, dec, a, b in layout:
            status[name], values[name] = dec.from_columns(row[a], row[a + 1], row[a + 2 : b])
        return result(values, status)

    return Reader(Strategy.JOIN, selection, (query.as_bytes(None),), Fetch.ONE, decode, _binder(selection))


def _compile_per_table(selection: Selection, strategy: Strategy) -> Reader[FeatureResult]:
    statements = []
    layout = []
    for (table, features), ttl in zip(selection.items, selection.ttls):
        cols: list[sql.Composable] = [column_sql(f) for f in features]
        if ttl is not None:
            cols.append(fresh_sql(ttl))
        statements.append(
            sql.SQL("SELECT {} FROM {} WHERE {} = {}")
            .format(
                sql.SQL(", ").join(cols),
                sql.Identifier(selection.schema, table.name),
                sql.Identifier(table.key_column),
                sql.SQL(f"$1::{table.entity.cast}"),
            )
            .as_bytes(None)
        )
        layout.append((table.name, TableDecoder((Part(RAW, features),), features), len(features), ttl is not None))

    def decode(rows: Sequence[Row | None]) -> FeatureResult:
        values: dict[str, Any] = {}
        status: dict[str, str] = {}
        for (name, dec, n, has_ttl), row in zip(layout, rows):
            if row is None:
                status[name], values[name] = dec.from_columns(False, False, ())
            else:
                status[name], values[name] = dec.from_columns(True, row[n] if has_ttl else True, row[:n])
        return result(values, status)

    fetch = Fetch.PIPELINE if strategy is Strategy.PIPELINE else Fetch.SEQUENTIAL
    index = tuple(selection.entity_index(t) for t, _ in selection.items)
    return Reader(strategy, selection, tuple(statements), fetch, decode, _binder(selection), index)


def compile_reader(selection: Selection, strategy: Strategy | str = DEFAULT_STRATEGY) -> Reader[FeatureResult]:
    strategy = Strategy.parse(strategy)
    if strategy is Strategy.SINGLE:
        return _compile_single(selection)
    if strategy is Strategy.UNION:
        return _compile_union(selection)
    if strategy is Strategy.JOIN:
        return _compile_join(selection)
    return _compile_per_table(selection, strategy)


def compile_batch_reader(selection: Selection) -> BatchReader[FeatureResult]:
    """Many keys, one statement: per-table scalar subqueries over
    ``unnest($1::T1[], $2::T2[], ...) WITH ORDINALITY`` (one array per entity, zipped row by row).

    One row per input key, in input order; duplicates repeat, misses decode per table.
    """
    entities = selection.entities
    arrays = sql.SQL(", ").join(sql.SQL(f"${i + 1}::{e.cast}[]") for i, e in enumerate(entities))
    names = sql.SQL(", ").join(sql.Identifier(f"e{i}") for i in range(len(entities)))
    cols, parts_per_table = _subqueries(
        selection, lambda t: sql.SQL("k.{}").format(sql.Identifier(f"e{selection.entity_index(t)}"))
    )
    query = sql.SQL("SELECT {} FROM unnest({}) WITH ORDINALITY AS k({}, i) ORDER BY k.i").format(
        sql.SQL(", ").join(cols), arrays, names
    )
    decoders = _decoders(selection, parts_per_table)
    decode_row = array_row_decoder(selection.tables, decoders, parts_per_table, _lazy(selection))

    def decode(rows: Sequence[Row]) -> list[FeatureResult]:
        return [decode_row(row) for row in rows]

    return BatchReader(
        selection,
        query.as_bytes(None),
        decode,
        _binder(selection),
        vector_rows=_plain_vector_rows(selection, decoders, parts_per_table),
    )
