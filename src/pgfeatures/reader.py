"""Query planning and row decoding: pure code, no I/O, shared by the sync and async stores.

A request (tables, features within them, one key or a batch) is compiled once
into a ``Reader``: its SQL text (bytes, ``$n`` placeholders, ready for a
prepared statement), how its results are fetched, and a decoder that turns
fetched rows into ``{table: {feature: value}}``. The stores cache readers per
request shape, so the hot path does no registry walks and no string work.

Strategies, all returning identical results:

``single`` (default)
    One statement; one scalar subquery per table, each returning the table's
    requested features as one array. One round-trip, one row, N index lookups.
``union``
    One statement; a UNION ALL of per-table selects returning
    ``(part number, array)``. One round-trip, one row per present table.
``join``
    One statement; the key LEFT JOINed to every table. Kept for comparison:
    each join level carries every column gathered so far.
``pipeline``
    One statement per table, all sent in one psycopg pipeline (one flush),
    each on its own cursor. A cursor that executes several statements in a
    pipeline keeps only the last result, so one cursor per statement is
    required for correctness (see tests/test_pipeline_pitfall.py).
``sequential``
    One statement per table, each executed and fetched in turn: N
    round-trips. The baseline the others are measured against.

Values travel in arrays of one element type per table, chosen so nothing is
lost: ``real[]`` when every requested feature is ``real``; ``float8[]`` when
they are real, double, smallint, integer or boolean (all exact in a double;
converted back to int/bool on decode); ``int8[]`` when they are all integer
kinds. A table mixing ``bigint`` with floating-point features needs two
arrays, hence two subqueries (two index lookups): keep bigint out of mixed
hot tables where you can. An epoch timestamp never rides in a ``real[]``:
real is exact only up to 2^24.

A key absent from a table decodes to ``None`` in place of that table's dict.
"""

from __future__ import annotations

import enum
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from .definitions import KEY_COLUMN, KEY_LENGTH, Feature, FeatureTable, Registry
from .errors import DefinitionError, KeyFormatError, UnknownStrategyError

Row = tuple[Any, ...]
TableValues = dict[str, Any] | None
Features = dict[str, TableValues]
FeaturesArg = Mapping[str, Sequence[str]] | Sequence[str] | None

MISSING = None
"""The value a table takes in a result when the key has no row in it."""


class Strategy(str, enum.Enum):
    SINGLE = "single"
    UNION = "union"
    JOIN = "join"
    PIPELINE = "pipeline"
    SEQUENTIAL = "sequential"

    @classmethod
    def parse(cls, value: "str | Strategy") -> "Strategy":
        try:
            return cls(value)
        except ValueError:
            raise UnknownStrategyError(
                f"unknown strategy {value!r}; valid strategies: {', '.join(s.value for s in cls)}"
            ) from None


DEFAULT_STRATEGY = Strategy.SINGLE


class Fetch(enum.Enum):
    """How an I/O shell runs a reader's statements and what it hands to ``decode``."""

    ONE = "one"  # one statement; decode(fetchone())
    ALL = "all"  # one statement; decode(fetchall())
    PIPELINE = "pipeline"  # one statement per table in one pipeline; decode([fetchone() per cursor])
    SEQUENTIAL = "sequential"  # one statement per table, one round-trip each; decode([fetchone() ...])


# -- keys ---------------------------------------------------------------------------------------


def parse_key(key: bytes | bytearray | memoryview | str) -> bytes:
    """A 32-byte entity key from bytes or 64 hex characters. Raises KeyFormatError."""
    if isinstance(key, bytes):
        if len(key) == KEY_LENGTH:
            return key
        raise KeyFormatError(f"key must be {KEY_LENGTH} bytes, got {len(key)} bytes")
    if isinstance(key, str):
        if len(key) != 2 * KEY_LENGTH:
            raise KeyFormatError(f"hex key must be {2 * KEY_LENGTH} hex characters, got {len(key)} characters")
        try:
            raw = bytes.fromhex(key)
        except ValueError:
            raw = b""
        if len(raw) != KEY_LENGTH:  # fromhex skips whitespace: "ab cd..." would decode short
            raise KeyFormatError(f"hex key has non-hex characters: {key!r}")
        return raw
    if isinstance(key, (bytearray, memoryview)):
        return parse_key(bytes(key))
    raise KeyFormatError(f"key must be bytes (32) or a hex string (64 characters), got {type(key).__name__}")


