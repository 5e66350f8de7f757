"""Reading what the database holds for a registry, and applying a plan (async source).

``apply.py`` is generated from this file by ``tools/async_to_sync.py``.

``apply_async(conn, registry)`` (``pgfeatures apply``) makes the database match the definitions in
**one transaction**, so a process or server killed midway leaves it as it was:

1. new objects first (schema, tables), which no reader uses yet;
2. the tables of services to (re)build SHARE-locked (writers wait, readers go on), and the new serving
   rows built beside the current ones; a column this apply adds is NULL in every built row (it is
   NULL in every table row too, until written);
3. the switch, last: the replaced serving rows dropped, the columns added (a catalog change, no
   rewrite), indexes built, destructive changes made (if asked for), the new serving rows renamed
   into place with their triggers and guard views, the definitions recorded; then COMMIT. Readers of a
   table wait only for this step (``ApplyResult.switch_seconds``).

Every lock is taken with ``lock_timeout``: a change that cannot be made online (a long transaction
holds a table) raises ChangeBlockedError naming who holds what, and changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ..definitions import Registry
from ..errors import ChangeBlockedError, DatabaseError, MaterializeError
from ..materialize import build_async as b
from ..schema import ddl_lock
from .plan import ADDITIVE, DESTRUCTIVE, Live, LiveTable, Plan, applied_rows, make_plan, tables_written

Progress = Callable[[str], None]

RECORD = "_pgf_definitions"

LIVE_TABLES = b"""
SELECT c.relname::text,
  (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
    AND NOT a.attisdropped),
  (SELECT array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum) FROM pg_attribute a
    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
  (SELECT array_agg(a.attname::text) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid
    AND a.attnum = ANY(i.indkey) WHERE i.indrelid = c.oid AND i.indisprimary),
  (SELECT array_agg(ic.relname::text) FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
    WHERE i.indrelid = c.oid AND NOT i.indisprimary)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT starts_with(c.relname, '_pgf_')
"""
"""Parameter: the schema. Every table of it but pgfeatures' own: name, columns, their types, primary key, indexes."""

BLOCKERS = b"""
SELECT DISTINCT l.pid, c.relname::text, l.mode, a.application_name, a.state,
  extract(epoch FROM now() - coalesce(a.xact_start, a.query_start))::int, left(a.query, 120)
FROM pg_locks l JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_stat_activity a ON a.pid = l.pid
WHERE n.nspname = $1 AND l.granted AND l.pid <> pg_backend_pid() ORDER BY 6 DESC NULLS LAST LIMIT 5
"""


@dataclass
class ApplyResult:
    """What ``apply`` did: the plan it made, the serving rows built (rows per serving table), how long
    it took and how long its final switch held tables exclusively (what a reader could have waited)."""

    plan: Plan
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    switch_seconds: float = 0.0
    dropped_serving: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.plan.to_dict(),
            "rows": self.rows,
            "seconds": round(self.seconds, 3),
            "switch_seconds": round(self.switch_seconds, 4),
            "dropped_serving": self.dropped_serving,
        }


async def read_live_async(conn: psycopg.AsyncConnection, registry: Registry) -> Live:
    """What the database holds for ``registry``'s schema (see plan.py's ``Live``)."""
    schema = registry.schema
    cur = psycopg.AsyncRawCursor(conn)
    await cur.execute(
        b"SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1), "
        b"to_regclass(quote_ident($1) || '.' || $2) IS NOT NULL",
        (schema, RECORD),
        prepare=False,
    )
    row = await cur.fetchone()
    live = Live(schema_exists=bool(row and row[0]))
    if not live.schema_exists:
        return live
    await cur.execute(LIVE_TABLES, (schema,), prepare=False)
    for name, names, types, pk, indexes in await cur.fetchall():
        live.tables[name] = LiveTable(name, dict(zip(names or (), types or ())), tuple(pk or ()), tuple(indexes or ()))
    live.serving = await b.serving_catalog_async(conn, schema)
    if row and row[1]:
        records = await conn.execute(sql.SQL("SELECT kind, name, spec FROM {}").format(sql.Identifier(schema, RECORD)))
        live.applied = {(kind, name): spec for kind, name, spec in await records.fetchall()}
    return live


async def plan_changes_async(
    conn: psycopg.AsyncConnection,
    registry: Registry,
    *,
    allow_destructive: bool = False,
    drop_tables: Collection[str] = (),
    drop_services: Collection[str] = (),
) -> Plan:
    """What ``apply_async`` would change (reads the catalog; changes nothing)."""
    return make_plan(
        registry,
        await read_live_async(conn, registry),
        allow_destructive=allow_destructive,
        drop_tables=drop_tables,
        drop_services=drop_services,
    )


def _entities(registry: Registry, live: Live, service: str) -> list[str]:
    """The entities of a service whose serving rows are dropped (from the definitions, else the rows' records)."""
    if service in registry.services:
        return sorted({t.entity.name for t, _ in registry.services[service].resolve(registry)})
    return sorted({str(t.record.get("entity")) for t in live.serving.owned(service)})


