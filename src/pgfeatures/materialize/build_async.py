"""Building a materialized service's serving rows, and telling whether they are current (async source).

``build.py`` is generated from this file by ``tools/async_to_sync.py``.

``materialize_async(conn, registry, service)`` (``pgfeatures materialize SERVICE``) builds every
serving table of the service from the feature tables, online and atomically, in one transaction:

1. the feature tables the service reads are locked in SHARE mode: writers wait until COMMIT
   (their changes would be missing from rows built from an older snapshot), readers never wait;
2. per entity, a new table is filled from the union of the entity's tables' keys, its primary key
   built in bulk, analyzed;
3. the new table takes the serving table's name (the old one, if any, is dropped): readers of the
   serving rows switch at COMMIT, from the old rows to the new, never seeing a half-built state;
4. the triggers that keep the rows in step with every write, and the refresh functions the
   loader's table swap calls, are (re)created on every table read.

Then VACUUM (ANALYZE) sets the new tables' visibility map. ``status_async`` compares the serving
tables' fingerprints with the definitions: ``built``, ``stale`` (built for another definition:
rebuild it) or ``missing``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from ..definitions import Registry
from ..definitions.layout import EntityLayout
from ..errors import DefinitionError
from . import sql as m

Progress = Callable[[str], None]

OLD_TRIGGERS = b"""
SELECT c.relname::text, t.tgname::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND t.tgname LIKE $2 AND NOT t.tgisinternal
"""


@dataclass
class BuildSummary:
    """What ``materialize`` did: rows per serving table, seconds."""

    service: str
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def describe(self) -> str:
        built = ", ".join(f"{name} ({n:,} rows)" for name, n in self.rows.items())
        return f"materialized {self.service} in {self.seconds:.1f}s: {built}"


def materialized_layouts(registry: Registry, service: str | None = None) -> list[EntityLayout]:
    """The serving tables of every materialized service (or of ``service``, which must be one)."""
    if service is not None:
        svc = registry.service(service)
        if not svc.materialize:
            raise DefinitionError(f"service {service!r} is not declared materialize = true")
        return list(registry.layouts(service))
    return [layout for name, svc in registry.services.items() if svc.materialize for layout in registry.layouts(name)]


async def status_async(conn: psycopg.AsyncConnection, registry: Registry) -> dict[str, str]:
    """Per materialized service: ``built`` (its serving tables match the definitions), ``stale``
    (built for another definition of the service: run ``pgfeatures materialize``) or ``missing``."""
    layouts = materialized_layouts(registry)
    found = await _fingerprints_async(conn, registry.schema, layouts)
    states: dict[str, set[str]] = {}
    for layout in layouts:
        state = "missing" if layout.table_name not in found else (
            "built" if found[layout.table_name] == layout.fingerprint else "stale")
        states.setdefault(layout.service, set()).add(state)
    return {name: "missing" if "missing" in s else "stale" if "stale" in s else "built" for name, s in states.items()}


async def _fingerprints_async(conn: psycopg.AsyncConnection, schema: str, layouts: list[EntityLayout]) -> dict[str, str | None]:
    cur = psycopg.AsyncRawCursor(conn)
    await cur.execute(m.SERVING_TABLES, (schema, [layout.table_name for layout in layouts]), prepare=False)
    return {name: m.fingerprint_of(comment) for name, comment in await cur.fetchall()}


async def materialize_async(conn: psycopg.AsyncConnection, registry: Registry, service: str, *,
                            progress: Progress | None = None, lock_timeout: float = 10.0) -> BuildSummary:
    """Build (or rebuild) ``service``'s serving rows online; see the module docstring.

    Raises DefinitionError (unknown or not materialized service), SchemaDriftError-like database
    errors as psycopg errors translated by the caller; on any error nothing changed.
    """
    report = progress or (lambda message: None)
    layouts = materialized_layouts(registry, service)
    schema = registry.schema
    summary = BuildSummary(service)
    started = time.perf_counter()
    tables = sorted({t.name for layout in layouts for t in layout.tables})
    async with conn.transaction():
        await conn.execute(sql.SQL("SELECT set_config('lock_timeout', {}, true)").format(
            sql.Literal(f"{int(lock_timeout * 1000)}ms")))
        report(f"locking {len(tables)} feature table(s) against writes (readers go on)")
        await conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(
            sql.SQL(", ").join(sql.Identifier(schema, t) for t in tables)))
        await conn.execute(b"SELECT set_config('work_mem', '256MB', true), set_config('maintenance_work_mem', '512MB', true)")
        for layout in layouts:
            new = f"_pgf_new_{secrets.token_hex(6)}"
            report(f"building {layout.table_name} from {len(layout.tables)} table(s)")
            for statement in m.create_table_sql(schema, layout, new, primary_key=False):
                await conn.execute(statement)
            cur = await conn.execute(m.build_sql(schema, layout, new))
            summary.rows[layout.table_name] = cur.rowcount
            report(f"indexing {layout.table_name} ({cur.rowcount:,} rows)")
            await conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(
                sql.Identifier(schema, new), sql.Identifier(layout.entity.column)))
            await conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, new)))
            await conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, layout.table_name)))
            await conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                sql.Identifier(schema, new), sql.Identifier(layout.table_name)))
        await install_triggers_async(conn, registry, report)
    report("vacuuming the new serving tables")
    autocommit = conn.autocommit
    try:
        await conn.set_autocommit(True)
        for layout in layouts:
            await conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(schema, layout.table_name)))
    finally:
        await conn.set_autocommit(autocommit)
    summary.seconds = time.perf_counter() - started
    return summary


async def install_triggers_async(conn: psycopg.AsyncConnection, registry: Registry, report: Progress | None = None) -> int:
    """(Re)create the maintenance triggers of every *built* materialized service on the tables it
    reads, and every table's refresh function. Returns the number of triggers. Run inside the
    caller's transaction (a build), or alone."""
    layouts = materialized_layouts(registry)
    found = await _fingerprints_async(conn, registry.schema, layouts)
    built = [layout for layout in layouts if found.get(layout.table_name) == layout.fingerprint]
    schema = registry.schema
    cur = psycopg.AsyncRawCursor(conn)
    await cur.execute(OLD_TRIGGERS, (schema, m.TRIGGER_PREFIX + "%"), prepare=False)
    for table_name, trigger in await cur.fetchall():  # a table may have left a service: start afresh
        await conn.execute(sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(trigger), sql.Identifier(schema, table_name)))
    count = 0
    for layout in built:
        for table in layout.tables:
            for statement in m.trigger_sql(schema, layout, table):
                await conn.execute(statement)
            count += 1
    for table in {t.name: t for layout in built for t in layout.tables}.values():
        await conn.execute(m.refresh_sql(schema, built, table))
    if report:
        report(f"{count} maintenance trigger(s) in place")
    return count
