"""The doctor's facts about materialized services: is each built, are its triggers in place, and do
its serving rows say what the feature tables say?

Serving rows are kept in step by triggers in the writing statement's own transaction (see
``materialize/sql.py``), so they can only drift when something goes around the triggers: a
trigger disabled (``ALTER TABLE ... DISABLE TRIGGER``), a session with
``session_replication_role = replica`` (logical replication, some restore tools), or a direct write
to a serving table. The doctor therefore compares, for every service whose serving rows exist for
its definition (even with its triggers disabled: that is when they drift), a random sample of keys
(``sample``; half drawn from the serving rows, half from the feature tables, so that rows missing on
either side are found) read twice: from the serving rows (a reader compiled for them, run through
the store), and table by table by the same service with ``materialize`` off
(``dataclasses.replace``, under another name, in a copy of the registry). Keys that differ are read
once more before they count, so a write landing between the two reads is not mistaken for drift.

A sample finds drift that touches many keys, and the triggers' state is checked in full; but a
single changed key among many is found only with probability sample / rows, and a serving row whose
``updated_at`` was changed within the TTL reads the same (same values, same status) and is not
seen at all. ``full=True`` (``pgfeatures doctor --full``) compares every serving row with the tables
instead: one set-based statement per serving table (``full_comparison_sql``: the tables joined on
the union of their keys, full-joined with the serving rows, each table's slice and ``ts`` entry
compared as stored), naming the differing keys and the tables they differ in. It reads every row
of every table of the service once.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ..definitions import Registry
from ..definitions.layout import EntityLayout
from ..definitions.names import derived
from ..materialize import sql as m
from ..materialize.build import serving_catalog
from ..materialize.state import BUILT, MISSING, service_state
from ..reader.materialized import compile_materialized_batch_reader
from ..reader.selection import select_service
from ..store import FeatureStore
from ..warmup import random_keys

DEFAULT_SAMPLE = 200  # keys compared per entity of every built service
EXAMPLES = 3
TWIN_SUFFIX = "__doctor_flex"
SCAN_BELOW = 20_000  # rows: a smaller relation is sampled exactly (ORDER BY random()), a larger one with TABLESAMPLE

_TRIGGERS = b"""
SELECT c.relname::text, t.tgname::text, t.tgenabled::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND t.tgname = ANY($2::text[]) AND NOT t.tgisinternal
"""


@dataclass(frozen=True)
class Difference:
    """One key whose serving row disagrees with the tables, for one table of the service."""

    entity: str
    key: str  # as people write it (hex for 32-byte keys)
    table: str
    served: Any
    served_status: str
    fresh: Any
    fresh_status: str

    def describe(self) -> str:
        return (
            f"{self.entity}={self.key}: table {self.table}: serving rows say {self.served!r} ({self.served_status}), "
            f"the tables say {self.fresh!r} ({self.fresh_status})"
        )


@dataclass(frozen=True)
class RowDifference:
    """One key whose serving row differs from the tables as stored (the full comparison): the
    tables whose slice (values or updated_at) differs; ``unserved``: the key has no serving row."""

    entity: str
    key: str
    tables: tuple[str, ...]
    unserved: bool = False

    def describe(self) -> str:
        what = "no serving row, the tables have it" if self.unserved else "the serving row differs from the tables"
        return f"{self.entity}={self.key}: {what} ({', '.join(self.tables)})"


@dataclass(frozen=True)
class ServiceFacts:
    """One materialized service as found: ``state`` (built, stale, missing), and for a built one the
    comparison of ``sampled`` keys (``differing`` of them disagree, ``examples``), the maintenance
    triggers that are disabled or missing, or why it could not be compared (``error``).

    ``full``: every serving row was compared (``sampled`` is then every key, ``per_table`` the
    differing keys per table); else a sample of about ``rows`` serving rows."""

    service: str
    state: str
    sampled: int = 0
    differing: int = 0
    examples: tuple[Difference | RowDifference, ...] = ()
    disabled_triggers: tuple[str, ...] = ()  # "table.trigger"
    missing_triggers: tuple[str, ...] = ()
    error: str | None = None
    full: bool = False
    rows: int = 0  # serving rows (an estimate, for a sample: what share of them it saw)
    per_table: Mapping[str, int] = dataclasses.field(default_factory=dict)


def _unhashed(registry: Registry) -> Registry:
    """The registry with every hashed entity taking its stored 32-byte keys as they are (keys sampled
    from the tables are digests already: hashing them again would find nothing)."""
    entities = {name: dataclasses.replace(e, hash=None) if e.hash else e for name, e in registry.entities.items()}
    tables = [dataclasses.replace(t, entity=entities[t.entity.name]) for t in registry.tables.values()]
    return Registry.of(
        tables, registry.schema, registry.source, entities=entities.values(), services=registry.services.values()
    )


def twin_registry(registry: Registry, services: Sequence[str]) -> Registry:
    """A copy of ``registry`` (entities unhashed) with only ``services`` (without their transforms) and, for
    each, the same service not materialized, named ``<service>__doctor_flex``: read table by table."""
    base = _unhashed(registry)
    # Stored features only: the comparison is of serving rows with tables, so no transform runs (and no
    # request context is needed to read them).
    chosen = [dataclasses.replace(base.service(name), context=(), transforms=()) for name in services]
    twins = [dataclasses.replace(svc, name=_twin(svc.name), materialize=False) for svc in chosen]
    return Registry.of(
        base.tables.values(), base.schema, base.source, entities=base.entities.values(), services=[*chosen, *twins]
    )


def _twin(name: str) -> str:
    return derived(name, TWIN_SUFFIX)


def _estimate(conn: psycopg.Connection, schema: str, relation: str) -> float:
    """The planner's row estimate of ``relation`` (-1: never analyzed)."""
    ident = sql.Identifier(schema, relation)
    row = conn.execute(
        sql.SQL("SELECT reltuples::float8 FROM pg_class WHERE oid = {}::regclass").format(
            sql.Literal(ident.as_string(conn))
        ),
        prepare=False,
    ).fetchone()
    return row[0] if row else -1


