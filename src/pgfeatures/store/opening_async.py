"""Opening a store (async source): what ``open()`` and ``reload()`` learn before the store serves.

Functions of the store's read router (``reads_async.AsyncReadRouter``: its targets and connection
settings), generated into ``opening.py`` for the sync store by ``tools/async_to_sync.py``:

- **catalog inspection**: the live catalog compared with the definitions in one statement, on the
  first read target that answers at open (``first_inspection_async``), and for one target when a
  broken table is re-checked (``inspect_target_async``, used by the router);
- **materialized services**: which are built and so read from their serving rows;
- **read functions** (``pooler="transaction"``): the warm readers in their function form, each
  function created where it is missing;
- **preparing what is served** on every read connection: at its warm-up (``prepare_served_async``)
  and on every idle one before a reload swaps new definitions in (``prepare_everywhere_async``).

The pools, their renewal and the probes are the router's; the order of the steps, and what a
failed step means, stay in ``AsyncFeatureStore.open``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import PoolClosed, PoolTimeout

from ..connections import connect_async, database_error, getconn_oldest_async
from ..errors import DatabaseUnavailableError, PgFeaturesError, SchemaDriftError
from ..materialize.build_async import states_async
from ..reader import BatchReader
from ..reader.functions import EXISTING_FUNCTIONS, read_function
from ..schema import CATALOG_QUERY, TableCheck
from .base import (
    READ_CURSOR,
    ReadTarget,
    Router,
    Served,
    target_name,
    warmup_statements,
)

if TYPE_CHECKING:
    from .reads_async import AsyncReadRouter

logger = logging.getLogger("pgfeatures")

SLOW_WARMUP = 1.0  # seconds: a connection warm-up slower than this is logged


# -- catalog inspection --------------------------------------------------------------------------


async def first_inspection_async(reads: AsyncReadRouter, router: Router, served: Served) -> dict[str, TableCheck]:
    """The catalog checks of ``served``'s tables, read on the first read target that answers;
    unreachable ones are marked down."""
    errors: list[PgFeaturesError] = []
    for target in router.targets:
        if target.down and any(not t.down for t in router.targets):
            continue
        try:
            return await inspect_target_async(reads, target, list(served.registry.tables), served)
        except DatabaseUnavailableError as exc:
            errors.append(exc)
            router.mark_down(target, str(exc))
    raise errors[0]


async def inspect_target_async(
    reads: AsyncReadRouter, target: ReadTarget, tables: list[str], served: Served | None = None
) -> dict[str, TableCheck]:
    """The catalog checks of ``tables`` (of ``served``, else what the store serves now) on ``target``,
    through a fresh connection."""
    conn = await connect_async(
        target.dsn, "pgfeatures-check", reads.connect_timeout, credentials=reads.credentials, pooler=reads.pooler
    )
    try:
        return await _catalog_async(served or reads.served, conn, tables)
    except psycopg.Error as exc:
        raise database_error(exc, target.dsn) from exc
    finally:
        await conn.close()


async def _catalog_async(served: Served, conn: psycopg.AsyncConnection, tables: list[str]) -> dict[str, TableCheck]:
    cur = psycopg.AsyncRawCursor(conn)
    await cur.execute(CATALOG_QUERY, (served.registry.schema, tables), prepare=False)
    return served.health.from_rows(await cur.fetchall())


# -- materialized services and read functions ----------------------------------------------------


async def find_materialized_async(reads: AsyncReadRouter, router: Router, served: Served) -> None:
    """Which of ``served``'s materialized services are built (their serving rows exist for these
    definitions and follow the tables): those are read from their serving rows; the others by the
    flexible read, with a warning saying why."""
    registry = served.registry
    wanted = [name for name, svc in registry.services.items() if svc.materialize]
    if not wanted:
        return
    target = next((t for t in router.targets if not t.down), router.targets[0])
    conn = await connect_async(
        target.dsn, "pgfeatures-check", reads.connect_timeout, credentials=reads.credentials, pooler=reads.pooler
    )
    try:
        found = await states_async(conn, registry)
    except psycopg.Error as exc:
        raise database_error(exc, target.dsn) from exc
    finally:
        await conn.close()
    built = {}
    for name in wanted:
        state = found[name]
        if state.state == "built":
            built[name] = registry.layouts(name)
        else:
            logger.warning(
                "pgfeatures: service %s is materialize = true but its serving rows are %s (%s): it is read "
                "table by table until `pgfeatures materialize %s` builds them",
                name,
                state.state,
                state.reason,
                name,
            )
    served.readers.materialized = built


async def read_functions_async(reads: AsyncReadRouter, router: Router, served: Served) -> dict[bytes, Any]:
    """``pooler="transaction"``: the warm readers in their function form (see reader/functions.py),
    each function created on the primary where it is missing. A shape whose function cannot be
    had (no CREATE privilege, primary down and not created by ``pgfeatures init``) reads unprepared."""
    forms = [(r, f) for r in served.warm if (f := read_function(r)) is not None]
    if not forms:
        return {}
    names = list(dict.fromkeys(f.name for _, f in forms))
    existing: set[str] = set()
    for dsn in [reads.dsn or "", *(t.dsn for t in router.targets)]:
        try:
            conn = await connect_async(
                dsn, "pgfeatures-init", reads.connect_timeout, credentials=reads.credentials, pooler=reads.pooler
            )
        except PgFeaturesError as exc:
            logger.warning("pgfeatures: cannot check the read functions at %s: %s", target_name(dsn, "server"), exc)
            continue
        try:
            cur = psycopg.AsyncRawCursor(conn)
            await cur.execute(EXISTING_FUNCTIONS, (served.registry.schema, names), prepare=False)
            existing = {row[0] for row in await cur.fetchall()}
            for reader, form in forms:
                if form.name in existing:
                    continue
                try:
                    await conn.execute(form.create, prepare=False)
                    existing.add(form.name)
                except psycopg.Error as exc:
                    logger.warning(
                        "pgfeatures: cannot create the read function %s (%s): reads of tables %s are "
                        "planned at every call; run `pgfeatures init` as the schema's owner",
                        form.name,
                        str(exc).strip(),
                        ", ".join(reader.tables),
                    )
            break
        except psycopg.Error as exc:
            logger.warning("pgfeatures: cannot check the read functions: %s", str(exc).strip())
        finally:
            await conn.close()
    out: dict[bytes, Any] = {}
    for reader, form in forms:
        if form.name in existing:
            if isinstance(reader, BatchReader):
                out[reader.statement] = dataclasses.replace(reader, statement=form.call)
            else:
                out[reader.statements[0]] = dataclasses.replace(reader, statements=(form.call,))
    return out


# -- preparing what a store serves on its read connections ---------------------------------------

SERVED = "_pgfeatures_served"  # the Served whose warm readers a read connection has prepared


async def prepare_served_async(conn: psycopg.AsyncConnection, cur: psycopg.AsyncRawCursor, served: Served) -> None:
    """Prepare ``served``'s warm readers on ``conn`` (skipping, with a warning, what a missing table or
    column keeps from preparing), and mark the connection as prepared for it."""
    statements = warmup_statements(served.warm)
    conn.prepared_max = max(conn.prepared_max or 0, served.readers.max_statements + len(statements))
    for reader, stmt, params in statements:
        try:
            await cur.execute(stmt, params, prepare=True, binary=True)
            await cur.fetchall()
        except psycopg.Error as exc:
            if conn.broken or not isinstance(database_error(exc), SchemaDriftError):
                raise
            logger.warning(
                "pgfeatures: not prepared on a read connection (tables %s): %s",
                ", ".join(reader.tables),
                str(exc).strip(),
            )
    setattr(conn, SERVED, served)


async def prepare_everywhere_async(reads: AsyncReadRouter, router: Router, served: Served) -> int:
    """Prepare ``served``'s warm readers on every idle connection of every read pool, one connection
    at a time (the rest keep serving), before a reload swaps ``served`` in. A connection that is busy
    throughout, or opened meanwhile, prepares the new statements at their first use instead. Returns
    the connections prepared."""
    if not reads._prepare:
        return 0
    prepared = 0
    for target in router.targets:
        pool = target.pool
        if pool is None or target.down:
            continue
        seen: set[int] = set()
        # Taking the least recently used idle connection and returning it, one at a time, goes round all
        # of them in pool_size turns when nothing else runs, a few more when reads do (a plain getconn is
        # last-in first-out: it would hand the same connection back).
        for _ in range(3 * reads.pool_size):
            try:
                conn = await getconn_oldest_async(pool, timeout=reads.acquire_timeout)
            except (PoolTimeout, PoolClosed):
                break
            try:
                if getattr(conn, SERVED, None) is not served:
                    cur = getattr(conn, READ_CURSOR, None) or psycopg.AsyncRawCursor(conn)
                    await prepare_served_async(conn, cur, served)
                    prepared += 1
                seen.add(id(conn))
            except psycopg.Error as exc:
                if not conn.broken:
                    raise database_error(exc, target.dsn) from exc
            finally:
                await pool.putconn(conn)
            if len(seen) >= pool.get_stats().get("pool_size", reads.pool_size):
                break
    return prepared


# -- the pools -----------------------------------------------------------------------------------

OPEN_GRACE = 10.0  # seconds a read pool may take to fill at open, beyond connect_timeout (warm-up prepares)
STALLED = (
    "its connections were opened but did not finish their warm-up (a pooler with no free server "
    "connection, e.g. PgBouncer in session mode with default_pool_size below the clients' connections, "
    "or a database that accepts logins but does not answer)"
)
