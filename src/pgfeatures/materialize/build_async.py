"""Building a materialized service's serving rows, and telling whether they can be read (async source).

``build.py`` is generated from this file by ``tools/async_to_sync.py``.

``materialize_async(conn, registry, service)`` (``pgfeatures materialize SERVICE``) builds every
serving table of the service from the feature tables, online and atomically, in one transaction:

1. the feature tables the service reads are locked in SHARE mode: writers wait until COMMIT
   (their changes would be missing from rows built from an older snapshot), readers never wait;
2. per entity, a new table is filled from the union of the entity's tables' keys, its primary key
   built in bulk, analyzed;
3. the switch, last and brief: the service's previous serving tables (any layout, any version) and
   their triggers, refresh functions and guard views are dropped, the new tables take their
   layouts' names, and each gets its guard view, triggers and refresh functions. Readers of the new
   layout see it at COMMIT; readers of an old layout find their table gone and read the service
   table by table (never the new rows: a layout's name is its fingerprint, see layout.py).

Then VACUUM (ANALYZE) sets the new tables' visibility map. A table named like the new serving
table that pgfeatures did not build is an error, never dropped. ``states_async`` says per service
whether its rows can be read (``state.py``).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from ..definitions import Registry
from ..definitions.layout import EntityLayout
from ..definitions.names import derived
from ..errors import DefinitionError, MaterializeError
from ..schema import ddl_lock
from . import sql as m
from .state import LayoutState, ServingCatalog, ServingTable, service_state

Progress = Callable[[str], None]


@dataclass
class BuildSummary:
    """What ``materialize`` did: rows per serving table, seconds, and how long the final switch held
    its exclusive locks (``switch_seconds``: the most any reader of the service could have waited)."""

    service: str
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    switch_seconds: float = 0.0
    replaced: list[str] = field(default_factory=list)

    def describe(self) -> str:
        built = ", ".join(f"{name} ({n:,} rows)" for name, n in self.rows.items())
        return (
            f"materialized {self.service} in {self.seconds:.1f}s (switch {self.switch_seconds * 1000:.0f} ms): {built}"
        )


@dataclass
class PreparedBuild:
    """A service's new serving tables, filled and indexed under temporary names, not yet switched in."""

    service: str
    layouts: list[EntityLayout]
    new_names: dict[str, str]  # layout table name -> temporary name
    summary: BuildSummary
    started: float
    functions: frozenset[str] = frozenset()  # trigger and refresh functions created ahead of the switch


def materialized_layouts(registry: Registry, service: str | None = None) -> list[EntityLayout]:
    """The serving tables of every materialized service (or of ``service``, which must be one)."""
    if service is not None:
        svc = registry.service(service)
        if not svc.materialize:
            raise DefinitionError(f"service {service!r} is not declared materialize = true")
        return list(registry.layouts(service))
    return [layout for name, svc in registry.services.items() if svc.materialize for layout in registry.layouts(name)]


async def serving_catalog_async(conn: psycopg.AsyncConnection, schema: str) -> ServingCatalog:
    """The schema's serving tables, guard views and maintenance triggers (one query)."""
    cur = psycopg.AsyncRawCursor(conn)
    await cur.execute(m.SERVING_STATE, (schema,), prepare=False)
    return ServingCatalog.from_row(await cur.fetchone())


async def states_async(conn: psycopg.AsyncConnection, registry: Registry) -> dict[str, LayoutState]:
    """Per materialized service: whether its serving rows can be read (``built``), and if not why
    (``missing``: build it; ``stale``: rebuild it): see state.py."""
    catalog = await serving_catalog_async(conn, registry.schema)
    return {
        name: service_state(catalog.state(layout) for layout in registry.layouts(name))
        for name, svc in registry.services.items()
        if svc.materialize
    }


async def status_async(conn: psycopg.AsyncConnection, registry: Registry) -> dict[str, str]:
    """Per materialized service: ``built``, ``missing`` or ``stale`` (see ``states_async``)."""
    return {name: s.state for name, s in (await states_async(conn, registry)).items()}