def parse_keys(keys: Iterable[bytes | str]) -> list[bytes]:
    if isinstance(keys, (str, bytes)):
        raise KeyFormatError("keys must be a sequence of keys, not a single key")
    out = []
    for i, key in enumerate(keys):
        try:
            out.append(parse_key(key))
        except KeyFormatError as exc:
            raise KeyFormatError(f"keys[{i}]: {exc}") from None
    return out


# -- selection ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """Which features of which tables a request reads, resolved and validated."""

    schema: str
    items: tuple[tuple[FeatureTable, tuple[Feature, ...]], ...]

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(t.name for t, _ in self.items)

    @property
    def n_features(self) -> int:
        return sum(len(fs) for _, fs in self.items)


def select(registry: Registry, tables: Iterable[str] | None = None, features: FeaturesArg = None) -> Selection:
    """Resolve ``tables`` and ``features`` against the registry.

    ``tables`` None means every table (or, when ``features`` is a mapping, the
    tables it names). ``features`` is ``{table: [feature, ...]}`` or a list of
    ``"table.feature"``; tables not named in it read all their features.
    Raises UnknownTableError / UnknownFeatureError naming what is valid.
    """
    wanted = _features_by_table(features)
    if tables is None and wanted:
        tables = list(wanted)
    resolved = registry.resolve(tables)
    unasked = set(wanted) - {t.name for t in resolved}
    if unasked:
        registry.resolve(unasked)  # raises for unknown tables
        raise DefinitionError(f"features given for table(s) not requested: {', '.join(sorted(unasked))}")
    return Selection(registry.schema, tuple((t, t.select(wanted.get(t.name))) for t in resolved))


def _features_by_table(features: FeaturesArg) -> dict[str, list[str]]:
    if features is None:
        return {}
    if isinstance(features, Mapping):
        return {t: [fs] if isinstance(fs, str) else list(fs) for t, fs in features.items()}
    if isinstance(features, str):
        features = [features]
    out: dict[str, list[str]] = {}
    for item in features:
        table, dot, feature = item.partition(".")
        if not dot or not table or not feature:
            raise DefinitionError(f"feature {item!r} must be written 'table.feature' (or pass a {{table: [features]}} mapping)")
        out.setdefault(table, []).append(feature)
    return out


# -- transport: how one table's features travel ---------------------------------------------------


@dataclass(frozen=True)
class Part:
    """Some of a table's features, sent as one array of one element type."""

    array_type: str  # "float4[]", "float8[]" or "int8[]"
    features: tuple[Feature, ...]

    def array_sql(self, alias: str | None = None) -> sql.Composable:
        element = self.array_type[:-2]
        cols = []
        for f in self.features:
            col: sql.Composable = sql.Identifier(alias, f.name) if alias else sql.Identifier(f.name)
            if f.type.name == "boolean":
                col = sql.SQL("{}::int").format(col)
            if self.array_type != "float4[]":
                col = sql.SQL("{}::{}").format(col, sql.SQL(element))
            cols.append(col)
        return sql.SQL("ARRAY[{}]::{}").format(sql.SQL(", ").join(cols), sql.SQL(self.array_type))


def transport(features: tuple[Feature, ...]) -> tuple[Part, ...]:
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


def _converter(feature: Feature, array_type: str) -> Callable[[Any], Any] | None:
    if feature.type.python is bool:
        return bool
    if feature.type.python is int and array_type == "float8[]":
        return int
    return None


# -- decoders -------------------------------------------------------------------------------------


