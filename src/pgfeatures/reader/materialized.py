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
from typing import Any

from psycopg import sql

from ..definitions import EVENT_TIME, from_micros
from ..definitions.layout import TS, EntityLayout
from ..materialize.sql import guarded
from ..schema import event_time_micros_sql
from .compile import BatchReader, Fetch, Reader, Strategy, _binder
from .decode import EXPIRED, MISSING, PRESENT, FeatureResult, Row, result
from .selection import Selection

_NOW = event_time_micros_sql(sql.SQL("now()"))  # the statement's clock, in the unit of ts: epoch microseconds
MICROS = 1_000_000


def _plan(
    selection: Selection, layouts: Sequence[EntityLayout]
) -> tuple[list[sql.Composable], list[sql.Composable], sql.Composable, Callable[[Row], FeatureResult]]:
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
        fields = []
        for f in features:
            slot = slots[f.name]
            conv: Callable[[Any], Any] | None = (
                bool
                if f.type.python is bool
                else int
                if (f.type.python is int and slot.group == "d")
                else from_micros
                if f.type is EVENT_TIME
                else None
            )
            fields.append((f.name, where[slot.group], slot.index, conv, f.default))
        absent = (
            {name: default for name, _, _, _, default in fields}
            if any(f.default is not None for f in features)
            else None
        )
        ttl_micros = None if ttl is None else ttl * MICROS
        tables.append((table.name, where[TS], layout.ts_index(table.name), ttl_micros, tuple(fields), absent))

    def decode(row: Row) -> FeatureResult:
        now = row[0]
        values: dict[str, Any] = {}
        status: dict[str, str] = {}
        for name, ts_col, j, ttl, fields, absent in tables:
            stamps = row[ts_col]
            stamp = stamps[j] if stamps is not None else None
            if stamp is None or (ttl is not None and stamp < now - ttl):
                status[name] = MISSING if stamp is None else EXPIRED
                values[name] = dict(absent) if absent is not None else None
                continue
            status[name] = PRESENT
            out = {}
            for fname, col, index, conv, default in fields:
                v = row[col][index]
                if v is None:
                    v = default
                elif conv is not None:
                    v = conv(v)
                out[fname] = v
            values[name] = out
        return result(values, status)

    return cols, joins, guard, decode


def compile_materialized_reader(selection: Selection, layouts: Sequence[EntityLayout]) -> Reader[FeatureResult]:
    """The single-request reader of a materialized service (or a subset of its features)."""
    cols, joins, where, decode = _plan(selection, layouts)
    keys = sql.SQL(", ").join(
        sql.SQL(f"${i + 1}::{e.cast} AS {{}}").format(sql.Identifier(f"e{i}")) for i, e in enumerate(selection.entities)
    )
    query = sql.SQL("SELECT {} FROM (SELECT {}) k {} WHERE {}").format(
        sql.SQL(", ").join(cols), keys, sql.SQL(" ").join(joins), where
    )
    return Reader(
        Strategy.SINGLE, selection, (query.as_bytes(None),), Fetch.ONE, decode, _binder(selection), materialized=True
    )


def compile_materialized_batch_reader(
    selection: Selection, layouts: Sequence[EntityLayout]
) -> BatchReader[FeatureResult]:
    """The many-keys reader of a materialized service: rows in input order."""
    cols, joins, where, decode_row = _plan(selection, layouts)
    entities = selection.entities
    arrays = sql.SQL(", ").join(sql.SQL(f"${i + 1}::{e.cast}[]") for i, e in enumerate(entities))
    names = sql.SQL(", ").join(sql.Identifier(f"e{i}") for i in range(len(entities)))
    query = sql.SQL("SELECT {} FROM unnest({}) WITH ORDINALITY AS k({}, i) {} WHERE {} ORDER BY k.i").format(
        sql.SQL(", ").join(cols), arrays, names, sql.SQL(" ").join(joins), where
    )

    def decode(rows: Sequence[Row]) -> list[FeatureResult]:
        return [decode_row(row) for row in rows]

    return BatchReader(selection, query.as_bytes(None), decode, _binder(selection), materialized=True)