async def materialize_async(
    conn: psycopg.AsyncConnection,
    registry: Registry,
    service: str,
    *,
    progress: Progress | None = None,
    lock_timeout: float = 10.0,
) -> BuildSummary:
    """Build (or rebuild) ``service``'s serving rows online; see the module docstring.

    Raises DefinitionError (unknown or not materialized service), MaterializeError (a table named like
    a serving table pgfeatures did not build), psycopg errors for the caller to translate (a lock not
    had within ``lock_timeout``: LockNotAvailable); on any error nothing changed.
    """
    async with conn.transaction():
        await lock_tables_async(
            conn, registry.schema, tables_of(materialized_layouts(registry, service)), lock_timeout, progress
        )
        prepared = await prepare_build_async(conn, registry, service, progress=progress)
        await switch_async(conn, registry.schema, [prepared], progress=progress, lock_timeout=lock_timeout)
    await record_full_passes_async(conn, registry.schema, [prepared])
    await vacuum_async(conn, registry.schema, prepared.layouts, progress)
    prepared.summary.seconds = time.perf_counter() - prepared.started
    return prepared.summary


async def record_full_passes_async(conn: psycopg.AsyncConnection, schema: str, builds: Sequence[PreparedBuild]) -> None:
    """After the builds committed: record that they read their tables whole (``sql.FULL_PASSES``), stamped
    after the commit, which is when PostgreSQL stamps the scans (``last_seq_scan``: the scanning
    transaction's end), so ``pgfeatures doctor`` can tell those sequential scans were pgfeatures' own."""
    if not builds:
        return
    # A backend reports its scans when it next goes idle, stamped with the end of its latest transaction: a
    # flush forced now stamps them with this short transaction's end, before the record's time below.
    try:
        async with conn.transaction():
            await conn.execute(b"SELECT pg_stat_force_next_flush()")
    except psycopg.errors.UndefinedFunction:  # before PostgreSQL 15: the doctor cannot tell, and says so
        return
    async with conn.transaction():
        await conn.execute(*ddl_lock(schema, m.FULL_PASSES))  # CREATE IF NOT EXISTS races: one at a time
        for build in builds:
            for statement in m.record_full_passes_sql(schema, tables_of(build.layouts), f"materialize {build.service}"):
                await conn.execute(statement)


def tables_of(layouts: Sequence[EntityLayout]) -> list[str]:
    """The feature tables ``layouts`` read, sorted: the order every build locks them in."""
    return sorted({t.name for layout in layouts for t in layout.tables})


async def lock_tables_async(
    conn: psycopg.AsyncConnection,
    schema: str,
    tables: Sequence[str],
    lock_timeout: float,
    progress: Progress | None = None,
) -> None:
    """SHARE-lock ``tables`` (inside the caller's transaction): writers wait until COMMIT, readers go on."""
    await conn.execute(
        sql.SQL("SELECT set_config('lock_timeout', {}, true)").format(sql.Literal(f"{int(lock_timeout * 1000)}ms"))
    )
    if progress:
        progress(f"locking {len(tables)} feature table(s) against writes (readers go on)")
    if tables:
        await conn.execute(
            sql.SQL("LOCK TABLE {} IN SHARE MODE").format(sql.SQL(", ").join(sql.Identifier(schema, t) for t in tables))
        )


async def prepare_build_async(
    conn: psycopg.AsyncConnection,
    registry: Registry,
    service: str,
    *,
    absent: Collection[tuple[str, str]] = (),
    progress: Progress | None = None,
) -> PreparedBuild:
    """Fill ``service``'s new serving tables under temporary names (inside the caller's transaction,
    its tables SHARE-locked). ``absent``: ``(table, feature)`` columns that ``apply`` adds just before
    the switch (NULL in every row)."""
    report = progress or (lambda message: None)
    started = time.perf_counter()
    layouts = materialized_layouts(registry, service)
    schema = registry.schema
    catalog = await serving_catalog_async(conn, schema)
    for layout in layouts:
        if layout.table_name in catalog.foreign:
            raise MaterializeError(
                f"cannot build {service}: a table {schema}.{layout.table_name} exists that pgfeatures did "
                "not build (the _pgf_ prefix is reserved); rename or drop it, then retry"
            )
    summary = BuildSummary(service)
    await conn.execute(
        b"SELECT set_config('work_mem', '256MB', true), set_config('maintenance_work_mem', '512MB', true)"
    )
    new_names = {}
    for layout in layouts:
        new = f"_pgf_new_{secrets.token_hex(6)}"
        report(f"building {layout.table_name} from {len(layout.tables)} table(s)")
        for statement in m.create_table_sql(schema, layout, new, primary_key=False):
            await conn.execute(statement)
        cur = await conn.execute(m.build_sql(schema, layout, new, absent))
        summary.rows[layout.table_name] = cur.rowcount
        report(f"indexing {layout.table_name} ({cur.rowcount:,} rows)")
        await conn.execute(
            sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(
                sql.Identifier(schema, new), sql.Identifier(layout.entity.column)
            )
        )
        await conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, new)))
        new_names[layout.table_name] = new
    # The trigger and refresh functions are created here, before the switch: PL/pgSQL validates each
    # body as it is created (3-6 ms apiece, 60 for a 30-table service), and the switch holds readers'
    # tables exclusively. Nothing calls them before the triggers exist, which the switch creates.
    functions: list[sql.Composable] = []
    created: set[str] = set()
    for layout in layouts:
        for table in layout.tables:
            functions += [m.trigger_function_sql(schema, layout, table), m.refresh_sql(schema, layout, table)]
            created |= {m.trigger_name(layout, table), m.refresh_name(layout, table)}
    await _execute_all_async(conn, functions)
    return PreparedBuild(service, layouts, new_names, summary, started, frozenset(created))


