"""Reading a materialized service from its serving rows: one primary-key lookup per entity (pure).

::

    SELECT (extract(epoch FROM now()) * 1000000)::int8, s0.r, s0.ts, s1.r, s1.d, s1.ts
    FROM (SELECT $1::int8 AS e0, $2::bytea AS e1) k
    LEFT JOIN "s"."_pgf_svc_fraud_v1__user_3f9a..." s0 ON s0.user_id = k.e0
    LEFT JOIN "s"."_pgf_svc_fraud_v1__merchant_b21c..." s1 ON s1.merchant_key = k.e1
    WHERE NOT EXISTS (SELECT FROM "s"."_pgf_guard_3f9a...") AND NOT EXISTS (SELECT FROM "s"."_pgf_guard_b21c...")

A reader is compiled for the layouts it was given and reads the tables named by their fingerprints
and nothing else; the guards (empty views over the columns the layout reads, see
materialize/sql.py) make the statement fail once a table or column it reads was dropped. Either
way the statement fails instead of decoding rows it was not compiled for, and the store reads
the service table by table instead (``Reader.fallback``).

The decoder gives exactly what the flexible read gives for the same service (or subset of it):
per table, ``ts`` NULL means missing, a ``ts`` (epoch microseconds) older than the ttl by the
statement's own ``now()`` means expired (the server's clock, same statement), else present; NULL values take their
feature's default, and a table that is not present maps to its defaults or None.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any, NamedTuple, TypeVar

from psycopg import sql

from ..definitions import EVENT_TIME, Feature, from_micros
from ..definitions.layout import COLUMNS, TS, EntityLayout
from ..materialize.sql import guarded
from ..schema import event_time_micros_sql
from .compile import BatchReader, Fetch, Reader, Strategy, _binder
from .decode import EXPIRED, MISSING, PRESENT, FeatureResult, Row, result
from .records import parse_slow
from .selection import Selection
from .transport import embedding_loader

T = TypeVar("T")

_NOW = event_time_micros_sql(sql.SQL("now()"))  # the statement's clock, in the unit of ts: epoch microseconds
MICROS = 1_000_000


def _plan(
    selection: Selection, layouts: Sequence[EntityLayout]
) -> tuple[list[sql.Composable], list[sql.Composable], sql.Composable, _Plan]:
    by_entity = {layout.entity.name: layout for layout in layouts}
    cols: list[sql.Composable] = [_NOW]
    joins: list[sql.Composable] = []
    guards: list[sql.Composable] = []
    offsets: dict[str, dict[str, int]] = {}  # entity -> {array: column}
    for i, entity in enumerate(selection.entities):
        layout = by_entity[entity.name]
        alias = f"s{i}"
        offsets[entity.name] = {}
        for array in (*layout.groups, TS):
            offsets[entity.name][array] = len(cols)
            if array == COLUMNS:  # the lists' and embeddings' own columns, as one row value (NULL: no serving row)
                own = [sql.Identifier(alias, c) for c, _ in layout.columns() if c.startswith(COLUMNS)]
                cols.append(
                    sql.SQL("CASE WHEN {} IS NOT NULL THEN ROW({}) END").format(
                        sql.Identifier(alias, TS), sql.SQL(", ").join(own)
                    )
                )
            else:
                cols.append(sql.Identifier(alias, array))
        joins.append(
            sql.SQL("LEFT JOIN {} {} ON {} = k.{}").format(
                sql.Identifier(selection.schema, layout.table_name),
                sql.Identifier(alias),
                sql.Identifier(alias, entity.column),
                sql.Identifier(f"e{i}"),
            )
        )
        guards.append(guarded(selection.schema, layout))
    guard = sql.SQL(" AND ").join(guards)
    tables = []
    for (table, features), ttl in zip(selection.items, selection.ttls):
        layout = by_entity[table.entity.name]
        slots = {s.feature.name: s for s in layout.table_slots(table.name)}
        where = offsets[table.entity.name]
        fields = tuple(
            _Field(
                f.name, where[slots[f.name].group], slots[f.name].index, _converter(f, slots[f.name].group), f.default
            )
            for f in features
        )
        ttl_micros = None if ttl is None else ttl * MICROS
        tables.append(_Table(table.name, where[TS], layout.ts_index(table.name), ttl_micros, fields))
    records = tuple(where[COLUMNS] for where in offsets.values() if COLUMNS in where)
    plan = _Plan(tuple(tables), records)
    return cols, joins, guard, plan


class _Field(NamedTuple):
    name: str
    column: int  # the row's column holding the feature's array (its entity's group)
    slot: int  # its slot in that array
    conv: Callable[[Any], Any] | None  # the value as its feature's Python type, when the array's is not
    default: Any


class _Table(NamedTuple):
    name: str
    ts_column: int  # the row's column of its entity's ts array
    ts_index: int  # the table's slot in it
    ttl: int | None  # microseconds, the unit of ts and of the row's now
    fields: tuple[_Field, ...]


def _converter(feature: Feature, group: str) -> Callable[[Any], Any] | None:
    if feature.type.kind == "embedding":  # stored as real[] in the serving row: an array("f"), as everywhere
        return embedding_loader(feature)
    if feature.type.python is bool:
        return bool
    if feature.type.python is int and group == "d":
        return int
    if feature.type is EVENT_TIME:
        return from_micros
    return None


class _Plan:
    """The decoders of one materialized read, compiled once: the dict decoder, and a vector decoder per
    order asked (``vector``). Every table's status is decided from its ts and ttl alone, as the flexible
    read decides it (see the module docstring).

    The common answer (every table present) is decided per group of tables sharing an entity and a ttl,
    with one pick of their stamps and one C-level test (``None in stamps``, ``min(stamps)``); only a row
    where some table is missing or expired walks the tables one by one."""

    def __init__(self, tables: tuple[_Table, ...], records: tuple[int, ...] = ()):
        self.tables = tables
        self.records = records  # the row's columns holding lists and embeddings as one row value each
        groups: dict[tuple[int, int | None], list[int]] = {}  # (ts column, ttl) -> the tables' ts slots
        for t in tables:
            groups.setdefault((t.ts_column, t.ttl), []).append(t.ts_index)
        self.checks = tuple((column, _picker(slots), ttl) for (column, ttl), slots in groups.items())
        self.single = self.checks[0] if len(self.checks) == 1 else None
        self.all_present = {t.name: PRESENT for t in tables}
        self.decode = self._records_parsed(self._dict_decoder())

    def _present(self, row: Row) -> bool:
        """Every table of the read is present for this row (the common case, decided in a few C calls)."""
        now = row[0]
        for column, pick, ttl in self.checks:
            stamps = row[column]
            if stamps is None:
                return False
            got = pick(stamps)
            if None in got or (ttl is not None and min(got) < now - ttl):
                return False
        return True

    def _status(self, row: Row) -> list[str]:
        """Each table's status, in the read's order (the rows where some table is not present)."""
        now = row[0]
        if self.single is not None:  # one entity, one ttl: the stamps in one pick, in the tables' order
            column, pick, ttl = self.single
            stamps = row[column]
            if stamps is None:
                return [MISSING] * len(self.tables)
            got = pick(stamps)
            if ttl is None:
                return [MISSING if stamp is None else PRESENT for stamp in got]
            cutoff = now - ttl
            return [MISSING if stamp is None else EXPIRED if stamp < cutoff else PRESENT for stamp in got]
        out = []
        for t in self.tables:
            stamps = row[t.ts_column]
            stamp = stamps[t.ts_index] if stamps is not None else None
            if stamp is None:
                out.append(MISSING)
            elif t.ttl is not None and stamp < now - t.ttl:
                out.append(EXPIRED)
            else:
                out.append(PRESENT)
        return out

    def _dict_decoder(self) -> Callable[[Row], FeatureResult]:
        makers = tuple((t.name, _values_of(t), _absent_of(t)) for t in self.tables)
        present_everywhere = self._present
        all_present = self.all_present
        one_by_one = self._status
        plain = self._plain_dict_decoder()
        if plain is not None:
            return plain

        def decode(row: Row) -> FeatureResult:
            if present_everywhere(row):
                return result({name: make(row) for name, make, _ in makers}, dict(all_present))
            values: dict[str, Any] = {}
            status: dict[str, str] = {}
            for state, (name, make, absent) in zip(one_by_one(row), makers):
                status[name] = state
                values[name] = make(row) if state is PRESENT else (dict(absent) if absent is not None else None)
            return result(values, status)

        return decode

    def _plain_dict_decoder(self) -> Callable[[Row], FeatureResult] | None:
        """The decoder of the usual serving read: one entity, no ttl, every table's values a slice of one
        array needing no conversion and no default (the demo's, an embedding's). Like the flexible read's
        simplest decoder: one comprehension over the tables, the status from the stamps' None-ness."""
        single = self.single
        if single is None or single[2] is not None:
            return None
        spans = []
        for t in self.tables:
            fields = t.fields
            column, first = fields[0].column, fields[0].slot
            if not all(
                f.column == column and f.slot == first + i and f.conv is None and f.default is None
                for i, f in enumerate(fields)
            ):
                return None
            spans.append((t.name, tuple(f.name for f in fields), column, first, first + len(fields)))
        if len({column for _, _, column, _, _ in spans}) != 1:
            return None
        column = spans[0][2]
        layout = tuple((name, names, a, b) for name, names, _, a, b in spans)
        table_names = tuple(t.name for t in self.tables)
        ts_column, pick, _ = single
        all_present = self.all_present
        all_missing = {t.name: MISSING for t in self.tables}
        nothing = dict.fromkeys(table_names)

        def decode(row: Row) -> FeatureResult:
            stamps = row[ts_column]
            if stamps is None:  # the key has no serving row
                return result(dict(nothing), dict(all_missing))
            got = pick(stamps)
            array = row[column]
            values = {
                name: None if s is None else dict(zip(names, array[a:b])) for (name, names, a, b), s in zip(layout, got)
            }
            status = dict(all_present)
            if None in got:
                for i, stamp in enumerate(got):
                    if stamp is None:
                        status[table_names[i]] = MISSING
            return result(values, status)

        return decode

    def _records_parsed(self, decode: Callable[[Row], T]) -> Callable[[Row], T]:
        """``decode``, given the row with its row values parsed (the read cursors hand them over as bytes:
        records.py); these hold lists and embeddings, which psycopg's record loader parses."""
        records = self.records
        if not records:
            return decode

        def parsed(row: Row) -> T:
            if any(type(row[c]) is bytes for c in records):
                fields = list(row)
                for c in records:
                    if type(fields[c]) is bytes:
                        fields[c] = parse_slow(fields[c])
                row = tuple(fields)
            return decode(row)

        return parsed

    def vector(self, names: Sequence[str]) -> Callable[[Row], tuple[list[Any], dict[str, str]]]:
        """``_vector``'s decoder, given parsed row values."""
        return self._records_parsed(self._vector(names))

    def _vector(self, names: Sequence[str]) -> Callable[[Row], tuple[list[Any], dict[str, str]]]:
        """A decoder of the row into ``(values in the order of names, status per table)``: ``names`` are
        ``table.feature`` of this read, each once. The values are picked from the serving row's arrays by
        precomputed slots (one C call per array); a table that is not present sets its positions to their
        defaults (or None), a present one converts and defaults only the positions that need it."""
        position = {name: i for i, name in enumerate(names)}
        picks: dict[int, list[tuple[int, int]]] = {}  # array column -> [(slot, vector position)]
        per_table = []  # (name, positions and defaults if absent, conversions and defaults if present)
        for t in self.tables:
            mine = [(position[f"{t.name}.{f.name}"], f) for f in t.fields if f"{t.name}.{f.name}" in position]
            for pos, f in mine:
                picks.setdefault(f.column, []).append((f.slot, pos))
            absent = tuple((pos, f.default) for pos, f in mine)
            convert = tuple((pos, f.conv) for pos, f in mine if f.conv is not None)
            defaults = tuple((pos, f.default) for pos, f in mine if f.default is not None)
            per_table.append((t.name, absent, convert, defaults))
        every_convert = tuple(c for _, _, convert, _ in per_table for c in convert)
        every_default = tuple(d for _, _, _, defaults in per_table for d in defaults)
        size = len(names)
        groups = []
        for column, pairs in picks.items():
            slots = tuple(s for s, _ in pairs)
            spots = tuple(p for _, p in pairs)
            groups.append((column, _picker(slots), spots, slots == tuple(range(size))))
        whole = None  # the vector is one array's slots, in the vector's order: no scatter
        if len(groups) == 1 and groups[0][2] == tuple(range(size)):
            whole = groups[0]
        present_everywhere = self._present
        all_present = self.all_present
        one_by_one = self._status
        single = self.single
        if whole is not None and single is not None and not every_convert and not every_default:
            # The usual serving read (one entity, one ttl, one array, no conversion, no default): the values
            # one slice, every table present in a few C calls, else only the tables not present cleared.
            column, getter, _, prefix = whole
            ts_column, pick, ttl = single
            all_missing = {t.name: MISSING for t in self.tables}
            clear = []  # per table: its name, and its positions as a slice when consecutive, else one by one
            for name, absent, _, _ in per_table:
                positions = sorted(pos for pos, _ in absent)
                consecutive = positions == list(range(positions[0], positions[-1] + 1))
                clear.append((name, slice(positions[0], positions[-1] + 1) if consecutive else None, positions))

            def decode_plain(row: Row) -> tuple[list[Any], dict[str, str]]:
                array = row[column]
                if array is None:  # the key has no serving row
                    return [None] * size, dict(all_missing)
                values = array[:size] if prefix else list(getter(array))
                got = pick(row[ts_column])
                if None not in got and (ttl is None or min(got) >= row[0] - ttl):
                    return values, dict(all_present)
                status = dict(all_present)
                cutoff = None if ttl is None else row[0] - ttl
                for (name, span, positions), stamp in zip(clear, got):
                    if stamp is None or (cutoff is not None and stamp < cutoff):
                        status[name] = MISSING if stamp is None else EXPIRED
                        if span is not None:
                            values[span] = [None] * len(positions)
                        else:
                            for pos in positions:
                                values[pos] = None
                return values, status

            return decode_plain

        def decode(row: Row) -> tuple[list[Any], dict[str, str]]:
            if whole is not None:
                column, getter, _, prefix = whole
                array = row[column]
                if array is None:
                    values = [None] * size
                else:  # the serving row's first slots (the whole service, in its order): one slice
                    values = array[:size] if prefix else list(getter(array))
            else:
                values = [None] * size
                for column, getter, spots, _ in groups:
                    array = row[column]
                    if array is not None:
                        for spot, v in zip(spots, getter(array)):
                            values[spot] = v
            if present_everywhere(row):
                status = dict(all_present)
                convert, defaults = every_convert, every_default
            else:
                status = {}
                convert, defaults = (), ()
                for state, (name, absent, table_convert, table_defaults) in zip(one_by_one(row), per_table):
                    status[name] = state
                    if state is PRESENT:
                        convert += table_convert
                        defaults += table_defaults
                    else:
                        for pos, default in absent:
                            values[pos] = default
            for pos, conv in convert:
                v = values[pos]
                if v is not None:
                    values[pos] = conv(v)
            for pos, default in defaults:
                if values[pos] is None:
                    values[pos] = default
            return values, status

        return decode