class TableDecoder:
    """Turns one table's fetched values (a sequence of per-part arrays) into a feature dict."""

    __slots__ = ("names", "order", "converters", "simple")

    def __init__(self, parts: tuple[Part, ...], asked: tuple[Feature, ...]):
        flat = [f for p in parts for f in p.features]
        self.names = tuple(f.name for f in asked)
        position = {f.name: i for i, f in enumerate(flat)}
        self.order = tuple(position[n] for n in self.names)
        array_type = {f.name: p.array_type for p in parts for f in p.features}
        self.converters = tuple(_converter(f, array_type[f.name]) for f in asked)
        self.simple = len(parts) == 1 and self.order == tuple(range(len(flat))) and not any(self.converters)

    def from_array(self, values: Sequence[Any] | None) -> TableValues:
        """Decode a single-part table's array (None: no row)."""
        if values is None:
            return None
        if self.simple:
            return dict(zip(self.names, values))
        return self.from_values(values)

    def from_parts(self, arrays: Sequence[Sequence[Any] | None]) -> TableValues:
        if arrays[0] is None:
            return None
        flat = [v for a in arrays for v in a]
        return self.from_values(flat)

    def from_values(self, flat: Sequence[Any]) -> dict[str, Any]:
        out = {}
        for name, pos, conv in zip(self.names, self.order, self.converters):
            v = flat[pos]
            out[name] = conv(v) if conv is not None and v is not None else v
        return out


# -- readers --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reader:
    """A compiled single-key request. Build with ``compile_reader``; reuse for every request of that shape."""

    strategy: Strategy
    selection: Selection
    statements: tuple[bytes, ...]
    fetch: Fetch
    decode: Callable[[Any], Features]

    @property
    def tables(self) -> tuple[str, ...]:
        return self.selection.tables


@dataclass(frozen=True)
class BatchReader:
    """A compiled many-keys request: one statement, ``$1`` is ``bytea[]``, rows come back in input order."""

    selection: Selection
    statement: bytes
    decode: Callable[[Sequence[Row]], list[Features]]

    @property
    def tables(self) -> tuple[str, ...]:
        return self.selection.tables


_KEY = sql.Identifier(KEY_COLUMN)
_P1 = sql.SQL("$1")


def _subqueries(selection: Selection, key: sql.Composable) -> tuple[list[sql.Composable], list[tuple[Part, ...]]]:
    cols, parts_per_table = [], []
    for table, features in selection.items:
        parts = transport(features)
        parts_per_table.append(parts)
        ident = sql.Identifier(selection.schema, table.name)
        for part in parts:
            cols.append(
                sql.SQL("(SELECT {} FROM {} WHERE {} = {})").format(part.array_sql(), ident, _KEY, key)
            )
    return cols, parts_per_table


def _row_decoder(selection: Selection, parts_per_table: list[tuple[Part, ...]]) -> Callable[[Row], Features]:
    """Decoder for one row holding each table's arrays, in selection order."""
    names = selection.tables
    decoders = [TableDecoder(parts, fs) for (_, fs), parts in zip(selection.items, parts_per_table)]
    if all(d.simple for d in decoders):
        # The common case (e.g. all-real tables), inlined: no call per table.
        layout = [(name, d.names) for name, d in zip(names, decoders)]

        def decode_simple(row: Row) -> Features:
            return {name: None if v is None else dict(zip(fnames, v)) for (name, fnames), v in zip(layout, row)}

        return decode_simple
    if all(len(p) == 1 for p in parts_per_table):
        from_array = [d.from_array for d in decoders]

        def decode_row(row: Row) -> Features:
            return {name: dec(values) for name, dec, values in zip(names, from_array, row)}

        return decode_row

    spans = []
    pos = 0
    for parts in parts_per_table:
        spans.append((pos, pos + len(parts)))
        pos += len(parts)

    def decode_row_parts(row: Row) -> Features:
        return {name: dec.from_parts(row[a:b]) for name, dec, (a, b) in zip(names, decoders, spans)}

    return decode_row_parts


def _compile_single(selection: Selection) -> Reader:
    cols, parts_per_table = _subqueries(selection, sql.SQL("$1::bytea"))
    query = sql.SQL("SELECT {}").format(sql.SQL(", ").join(cols))
    return Reader(Strategy.SINGLE, selection, (query.as_bytes(None),), Fetch.ONE, _row_decoder(selection, parts_per_table))