async def switch_async(
    conn: psycopg.AsyncConnection,
    schema: str,
    builds: Sequence[PreparedBuild],
    progress: Progress | None = None,
    lock_timeout: float = 10.0,
) -> None:
    """Switch prepared builds in (inside their transaction): drop each service's previous serving
    tables and their objects, rename the new tables into place, create their guard views, triggers and
    refresh functions. The exclusive locks this takes are held until COMMIT: callers commit at once."""
    started = time.perf_counter()
    await lock_for_switch_async(conn, schema, builds, (), (), lock_timeout)
    await drop_replaced_async(conn, schema, builds)
    await install_async(conn, schema, builds, progress)
    for build in builds:
        build.summary.switch_seconds = time.perf_counter() - started


async def lock_for_switch_async(
    conn: psycopg.AsyncConnection,
    schema: str,
    builds: Sequence[PreparedBuild],
    dropped: Sequence[tuple[str, Sequence[str]]],
    tables: Collection[str],
    lock_timeout: float,
) -> None:
    """The exclusive locks a switch needs, in the order no reader can deadlock with: the serving tables
    replaced (of ``builds``, and of the ``dropped`` services, as (service, entities)), then, all at once
    or none (``sql.lock_exclusively_sql``), the tables their triggers are on, the tables the new layouts
    read, and ``tables``."""
    catalog = await serving_catalog_async(conn, schema)
    olds = [old for build in builds for old in catalog.owned(build.service, [lay.entity.name for lay in build.layouts])]
    olds += [old for service, entities in dropped for old in catalog.owned(service, entities)]
    serving = sorted({old.name for old in olds})
    members = set(tables) | {table for old in olds for table, _ in catalog.triggers_of(old)}
    members |= {t.name for build in builds for layout in build.layouts for t in layout.tables}
    cur = psycopg.AsyncRawCursor(conn)
    await cur.execute(
        b"SELECT r FROM unnest($1::text[]) r WHERE to_regclass(quote_ident($2) || '.' || quote_ident(r)) "
        b"IS NOT NULL ORDER BY r",
        (sorted(members), schema),
        prepare=False,
    )
    existing = [row[0] for row in await cur.fetchall()]
    # Readers of serving rows lock the serving table, then its guard view, then the tables the view reads:
    # the serving tables first then (no reader of them holds anything else once they are had), the feature
    # tables all at once or none (flexible reads lock them in any order). Never LOCK a guard view: that
    # locks every table it reads too; the DROP VIEW that follows takes the view's lock alone.
    if serving:
        await conn.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                sql.SQL(", ").join(sql.Identifier(schema, n) for n in serving)
            )
        )
    if existing:
        await conn.execute(m.lock_exclusively_sql([sql.Identifier(schema, n) for n in existing], lock_timeout))


async def drop_replaced_async(conn: psycopg.AsyncConnection, schema: str, builds: Sequence[PreparedBuild]) -> None:
    """The first half of ``switch_async``: drop the serving tables (and their objects) the builds replace."""
    catalog = await serving_catalog_async(conn, schema)
    keep = frozenset(name for build in builds for name in build.functions)  # a rebuild of the same layout
    for build in builds:
        entities = [layout.entity.name for layout in build.layouts]
        for old in catalog.owned(build.service, entities):
            await drop_serving_async(conn, schema, catalog, old, keep)
            build.summary.replaced.append(old.name)


