"""The store's read path (async source): how a compiled read reaches a read target.

Owns, for ``store_async.AsyncFeatureStore`` (and, generated from this module by
``tools/async_to_sync.py``, for the sync store):

- **the statements on one connection**: a compiled reader's statement(s) sent in one flush
  (``single``/``batch``, ``pipeline``, ``sequential``) and the rows handed to its decoder;
- **routing and retry**: ``run_async`` takes a pooled connection of the first read target that
  serves (``base.Router``), retries a read whose connection died under it, marks a target
  down and moves on to the next at once;
- **rechecks of broken tables**: a request touching a table that could not be served re-checks
  it in the catalog when due, and a statement rejected for a missing table or column re-checks it;
- **probes**: a background probe of every read target that is down (or lagging) brings it back;
  a target that is down is probed every PROBE_INTERVAL until it serves again;
- **renewals**: a read that finds a read pool due for renewal (``max_lifetime``) starts it in the
  background (``opening_async.renew_expiring_async``).

The store's lifecycle (open, close) and public read methods stay in ``store_async.py``; the
open-time inspection that rechecks reuse is in ``opening_async.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg_pool import PoolClosed, PoolTimeout

from ..connections import connect_async, database_error
from ..errors import DatabaseUnavailableError, PgFeaturesError, SchemaDriftError, StoreClosedError
from ..reader import BatchReader, Fetch, Reader
from ..schema import TableCheck
from .base import LAG_QUERY, PROBE_INTERVAL, READ_CURSOR, ReadTarget, Router, pipeline_cursors
from .opening_async import inspect_target_async, renew_expiring_async, renew_pool_async

if TYPE_CHECKING:
    from .store_async import AsyncFeatureStore

logger = logging.getLogger("pgfeatures")

T = TypeVar("T")  # what a read returns (a FeatureResult, a ServiceVector, a list of them, None for ``ping``)
R = TypeVar("R", bound="Reader[Any] | BatchReader[Any] | None")  # the compiled reader a read runs (None: ``ping``)
A = TypeVar("A")  # its arguments (the bound parameters)
# What ``run_async`` runs on a connection: ``execute_async``, ``execute_batch_async``, ``select_one_async``.
Execute = Callable[[psycopg.AsyncConnection, R, A, bool], Awaitable[T]]


# -- statements on one connection ----------------------------------------------------------------

async def execute_async(conn: psycopg.AsyncConnection, reader: Reader[T], params: tuple[Any, ...], prepare: bool) -> T:
    """One request's reader on ``conn``: its statement(s) in one flush (N for ``sequential``), decoded."""
    fetch = reader.fetch
    if fetch is Fetch.ONE or fetch is Fetch.ALL:
        cur = getattr(conn, READ_CURSOR, None) or psycopg.AsyncRawCursor(conn)
        await cur.execute(reader.statements[0], params, prepare=prepare, binary=True)
        return reader.decode(await cur.fetchone() if fetch is Fetch.ONE else await cur.fetchall())
    # One statement per table, each taking its own table's entity key.
    if fetch is Fetch.PIPELINE:
        # One cursor per statement: a cursor keeps only its last result in a pipeline.
        cursors = pipeline_cursors(conn, len(reader.statements), psycopg.AsyncRawCursor)
        async with conn.pipeline():
            for cur, stmt, i in zip(cursors, reader.statements, reader.param_index):
                await cur.execute(stmt, (params[i],), prepare=prepare, binary=True)
        return reader.decode([await cur.fetchone() for cur, _ in zip(cursors, reader.statements)])
    cur = getattr(conn, READ_CURSOR, None) or psycopg.AsyncRawCursor(conn)
    rows = []
    for stmt, i in zip(reader.statements, reader.param_index):
        await cur.execute(stmt, (params[i],), prepare=prepare, binary=True)
        rows.append(await cur.fetchone())
    return reader.decode(rows)


async def execute_batch_async(conn: psycopg.AsyncConnection, reader: BatchReader[T], arrays: tuple[list[Any], ...],
                              prepare: bool) -> list[T]:
    """A batch reader on ``conn``: one statement for all the keys, decoded."""
    cur = getattr(conn, READ_CURSOR, None) or psycopg.AsyncRawCursor(conn)
    await cur.execute(reader.statement, arrays, prepare=prepare, binary=True)
    return reader.decode(await cur.fetchall())