def _compile_union(selection: Selection) -> Reader:
    # Every branch must return the same column types: floating-point parts share one
    # array type (real[] when all are real, else float8[]); bigint parts ride in a second
    # int8[] column, present only when some table needs it.
    parts_per_table = [transport(fs) for _, fs in selection.items]
    float_types = {p.array_type for parts in parts_per_table for p in parts if p.array_type != "int8[]"}
    common = "float4[]" if float_types <= {"float4[]"} else "float8[]"
    has_int8 = any(p.array_type == "int8[]" for parts in parts_per_table for p in parts)
    parts_per_table = [
        tuple(p if p.array_type == "int8[]" else Part(common, p.features) for p in parts) for parts in parts_per_table
    ]
    branches = []
    spans = []
    number = 0
    for (table, _), parts in zip(selection.items, parts_per_table):
        spans.append((number, number + len(parts)))
        for part in parts:
            cols = [sql.SQL("{}::int2").format(sql.Literal(number))]
            if part.array_type == "int8[]":
                cols += [sql.SQL("NULL::{}").format(sql.SQL(common)), part.array_sql()]
            else:
                cols.append(part.array_sql())
                if has_int8:
                    cols.append(sql.SQL("NULL::int8[]"))
            branches.append(
                sql.SQL("SELECT {} FROM {} WHERE {} = $1::bytea").format(
                    sql.SQL(", ").join(cols), sql.Identifier(selection.schema, table.name), _KEY
                )
            )
            number += 1
    query = sql.SQL(" UNION ALL ").join(branches)
    decoders = [TableDecoder(parts, fs) for (_, fs), parts in zip(selection.items, parts_per_table)]
    layout = list(zip(selection.tables, decoders, spans))
    n_parts = number

    def decode(rows: Sequence[Row]) -> Features:
        arrays: list[Any] = [None] * n_parts
        for row in rows:
            arrays[row[0]] = row[1] if row[1] is not None else row[-1]
        return {
            name: dec.from_array(arrays[a]) if b - a == 1 else dec.from_parts(arrays[a:b])
            for name, dec, (a, b) in layout
        }

    return Reader(Strategy.UNION, selection, (query.as_bytes(None),), Fetch.ALL, decode)


def _compile_join(selection: Selection) -> Reader:
    cols: list[sql.Composable] = []
    joins: list[sql.Composable] = []
    spans = []
    for i, (table, features) in enumerate(selection.items):
        alias = f"t{i}"
        start = len(cols)
        cols.append(sql.SQL("{} IS NOT NULL").format(sql.Identifier(alias, KEY_COLUMN)))
        for f in features:
            cols.append(sql.Identifier(alias, f.name))
        spans.append((start, len(cols)))
        joins.append(
            sql.SQL("LEFT JOIN {} {} ON {} = k.k").format(
                sql.Identifier(selection.schema, table.name), sql.Identifier(alias), sql.Identifier(alias, KEY_COLUMN)
            )
        )
    query = sql.SQL("SELECT {} FROM (SELECT $1::bytea AS k) k {}").format(sql.SQL(", ").join(cols), sql.SQL(" ").join(joins))
    layout = [(t.name, tuple(f.name for f in fs), a, b) for (t, fs), (a, b) in zip(selection.items, spans)]

    def decode(row: Row) -> Features:
        return {name: dict(zip(fnames, row[a + 1 : b])) if row[a] else None for name, fnames, a, b in layout}

    return Reader(Strategy.JOIN, selection, (query.as_bytes(None),), Fetch.ONE, decode)


def _compile_per_table(selection: Selection, strategy: Strategy) -> Reader:
    statements = []
    for table, features in selection.items:
        query = sql.SQL("SELECT {} FROM {} WHERE {} = $1::bytea").format(
            sql.SQL(", ").join(sql.Identifier(f.name) for f in features),
            sql.Identifier(selection.schema, table.name),
            _KEY,
        )
        statements.append(query.as_bytes(None))
    layout = [(t.name, tuple(f.name for f in fs)) for t, fs in selection.items]

    def decode(rows: Sequence[Row | None]) -> Features:
        return {name: dict(zip(fnames, row)) if row is not None else None for (name, fnames), row in zip(layout, rows)}

    fetch = Fetch.PIPELINE if strategy is Strategy.PIPELINE else Fetch.SEQUENTIAL
    return Reader(strategy, selection, tuple(statements), fetch, decode)