async def drop_service_async(
    conn: psycopg.AsyncConnection, schema: str, service: str, entities: Sequence[str]
) -> list[str]:
    """Drop every serving table of ``service`` (of its entities' legacy names too) and their objects:
    the service is no longer materialized. Returns the tables dropped."""
    catalog = await serving_catalog_async(conn, schema)
    dropped = []
    for old in catalog.owned(service, entities):
        await drop_serving_async(conn, schema, catalog, old)
        dropped.append(old.name)
    return dropped


async def install_async(
    conn: psycopg.AsyncConnection, schema: str, builds: Sequence[PreparedBuild], progress: Progress | None = None
) -> None:
    """The second half of ``switch_async``: the new tables renamed into place, with their guard views
    and triggers (their functions were created by ``prepare_build_async``)."""
    for build in builds:
        statements: list[sql.Composable] = []
        for layout in build.layouts:
            new = build.new_names[layout.table_name]
            statements.append(
                sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                    sql.Identifier(schema, new), sql.Identifier(layout.table_name)
                )
            )
            statements.append(
                sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
                    sql.Identifier(schema, layout.table_name),
                    sql.Identifier(f"{new}_pkey"),
                    sql.Identifier(derived(layout.table_name, "_pkey")),
                )
            )
            statements += m.guard_sql(schema, layout)
            for table in layout.tables:
                statements += m.triggers_sql(schema, layout, table)
        await _execute_all_async(conn, statements)
        if progress:
            progress(f"{build.service}: switched to {', '.join(layout.table_name for layout in build.layouts)}")


async def _execute_all_async(conn: psycopg.AsyncConnection, statements: Sequence[sql.Composable]) -> None:
    """Run DDL statements (no parameters) as one message rather than a round-trip each (about 100 in a
    30-table switch, which holds readers' tables exclusively; small beside the statements' own work)."""
    if statements:  # simple query protocol (text, never prepared): the only one that takes several statements
        async with conn.cursor(binary=False) as cur:
            await cur.execute(sql.SQL(";\n").join(statements), prepare=False)


async def drop_serving_async(
    conn: psycopg.AsyncConnection,
    schema: str,
    catalog: ServingCatalog,
    old: ServingTable,
    keep: frozenset[str] = frozenset(),
) -> None:
    """Drop a serving table and everything that belongs to it: its triggers on the tables it reads,
    their functions and refresh functions (but those named in ``keep``, which a build of the same
    layout has just created), its guard view."""
    statements: list[sql.Composable] = []
    for table, trigger in catalog.triggers_of(old):
        statements.append(
            sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(trigger), sql.Identifier(schema, table))
        )
    functions = {trigger[: len(m.TRIGGER_PREFIX) + 20] for _, trigger in catalog.triggers_of(old)}
    for table in old.tables:
        functions.add(m.trigger_name_for(old.name, table))
    for function in sorted(functions):
        for name in (function, m.refresh_of_trigger(function)):
            if name not in keep:
                statements.append(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(sql.Identifier(schema, name)))
    if old.legacy:  # a version before LAYOUT_VERSION 2 kept one refresh function per table, naming this table
        for table in sorted({table for table, _ in catalog.triggers_of(old)}):
            statements.append(
                sql.SQL("DROP FUNCTION IF EXISTS {}()").format(
                    sql.Identifier(schema, (m.LEGACY_REFRESH_PREFIX + table)[:63])
                )
            )
    else:
        statements.append(
            sql.SQL("DROP VIEW IF EXISTS {}").format(sql.Identifier(schema, m.guard_name_for(old.fingerprint)))
        )
    statements.append(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, old.name)))
    await _execute_all_async(conn, statements)


async def vacuum_async(
    conn: psycopg.AsyncConnection, schema: str, layouts: Sequence[EntityLayout], progress: Progress | None = None
) -> None:
    """VACUUM (ANALYZE) new serving tables (outside a transaction): sets their visibility map."""
    if progress:
        progress("vacuuming the new serving tables")
    autocommit = conn.autocommit
    try:
        await conn.set_autocommit(True)
        for layout in layouts:
            await conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(schema, layout.table_name)))
    finally:
        await conn.set_autocommit(autocommit)