async def apply_async(
    conn: psycopg.AsyncConnection,
    registry: Registry,
    *,
    allow_destructive: bool = False,
    drop_tables: Collection[str] = (),
    drop_services: Collection[str] = (),
    lock_timeout: float = 5.0,
    progress: Progress | None = None,
) -> ApplyResult:
    """Make the database match ``registry`` in one transaction (see the module docstring).

    Raises ChangeBlockedError (a lock not had within ``lock_timeout``: nothing changed), MaterializeError,
    and psycopg errors for the caller to translate (nothing changed either).
    """
    report = progress or (lambda message: None)
    started = time.perf_counter()
    schema = registry.schema
    try:
        async with conn.transaction():
            await conn.execute(
                sql.SQL("SELECT set_config('lock_timeout', {}, true)").format(
                    sql.Literal(f"{int(lock_timeout * 1000)}ms")
                )
            )
            await conn.execute(*ddl_lock(schema))  # not beside an `init` or another apply of this schema
            live = await read_live_async(conn, registry)
            plan = make_plan(
                registry,
                live,
                allow_destructive=allow_destructive,
                drop_tables=drop_tables,
                drop_services=drop_services,
            )
            result = ApplyResult(plan)
            if plan.empty:  # nothing to create or switch: no table is taken; the record is kept current
                if not plan.blocked:  # not as applied while a change of them was left out
                    await _record_async(conn, registry)
                result.seconds = time.perf_counter() - started
                return result
            # New objects, and indexes (SHARE locks: writers wait, readers go on), before anything is taken exclusively.
            creating = [
                c
                for c in plan.changes
                if c.kind == ADDITIVE and c.action in ("create schema", "create table", "create index")
            ]
            for change in creating:
                report(change.prose)
                for statement in change.ddl:
                    await conn.execute(statement)
            builds = []
            if plan.build:
                tables = b.tables_of([layout for name in plan.build for layout in registry.layouts(name)])
                await b.lock_tables_async(conn, schema, [t for t in tables if t in live.tables], lock_timeout, report)
                for name in plan.build:
                    builds.append(await b.prepare_build_async(conn, registry, name, absent=plan.added, progress=report))
            dropped = [(name, _entities(registry, live, name)) for name in plan.drop_serving]
            changed = tables_written(plan) + [
                c.subject for c in plan.changes if c.kind == DESTRUCTIVE and c.action == "drop table"
            ]
            report("taking the tables for the switch (readers go on until it has them all)")
            await b.lock_for_switch_async(conn, schema, builds, dropped, changed, lock_timeout)
            switch = time.perf_counter()
            report("switching (readers of the tables changed wait from here to COMMIT)")
            await b.drop_replaced_async(conn, schema, builds)
            for name, entities in dropped:
                result.dropped_serving += await b.drop_service_async(conn, schema, name, entities)
            for change in plan.changes:
                if change in creating or change.kind not in (ADDITIVE, DESTRUCTIVE):
                    continue
                if change.statements:
                    report(change.prose)
                try:
                    for statement in change.ddl:
                        await conn.execute(statement)
                except psycopg.DataError as exc:  # a value the new type cannot hold (SQLSTATE 22): name where
                    raise DatabaseError(
                        f"{change.subject}: {exc.diag.message_primary or exc} ({change.action}); nothing was "
                        "changed: apply is one transaction",
                        exc.sqlstate,
                    ) from None
            await b.install_async(conn, schema, builds, report)
            if not plan.blocked:  # the definitions are recorded as applied only when all of them were
                await _record_async(conn, registry)
            result.switch_seconds = time.perf_counter() - switch
    except psycopg.errors.LockNotAvailable as exc:
        raise ChangeBlockedError(await _blocked_message_async(conn, schema, lock_timeout, exc)) from None
    except psycopg.errors.DependentObjectsStillExist as exc:
        raise MaterializeError(
            f"cannot make the change: {exc.diag.message_primary} ({exc.diag.message_detail}): a materialized service "
            "reads what it drops or alters (a _pgf_guard_ view is that service's; another definition file's?). Take it "
            "out of that service first, or drop the service's serving rows with --drop-service NAME; nothing was "
            "changed"
        ) from None
    for build in builds:
        result.rows.update(build.summary.rows)
    if builds:
        await b.record_full_passes_async(conn, schema, builds)
        await b.vacuum_async(conn, schema, [layout for build in builds for layout in build.layouts], report)
    result.seconds = time.perf_counter() - started
    return result


async def _record_async(conn: psycopg.AsyncConnection, registry: Registry) -> None:
    """Record the definitions applied (what ``plan`` compares ttls, defaults and versions with)."""
    table = sql.Identifier(registry.schema, RECORD)
    await conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (kind text, name text, spec jsonb NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (kind, name))"
        ).format(table)
    )
    cur = psycopg.AsyncCursor(conn)
    await cur.executemany(
        sql.SQL(
            "INSERT INTO {} (kind, name, spec) VALUES (%s, %s, %s::jsonb) ON CONFLICT (kind, name) "
            "DO UPDATE SET spec = EXCLUDED.spec, applied_at = now()"
        ).format(table),
        applied_rows(registry),
    )


async def _blocked_message_async(
    conn: psycopg.AsyncConnection, schema: str, lock_timeout: float, exc: BaseException
) -> str:
    """Who holds the locks a change waited for, as one sentence (after the rollback)."""
    held = []
    try:
        cur = psycopg.AsyncRawCursor(conn)
        await cur.execute(BLOCKERS, (schema,), prepare=False)
        for pid, table, mode, app, state, seconds, query in await cur.fetchall():
            held.append(
                f"pid {pid} ({app or 'no application_name'}, {state}, for {seconds}s) holds {mode} on {table}: "
                f"{(query or '').strip()!r}"
            )
    except psycopg.Error:
        pass
    who = "; ".join(held) or "a session that has finished since"
    return (
        f"could not take the locks the change needs within {lock_timeout:g}s ({str(exc).strip()}); nothing was "
        f"changed. Held by: {who}. Retry when they are released, or raise --lock-timeout"
    )
