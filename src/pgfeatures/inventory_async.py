"""What is served and how fresh it is (async source): ``pgfeatures tables``, ``GET /v1/tables``, the metrics.

``inventory.py`` is generated from this file by ``tools/async_to_sync.py``.

``tables_async(conn, registry)`` describes every feature table of the definitions: its entity (name,
key type, key column), its features with their types and defaults, its TTL, whether it exists, an
estimate of its rows, and the **age of its newest row**: the server's clock minus
``max(updated_at)``, so no client clock is involved. ``services_async(conn, registry)`` describes
every feature service, and for a materialized one whether its serving rows are ``built``,
``stale`` (built for another definition) or ``missing``.

What it costs:

- the row count is the planner's estimate (``pg_class.reltuples``), free; a table never vacuumed
  or analyzed has none, and is counted when it is small (under ``COUNT_BELOW_BYTES``), else the
  statistics counters' live rows are given, else nothing;
- the catalog is read without locking any table;
- ``max(updated_at)`` is one index probe when an index leads with ``updated_at`` (every table
  pgfeatures creates has one: ``schema.freshness_index_sql``), and otherwise a scan of the whole
  table, which the table's ``newest_note`` says, with the index to create (docs/doctor.md). Each table's is bounded by ``timeout``
  seconds (``statement_timeout``, which also bounds waiting for a lock held on the table); one that
  takes longer is reported as unknown, with why, and the others go on.

``conn``: an autocommit connection (each table is read in its own short transaction, so a
timeout loses nothing else). Statements are never prepared, so a connection behind a
transaction-mode pooler serves too. Raises psycopg errors other than a timeout (the caller
translates them, e.g. with ``pgfeatures.connections.database_error``).
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from .definitions import UPDATED_AT, Registry
from .materialize.build_async import status_async
from .schema import freshness_index_sql

DEFAULT_TIMEOUT = 2.0  # seconds for each table's max(updated_at) (and count, when it counts)
COUNT_BELOW_BYTES = 8 * 2**20  # a never-analyzed table smaller than this is counted (a few ms)

# One row per table name: exists, reltuples, the statistics counters' live rows, the first index
# leading with updated_at (None: none). Catalog reads only: no lock on the tables, so a table held
# by a long lock (a swap, an ALTER) cannot hold this up; what needs one is bounded per table.
CATALOG = b"""
SELECT t.name, c.oid IS NOT NULL, c.reltuples::float8, s.n_live_tup,
  (SELECT ic.relname::text FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
    WHERE i.indrelid = c.oid AND a.attname = $3 AND i.indisvalid AND i.indpred IS NULL
    ORDER BY ic.relname LIMIT 1)
FROM unnest($2::text[]) AS t(name)
LEFT JOIN pg_class c ON c.relname = t.name AND c.relkind IN ('r', 'p')
  AND c.relnamespace = (SELECT n.oid FROM pg_namespace n WHERE n.nspname = $1)
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
"""


def _freshness_sql(schema: str, table: str, count: bool, newest: bool) -> sql.Composed:
    """(count when asked and the table is small, else NULL; max(updated_at) when asked; the server's clock)."""
    ident = sql.Identifier(schema, table)
    counted = (
        sql.SQL("CASE WHEN pg_relation_size({}::regclass) < {} THEN (SELECT count(*) FROM {}) END").format(
            sql.Literal(ident.as_string(None)), sql.Literal(COUNT_BELOW_BYTES), ident
        )
        if count
        else sql.SQL("NULL::int8")
    )
    # A row stamped 'infinity' (written around pgfeatures) has no age, and no datetime holds it: the newest
    # row is the newest finite one (still an index probe: the bound is an index condition).
    top = (
        sql.SQL("(SELECT max({0}) FROM {1} WHERE {0} < 'infinity')").format(sql.Identifier(UPDATED_AT), ident)
        if newest
        else sql.SQL("NULL::timestamptz")
    )
    return sql.SQL("SELECT {}, {}, clock_timestamp()").format(counted, top)


@dataclass(frozen=True)
class FeatureInfo:
    name: str
    type: str
    default: Any = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "default": self.default}


@dataclass(frozen=True)
class TableInfo:
    """One feature table, as defined and as found.

    ``rows``: the estimate (None: unknown), ``rows_source`` how it was had (``reltuples``: the
    planner's estimate, ``count``: counted now, ``pg_stat_user_tables``: the statistics counters);
    ``newest_updated_at``: ``max(updated_at)`` (None: empty, missing table, or unknown) and
    ``newest_age``: seconds from it to the server's clock now; ``newest_note`` says why either is
    unknown; ``updated_at_index``: the index that makes ``max(updated_at)`` a probe (None: it scans);
    ``services``: the feature services that read the table."""

    name: str
    schema: str
    entity: str
    key_type: str
    key_column: str
    features: tuple[FeatureInfo, ...]
    ttl: int | None
    exists: bool
    rows: int | None = None
    rows_source: str | None = None
    newest_updated_at: datetime.datetime | None = None  # aware, UTC
    newest_age: float | None = None
    newest_note: str | None = None
    newest_seconds: float | None = None  # what finding max(updated_at) took (client-measured)
    updated_at_index: str | None = None
    services: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "schema": self.schema,
            "entity": {"name": self.entity, "key_type": self.key_type, "key_column": self.key_column},
            "features": [f.as_dict() for f in self.features],
            "ttl": self.ttl,
            "exists": self.exists,
            "rows": self.rows,
            "rows_source": self.rows_source,
            "newest_updated_at": self.newest_updated_at,
            "newest_age": self.newest_age,
            "newest_note": self.newest_note,
            "updated_at_index": self.updated_at_index,
            "services": list(self.services),
        }