async def select_one_async(conn: psycopg.AsyncConnection, reader: None, args: None, prepare: bool) -> None:
    """``SELECT 1`` on ``conn`` (the store's ``ping``)."""
    cur = getattr(conn, READ_CURSOR, None) or psycopg.AsyncRawCursor(conn)
    await cur.execute(b"SELECT 1", prepare=False)
    await cur.fetchall()


# -- routing and retry over the read targets -----------------------------------------------------

async def run_async(store: AsyncFeatureStore, execute: Execute[R, A, T], reader: R, args: A) -> T:
    """Run ``execute(conn, reader, args, prepare)`` on a read target of ``store``, moving on to the
    next target when one fails.

    getconn/putconn rather than ``pool.connection()``: with autocommit there is no transaction
    to end, and the context managers cost measurable CPU per request. A connection that died
    under the request (server restart, failover, idle kill) makes the pool check its idle
    connections; the read is retried on that target if connections survived (again for each
    further dead one, at most pool_size times), else the target is marked down and the next one
    tried. Reads are idempotent.
    """
    router = store.router
    if router is None:
        raise StoreClosedError("the store is not open: call open() or use it as a context manager")
    if store.health.broken and reader is not None and not store.health.broken.isdisjoint(reader.tables):
        await recheck_async(store, reader.tables)
    error: BaseException | None = None
    target: ReadTarget | None = None
    order = router.order()
    last = order[-1]
    for target in order:
        pool = target.pool
        # A read on a connection found dead is retried: once after a restart, but after a mass
        # termination more of the pool's connections may be dead without the pool knowing (in use
        # during the check, returned after it), and each is found and dropped in turn: at most
        # pool_size of them, so at most pool_size + 1 attempts.
        for attempt in range(store.pool_size + 1):
            try:
                conn = await pool.getconn()
            except PoolTimeout as exc:
                error = exc
                break
            except PoolClosed as exc:
                if store.router is None or target.pool is pool:
                    raise StoreClosedError(f"the store is closed: {exc}") from None
                pool = target.pool  # the probe renewed it while this request waited: wait on the new one
                continue
            try:
                result = await execute(conn, reader, args, store._prepare)
            except psycopg.OperationalError as exc:
                await pool.putconn(conn)
                if not conn.broken:  # the server answered with an error: not a lost connection
                    raise database_error(exc, target.dsn) from exc
                error = exc
                if attempt == 0:
                    logger.info("pgfeatures: read connection to %s lost (%s); checking the pool", target.name,
                                str(exc).strip())
                    await pool.check()
                # Retry here if connections survived, or if there is nowhere else to go
                # (getconn then waits for the replacement the check started).
                if target is last or pool.get_stats().get("pool_available", 0):
                    continue
                break
            except psycopg.Error as exc:
                await pool.putconn(conn)
                raise (await read_failed_async(store, exc, reader, target, conn)) from exc
            except BaseException:
                await pool.putconn(conn)
                raise
            await pool.putconn(conn)
            if target.down:
                router.mark_up(target)
            now = time.monotonic()
            if now >= router.next_probe_at:  # a target is down or lagging, and due for a probe
                probe_soon(store)
            if now >= router.next_renewal_at:  # a pool is due for renewal (max_lifetime)
                renew_soon(store)
            return result
        # Down: its connections died, or it cannot make new ones (or waits on a credential provider
        # that has not answered). A pool that is merely busy (a timeout with nothing failing) is not
        # down: the read spills to the next target.
        if not isinstance(error, PoolTimeout) or target.failures.cause(store.acquire_timeout / 2) is not None:
            router.mark_down(target, str(unavailable(store, error, target)))
            probe_soon(store)
    assert target is not None
    raise unavailable(store, error, target) from error


def unavailable(store: AsyncFeatureStore, error: BaseException | None, target: ReadTarget) -> PgFeaturesError:
    """The typed error for a read target that could not serve (``error``: why, if known)."""
    if error is None:
        return DatabaseUnavailableError(f"{target.name} is unavailable")
    return database_error(error, target.dsn, acquire_timeout=store.acquire_timeout,
                          last_connect_error=target.failures.cause(store.acquire_timeout / 2))