def compile_reader(selection: Selection, strategy: Strategy | str = DEFAULT_STRATEGY) -> Reader:
    strategy = Strategy.parse(strategy)
    if strategy is Strategy.SINGLE:
        return _compile_single(selection)
    if strategy is Strategy.UNION:
        return _compile_union(selection)
    if strategy is Strategy.JOIN:
        return _compile_join(selection)
    return _compile_per_table(selection, strategy)


def compile_batch_reader(selection: Selection) -> BatchReader:
    """Many keys, one statement: per-table scalar subqueries over ``unnest($1::bytea[]) WITH ORDINALITY``.

    One row per input key, in input order; duplicates repeat, misses decode to None per table.
    """
    key = sql.SQL("k.h")
    cols, parts_per_table = _subqueries(selection, key)
    query = sql.SQL("SELECT {} FROM unnest($1::bytea[]) WITH ORDINALITY AS k(h, i) ORDER BY k.i").format(
        sql.SQL(", ").join(cols)
    )
    decode_row = _row_decoder(selection, parts_per_table)

    def decode(rows: Sequence[Row]) -> list[Features]:
        return [decode_row(row) for row in rows]

    return BatchReader(selection, query.as_bytes(None), decode)


# -- cache ----------------------------------------------------------------------------------------


def request_shape(tables: Iterable[str] | None, features: FeaturesArg) -> Any:
    """A hashable key for a (tables, features) request, as the caller wrote it."""
    t = tables if tables is None or isinstance(tables, (str, tuple)) else tuple(tables)
    if features is None or isinstance(features, (str, tuple)):
        f: Any = features
    elif isinstance(features, Mapping):
        f = tuple((k, v if isinstance(v, (str, tuple)) else tuple(v)) for k, v in features.items())
    else:
        f = tuple(features)
    return t, f


class ReaderCache:
    """A bounded LRU of compiled readers, keyed by request shape and strategy. Thread-safe.

    Bounded because every statement of a cached reader is also a prepared statement on each
    pooled connection: the bound counts statements (a pipeline or sequential reader carries one
    per table), and the stores keep psycopg's ``prepared_max`` above it, so a cached reader's
    statements stay prepared. A reader evicted here is simply compiled again when asked for.
    """

    def __init__(self, registry: Registry, max_statements: int = 100):
        self.registry = registry
        self.max_statements = max_statements
        self._readers: OrderedDict[Any, Reader | BatchReader] = OrderedDict()
        self._statements = 0
        self._lock = threading.Lock()

    def reader(self, tables: Iterable[str] | None, features: FeaturesArg, strategy: Strategy | str) -> Reader:
        return self._get(  # type: ignore[return-value]
            (request_shape(tables, features), strategy),
            lambda: compile_reader(select(self.registry, tables, features), strategy),
        )

    def batch_reader(self, tables: Iterable[str] | None, features: FeaturesArg) -> BatchReader:
        return self._get(  # type: ignore[return-value]
            (request_shape(tables, features), "batch"),
            lambda: compile_batch_reader(select(self.registry, tables, features)),
        )

    def _get(self, key: Any, build: Callable[[], Reader | BatchReader]) -> Reader | BatchReader:
        try:
            with self._lock:
                found = self._readers.get(key)
                if found is not None:
                    self._readers.move_to_end(key)
                    return found
        except TypeError:  # an unhashable argument: compile without caching
            return build()
        reader = build()  # outside the lock: compiling is pure, a race only compiles twice
        with self._lock:
            if key not in self._readers:
                self._readers[key] = reader
                self._statements += _n_statements(reader)
                while self._statements > self.max_statements and len(self._readers) > 1:
                    _, evicted = self._readers.popitem(last=False)
                    self._statements -= _n_statements(evicted)
        return reader

    def __len__(self) -> int:
        return len(self._readers)

    @property
    def statements(self) -> int:
        """Statements of the readers cached now."""
        return self._statements


def _n_statements(reader: Reader | BatchReader) -> int:
    return 1 if isinstance(reader, BatchReader) else len(reader.statements)