@dataclass(frozen=True)
class ServiceInfo:
    """One feature service: its features in order, its tables and entities, its ttl and the TTL it
    applies to each table (``table_ttls``: the stricter of its own and the table's, unless
    ``ttl_override``), and for a materialized one the state of its serving rows (``built``,
    ``stale``, ``missing``; None when not materialized)."""

    name: str
    features: tuple[str, ...]
    tables: tuple[str, ...]
    entities: tuple[str, ...]
    ttl: int | None
    version: str | None
    materialize: bool
    state: str | None = None
    serving_tables: tuple[str, ...] = field(default=())
    ttl_override: bool = False
    table_ttls: dict[str, int | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "features": list(self.features),
            "tables": list(self.tables),
            "entities": list(self.entities),
            "ttl": self.ttl,
            "ttl_override": self.ttl_override,
            "table_ttls": dict(self.table_ttls),
            "version": self.version,
            "materialize": self.materialize,
            "state": self.state,
            "serving_tables": list(self.serving_tables),
        }


def _services_of(registry: Registry) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name in registry.services:
        for table, _ in registry.service(name).resolve(registry):
            out.setdefault(table.name, []).append(name)
    return out


async def _bounded_async(conn: psycopg.AsyncConnection, query: sql.Composed, timeout: float) -> tuple[Any, ...] | None:
    """The one row of ``query``, run under ``statement_timeout``; None when it took longer."""
    try:
        async with conn.transaction():
            cur = psycopg.AsyncRawCursor(conn)
            await cur.execute(
                sql.SQL("SELECT set_config('statement_timeout', {}, true)").format(
                    sql.Literal(f"{max(1, int(timeout * 1000))}ms")
                ),
                prepare=False,
            )
            await cur.execute(query, prepare=False)
            return await cur.fetchone()
    except psycopg.errors.QueryCanceled:
        return None


async def tables_async(
    conn: psycopg.AsyncConnection, registry: Registry, *, timeout: float = DEFAULT_TIMEOUT, newest: bool = True
) -> list[TableInfo]:
    """Every feature table of ``registry``, in definition order (see the module docstring).

    ``newest=False`` skips ``max(updated_at)`` (and the count): catalog reads only."""
    cur = psycopg.AsyncRawCursor(conn)
    await cur.execute(CATALOG, (registry.schema, list(registry.tables), UPDATED_AT), prepare=False)
    found = {row[0]: row[1:] for row in await cur.fetchall()}
    services = _services_of(registry)
    out = []
    for table in registry.tables.values():
        exists, reltuples, live, index = found[table.name]
        info: dict[str, Any] = {}
        if not exists:
            info.update(newest_note=f"table {registry.schema}.{table.name} does not exist: pgfeatures init creates it")
        else:
            info.update(updated_at_index=index)
            if reltuples >= 0:
                info.update(rows=int(reltuples), rows_source="reltuples")
            count = reltuples < 0  # never vacuumed or analyzed: counted when small
            if newest or count:
                started = time.perf_counter()
                row = await _bounded_async(conn, _freshness_sql(registry.schema, table.name, count, newest), timeout)
                seconds = time.perf_counter() - started
                if row is None:
                    how = (
                        f"an index ({index})"
                        if index
                        else f"a scan of the whole table (no index leads with {UPDATED_AT})"
                    )
                    if newest:
                        info.update(
                            newest_note=f"max({UPDATED_AT}) took longer than {timeout:g}s (it needs {how}, and "
                            "waits for any lock held on the table); see docs/doctor.md on indexing "
                            f"{UPDATED_AT}",
                            newest_seconds=seconds,
                        )
                else:
                    n, top, now = row
                    if n is not None:
                        info.update(rows=int(n), rows_source="count")
                    if newest:
                        info.update(newest_seconds=seconds)
                        if top is None:
                            info.update(newest_note="the table is empty")
                        else:
                            info.update(
                                newest_updated_at=top.astimezone(datetime.UTC),
                                newest_age=round((now - top).total_seconds(), 3),
                            )
                            if not index:
                                info.update(
                                    newest_note=f"measured by a scan of the whole table: no index leads with "
                                    f"{UPDATED_AT} (pgfeatures creates one with every table: "
                                    f"{freshness_index_sql(registry.schema, table, True).as_string(None)})"
                                )
            if "rows" not in info and live:
                info.update(rows=int(live), rows_source="pg_stat_user_tables")
        entity = table.entity
        out.append(
            TableInfo(
                table.name,
                registry.schema,
                entity.name,
                entity.key_type,
                entity.column,
                tuple(FeatureInfo(f.name, f.type.name, f.default) for f in table.features),
                table.ttl,
                bool(exists),
                services=tuple(services.get(table.name, ())),
                **info,
            )
        )
    return out


async def services_async(conn: psycopg.AsyncConnection, registry: Registry) -> list[ServiceInfo]:
    """Every feature service of ``registry``, with the state of the serving rows of materialized ones."""
    states = await status_async(conn, registry) if any(s.materialize for s in registry.services.values()) else {}
    out = []
    for name, svc in registry.services.items():
        items = svc.resolve(registry)
        layouts = registry.layouts(name) if svc.materialize else ()
        out.append(
            ServiceInfo(
                name,
                svc.order(registry),
                tuple(t.name for t, _ in items),
                tuple(dict.fromkeys(t.entity.name for t, _ in items)),
                svc.ttl,
                svc.version,
                svc.materialize,
                states.get(name) if svc.materialize else None,
                tuple(layout.table_name for layout in layouts),
                svc.ttl_override,
                svc.table_ttls(registry),
            )
        )
    return out