# -- rechecks of tables that cannot be served ----------------------------------------------------

async def read_failed_async(store: AsyncFeatureStore, exc: psycopg.Error, reader: Reader[Any] | BatchReader[Any] | None,
                            target: ReadTarget, conn: psycopg.AsyncConnection) -> PgFeaturesError:
    """The error for a statement the server rejected; a missing table or column is re-checked
    in the catalog so the error (and the tables left out from now on) name it."""
    error = database_error(exc, target.dsn)
    if not isinstance(error, SchemaDriftError) or reader is None:
        return error
    checks = await recheck_tables_async(store, list(reader.tables))
    if checks is not None and store.health.broken & set(reader.tables):
        return store.health.error(reader.tables)
    return error


async def recheck_async(store: AsyncFeatureStore, tables: Sequence[str]) -> None:
    """Re-check the broken ones of ``tables`` (if due); raise SchemaDriftError if any is still broken."""
    due = store.health.due(tables)
    if due:
        await recheck_tables_async(store, due)
    if not store.health.broken.isdisjoint(tables):
        raise store.health.error(tables)


async def recheck_tables_async(store: AsyncFeatureStore, tables: list[str]) -> dict[str, TableCheck] | None:
    """The catalog checks of ``tables`` on the first read target that answers (None if none does),
    recorded in the store's table health."""
    router = store.router
    for target in router.order() if router else ():
        try:
            checks = await inspect_target_async(store, target, tables)
        except PgFeaturesError:
            continue
        store.health.update(checks)
        return checks
    return None


# -- probes of read targets that are down --------------------------------------------------------

def probe_soon(store: AsyncFeatureStore) -> None:
    """Start a background probe of every read target that is down (or lagging) and due for one."""
    router = store.router
    if router is None:
        return
    for target in router.due_for_probe(time.monotonic()):
        store.background.spawn(probe_async, store, target)


async def probe_async(store: AsyncFeatureStore, target: ReadTarget) -> None:
    """Probe ``target`` (``probe_once_async``); while it stays down, again every PROBE_INTERVAL
    until it serves or the store closes. A target that is down is not left waiting for reads to
    start probes: a read waits up to acquire_timeout on a pool that has no connection, and the
    target comes back within a probe of the database (and the credential provider) answering."""
    router = store.router
    try:
        while router is not None and store.router is router:
            await probe_once_async(store, router, target)
            if not target.down:
                return
            await store.background.sleep(PROBE_INTERVAL)
    finally:
        target.probing = False


async def probe_once_async(store: AsyncFeatureStore, router: Router, target: ReadTarget) -> None:
    """Is ``target`` serving? A fresh connection (through the credential provider) measures its lag;
    if it answers, the pool's dead connections are replaced (a pool with none left is renewed) and
    the target is used again once its pool has a live connection."""
    try:
        conn = await connect_async(target.dsn, "pgfeatures-probe", store.connect_timeout,
                                   credentials=store.credentials, pooler=store.pooler)
        try:
            cur = await conn.execute(LAG_QUERY, prepare=False)
            row = await cur.fetchone()
        finally:
            await conn.close()
        router.set_lag(target, row[0] if row else None)
        if target.down:
            await target.pool.check()
            if not target.pool.get_stats().get("pool_available", 0):
                await renew_pool_async(store, target)
            if target.pool.get_stats().get("pool_available", 0):
                router.mark_up(target)
    except (PgFeaturesError, psycopg.Error, PoolClosed) as exc:
        target.reason = str(exc)
    except Exception:  # a probe must never take the store down; log and try again later
        logger.exception("pgfeatures: probe of %s failed", target.name)


# -- renewals of read pools at max_lifetime ------------------------------------------------------

def renew_soon(store: AsyncFeatureStore) -> None:
    """Start, in the background, the renewal of every read pool due for one (``max_lifetime``)."""
    router = store.router
    if router is None:
        return
    for target in router.due_for_renewal(time.monotonic()):
        store.background.spawn(renew_expiring_async, store, target)