def _sample(conn: psycopg.Connection, schema: str, relation: str, column: str, n: int) -> list[Any]:
    """Up to ``n`` random keys of ``column`` in ``relation``."""
    ident = sql.Identifier(schema, relation)
    rows = _estimate(conn, schema, relation)
    if rows < SCAN_BELOW:  # small, or never analyzed (-1)
        source: sql.Composable = ident
    else:  # pages at random, about 10x the keys wanted, then keys at random among them
        pct = min(100.0, 100.0 * 10 * n / rows)
        source = sql.SQL("{} TABLESAMPLE SYSTEM ({})").format(ident, sql.Literal(pct))
    query = sql.SQL("SELECT {} FROM {} ORDER BY random() LIMIT {}").format(
        sql.Identifier(column), source, sql.Literal(n)
    )
    return [r[0] for r in conn.execute(query, prepare=False).fetchall()]


def _keys(conn: psycopg.Connection, registry: Registry, layout: EntityLayout, n: int) -> list[Any]:
    """Keys of ``layout``'s entity: half from its serving rows, half from the feature tables it reads."""
    schema, column = registry.schema, layout.entity.column
    keys = _sample(conn, schema, layout.table_name, column, max(1, n // 2))
    per_table = max(1, (n - len(keys)) // max(1, len(layout.tables)))
    for table in layout.tables:
        keys += _sample(conn, schema, table.name, table.key_column, per_table)
    out = list(dict.fromkeys(bytes(k) if isinstance(k, memoryview) else k for k in keys))
    return out[:n]


def _triggers(
    conn: psycopg.Connection, registry: Registry, layouts: Sequence[EntityLayout]
) -> tuple[list[str], list[str]]:
    """(disabled, missing) maintenance triggers of ``layouts``, as ``table.trigger``."""
    expected = {
        (t.name, f"{m.trigger_name(layout, t)}_{event.lower()}")
        for layout in layouts
        for t in layout.tables
        for event in m.EVENTS
    }
    cur = psycopg.RawCursor(conn)
    cur.execute(_TRIGGERS, (registry.schema, sorted({name for _, name in expected})), prepare=False)
    found = {(table, name): enabled for table, name, enabled in cur.fetchall()}
    disabled = sorted(f"{t}.{n}" for (t, n), e in found.items() if (t, n) in expected and e == "D")
    missing = sorted(f"{t}.{n}" for t, n in expected if (t, n) not in found)
    return disabled, missing


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _shown(key: Any) -> str:
    return key.hex() if isinstance(key, (bytes, bytearray)) else str(key)


def _differences(
    registry: Registry, service: str, requests: Sequence[Mapping[str, Any]], served: Sequence[Any], fresh: Sequence[Any]
) -> dict[tuple[str, Any], Difference]:
    """{(entity, key): the first table where it differs}."""
    entity_of = {t.name: t.entity.name for t in registry.tables.values()}
    out: dict[tuple[str, Any], Difference] = {}
    for request, s, f in zip(requests, served, fresh):
        for table in s:
            if _same(s[table], f[table]) and s.status[table] == f.status[table]:
                continue
            entity = entity_of[table]
            out.setdefault(
                (entity, request[entity]),
                Difference(
                    entity, _shown(request[entity]), table, s[table], s.status[table], f[table], f.status[table]
                ),
            )
    return out


def compare_service(
    store: FeatureStore,
    conn: psycopg.Connection,
    registry: Registry,
    service: str,
    sample: int = DEFAULT_SAMPLE,
    rng: random.Random | None = None,
) -> ServiceFacts:
    """Compare a built service's serving rows with the tables on a sample of keys (see the module
    docstring). ``store``: open on ``twin_registry(registry, [service, ...])``."""
    rng = rng or random.Random()
    layouts = registry.layouts(service)
    disabled, missing = _triggers(conn, registry, layouts)
    per_entity = {}
    for layout in layouts:
        keys = _keys(conn, registry, layout, sample)
        if not keys:  # an entity with no rows anywhere: any valid key, found nowhere on either side
            keys = random_keys(registry, layout.tables[0].name, 1, (), rng)
        per_entity[layout.entity.name] = keys
    n = max(len(k) for k in per_entity.values())
    requests = [{e: keys[i % len(keys)] for e, keys in per_entity.items()} for i in range(n)]
    twin = _twin(service)
    # The serving rows as they are, whatever the store would serve (it reads a service whose triggers
    # are disabled table by table: correct for a reader, useless for this comparison).
    served = compile_materialized_batch_reader(select_service(registry, service), layouts)
    found = _differences(
        registry, service, requests, store.read_batch(served, requests), store.get_service_batch(twin, requests)
    )
    if found:  # read those again: a write landing between the two reads is not drift
        again = [r for r in requests if any((e, r[e]) in found for e in r)]
        found = _differences(
            registry, service, again, store.read_batch(served, again), store.get_service_batch(twin, again)
        )
    sampled = sum(len(set(map(_shown, k))) for k in per_entity.values())
    rows = sum(max(0, int(_estimate(conn, registry.schema, layout.table_name))) for layout in layouts)
    return ServiceFacts(
        service,
        "built",
        sampled,
        len(found),
        tuple(list(found.values())[:EXAMPLES]),
        tuple(disabled),
        tuple(missing),
        rows=rows,
    )


def full_comparison_sql(schema: str, layout: EntityLayout, examples: int = EXAMPLES) -> sql.Composed:
    """One statement comparing every serving row of ``layout`` with its tables, as stored: the
    tables' rows (joined on the union of their keys) full-joined with the serving rows, and per
    table its slice of the arrays and its ``ts`` entry compared with the table's row. Returns one
    row per differing key among the first ``examples`` (key, no serving row, differing tables),
    each carrying the totals: keys compared, keys differing, and differing keys per table in the
    layout's table order (one row with a NULL key when none differs)."""
    key = sql.Identifier(layout.entity.column)
    aliases = {t.name: f"t{i}" for i, t in enumerate(layout.tables)}
    keys = sql.SQL(" UNION ").join(
        sql.SQL("SELECT {} AS k FROM {}").format(sql.Identifier(t.key_column), sql.Identifier(schema, t.name))
        for t in layout.tables
    )
    joins = sql.SQL(" ").join(
        sql.SQL("LEFT JOIN {} {} ON {}.{} = k.k").format(
            sql.Identifier(schema, t.name),
            sql.Identifier(aliases[t.name]),
            sql.Identifier(aliases[t.name]),
            sql.Identifier(t.key_column),
        )
        for t in layout.tables
    )
    differs = []
    for t in layout.tables:
        # The table's slice of each array and its ts entry as a build writes them from the table's row
        # (materialize/sql.py's own value expressions: the comparison follows how values are stored),
        # against the serving row's. A key without a serving row differs in the tables that have it.
        alias = aliases[t.name]
        pairs = m.slice_pairs(layout, t, alias)
        stored = [a for a, _ in pairs]
        fresh = [b for _, b in pairs]
        differs.append(
            sql.SQL(
                "CASE WHEN CASE WHEN s.{} IS NULL THEN {}.{} IS NOT NULL ELSE ROW({}) IS DISTINCT FROM "
                "ROW({}) END THEN {} END"
            ).format(
                key,
                sql.Identifier(alias),
                sql.Identifier(t.key_column),
                sql.SQL(", ").join(stored),
                sql.SQL(", ").join(fresh),
                sql.Literal(t.name),
            )
        )
    per_table = sql.SQL(", ").join(
        sql.SQL("count(*) FILTER (WHERE {} = ANY(tables))").format(sql.Literal(t.name)) for t in layout.tables
    )
    return sql.SQL(
        "WITH cmp AS MATERIALIZED (SELECT coalesce(k.k, s.{key}) AS key, s.{key} IS NULL AS unserved, "
        "array_remove(ARRAY[{differs}]::text[], NULL) AS tables "
        "FROM ({keys}) k {joins} FULL JOIN {serving} s ON s.{key} = k.k) "
        "SELECT d.key, d.unserved, d.tables, c.compared, c.differing, c.per_table FROM "
        "(SELECT count(*) AS compared, count(*) FILTER (WHERE cardinality(tables) > 0) AS differing, "
        "ARRAY[{per_table}] AS per_table FROM cmp) c "
        "LEFT JOIN LATERAL (SELECT key, unserved, tables FROM cmp WHERE cardinality(tables) > 0 "
        "ORDER BY key LIMIT {examples}) d ON true"
    ).format(
        key=key,
        differs=sql.SQL(", ").join(differs),
        keys=keys,
        joins=joins,
        serving=sql.Identifier(schema, layout.table_name),
        per_table=per_table,
        examples=sql.Literal(examples),
    )


def compare_service_full(conn: psycopg.Connection, registry: Registry, service: str) -> ServiceFacts:
    """Compare every serving row of a built service with its tables (``full_comparison_sql``, one
    statement per serving table), and check its triggers."""
    layouts = registry.layouts(service)
    disabled, missing = _triggers(conn, registry, layouts)
    compared = differing = 0
    per_table: dict[str, int] = {}
    examples: list[RowDifference] = []
    for layout in layouts:
        rows = conn.execute(full_comparison_sql(registry.schema, layout), prepare=False).fetchall()
        compared += rows[0][3]
        differing += rows[0][4]
        for table, n in zip(layout.tables, rows[0][5]):
            if n:
                per_table[table.name] = per_table.get(table.name, 0) + n
        examples += [
            RowDifference(
                layout.entity.name, _shown(bytes(k) if isinstance(k, memoryview) else k), tuple(tables), unserved
            )
            for k, unserved, tables, *_ in rows
            if k is not None
        ]
    return ServiceFacts(
        service,
        "built",
        compared,
        differing,
        tuple(examples[:EXAMPLES]),
        tuple(disabled),
        tuple(missing),
        full=True,
        rows=compared,
        per_table=per_table,
    )


def materialized_facts(
    registry: Registry, dsn: str, conn: psycopg.Connection, *, sample: int = DEFAULT_SAMPLE, full: bool = False
) -> dict[str, ServiceFacts]:
    """Every materialized service's facts: its state, and for a built one the comparison (see
    ``compare_service``; with ``full``, ``compare_service_full``: every serving row). A service
    that cannot be compared (a table missing, the store cannot open) has ``error`` set: the doctor
    reports it and goes on."""
    wanted = [name for name, svc in registry.services.items() if svc.materialize]
    if not wanted:
        return {}
    try:
        catalog = serving_catalog(conn, registry.schema)
    except psycopg.Error as exc:
        return {name: ServiceFacts(name, "unknown", error=_first_line(exc)) for name in wanted}
    out = {}
    for name in wanted:
        layouts = registry.layouts(name)
        state = service_state(catalog.state(layout) for layout in layouts)
        # Rows built for this definition are compared even when their triggers or guard are gone.
        rows = all(
            catalog.tables.get(layout.table_name) is not None
            and catalog.tables[layout.table_name].fingerprint == layout.fingerprint
            for layout in layouts
        )
        out[name] = ServiceFacts(name, BUILT if rows else state.state if state.state != BUILT else MISSING)
    built = [name for name in wanted if out[name].state == BUILT]
    if not built:
        return out
    if full:
        for name in built:
            try:
                out[name] = compare_service_full(conn, registry, name)
            except psycopg.Error as exc:  # reported as a finding: the doctor must finish its other checks
                out[name] = ServiceFacts(name, "built", error=f"{type(exc).__name__}: {_first_line(exc)}", full=True)
        return out
    twins = twin_registry(registry, built)
    try:
        with FeatureStore(
            twins, dsn, pool_size=1, write_pool_size=0, on_drift="isolate", read_application_name="pgfeatures-doctor"
        ) as store:
            for name in built:
                try:
                    out[name] = compare_service(store, conn, twins, name, sample)
                except Exception as exc:  # reported as a finding: the doctor must finish its other checks
                    out[name] = ServiceFacts(name, "built", error=f"{type(exc).__name__}: {_first_line(exc)}")
    except Exception as exc:
        for name in built:
            out[name] = ServiceFacts(name, "built", error=f"{type(exc).__name__}: {_first_line(exc)}")
    return out


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