def _values_of(t: _Table) -> Callable[[Row], dict[str, Any]]:
    """A present table's values from the row: one slice when its features are consecutive slots of one
    array needing no conversion and no default, else feature by feature."""
    fields = t.fields
    names = tuple(f.name for f in fields)
    column, first = fields[0].column, fields[0].slot
    if all(
        f.column == column and f.slot == first + i and f.conv is None and f.default is None
        for i, f in enumerate(fields)
    ):
        last = first + len(fields)

        def sliced(row: Row) -> dict[str, Any]:
            return dict(zip(names, row[column][first:last]))

        return sliced
    plan = tuple((f.name, f.column, f.slot, f.conv, f.default) for f in fields)

    def one_by_one(row: Row) -> dict[str, Any]:
        out = {}
        for name, col, slot, conv, default in plan:
            v = row[col][slot]
            if v is None:
                v = default
            elif conv is not None:
                v = conv(v)
            out[name] = v
        return out

    return one_by_one


def _absent_of(t: _Table) -> dict[str, Any] | None:
    """A missing or expired table's value: its defaults (None for features without one), or None."""
    return {f.name: f.default for f in t.fields} if any(f.default is not None for f in t.fields) else None


def _picker(slots: Sequence[int]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """``itemgetter`` of the slots, always returning a tuple (``itemgetter`` of one slot returns the item)."""
    return itemgetter(*slots) if len(slots) > 1 else _one(slots[0])


def _one(slot: int) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """``itemgetter`` of one slot, returning a 1-tuple as ``itemgetter`` of several does."""

    def pick(array: Sequence[Any]) -> tuple[Any, ...]:
        return (array[slot],)

    return pick


def compile_materialized_reader(selection: Selection, layouts: Sequence[EntityLayout]) -> Reader[FeatureResult]:
    """The single-request reader of a materialized service (or a subset of its features)."""
    cols, joins, where, plan = _plan(selection, layouts)
    keys = sql.SQL(", ").join(
        sql.SQL(f"${i + 1}::{e.cast} AS {{}}").format(sql.Identifier(f"e{i}")) for i, e in enumerate(selection.entities)
    )
    query = sql.SQL("SELECT {} FROM (SELECT {}) k {} WHERE {}").format(
        sql.SQL(", ").join(cols), keys, sql.SQL(" ").join(joins), where
    )
    return Reader(
        Strategy.SINGLE,
        selection,
        (query.as_bytes(None),),
        Fetch.ONE,
        plan.decode,
        _binder(selection),
        materialized=True,
        vector_rows=plan.vector,
    )


def compile_materialized_batch_reader(
    selection: Selection, layouts: Sequence[EntityLayout]
) -> BatchReader[FeatureResult]:
    """The many-keys reader of a materialized service: rows in input order."""
    cols, joins, where, plan = _plan(selection, layouts)
    decode_row = plan.decode
    entities = selection.entities
    arrays = sql.SQL(", ").join(sql.SQL(f"${i + 1}::{e.cast}[]") for i, e in enumerate(entities))
    names = sql.SQL(", ").join(sql.Identifier(f"e{i}") for i in range(len(entities)))
    query = sql.SQL("SELECT {} FROM unnest({}) WITH ORDINALITY AS k({}, i) {} WHERE {} ORDER BY k.i").format(
        sql.SQL(", ").join(cols), arrays, names, sql.SQL(" ").join(joins), where
    )

    def decode(rows: Sequence[Row]) -> list[FeatureResult]:
        return [decode_row(row) for row in rows]

    return BatchReader(
        selection, query.as_bytes(None), decode, _binder(selection), materialized=True, vector_rows=plan.vector
    )
