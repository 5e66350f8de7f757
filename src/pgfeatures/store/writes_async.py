"""The store's write path (async source): the write pool, and the upserts of live updates.

Owns, for ``store_async.AsyncFeatureStore`` (and, generated from this module by
``tools/async_to_sync.py``, for the sync store):

- **the write pool**: the store's separate pool on the primary, or ReadOnlyStoreError without one;
- **live updates**: the upsert plans of ``write.py`` sent in one round-trip and one transaction
  (a statement per column set, in a pipeline), on a connection known alive: one the server closed
  while idle is found before anything is sent (``connections.went_away``) and replaced. An update
  is never sent twice: a connection lost after sending leaves the outcome unknown, and says so
  (WriteOutcomeUnknownError), because a resend could overwrite a newer write made meanwhile.

The public write methods (``write_connection``, ``write_features``, ``update_features*``) and
their documentation stay in ``store_async.py``; bulk loads are ``pgfeatures.load``.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from ..connections import database_error, redact, went_away
from ..connections.concurrency import sleep_async
from ..errors import ConflictError, ReadOnlyStoreError, StoreClosedError, WriteOutcomeUnknownError
from ..write import UpdateCount, future_error
from .opening_async import renew_write_pool_async

if TYPE_CHECKING:
    from .store_async import AsyncFeatureStore

logger = logging.getLogger("pgfeatures")


def write_pool(store: AsyncFeatureStore) -> AsyncConnectionPool:
    """The store's write pool. Raises StoreClosedError when the store is not open, ReadOnlyStoreError
    when it has no write pool."""
    if store.write_pool is None:
        if store.router is None:
            raise StoreClosedError("the store is not open: call open() or use it as a context manager")
        raise ReadOnlyStoreError("this store has no write pool (write_pool_size=0, or a read-only service): "
                                 "it cannot write")
    return store.write_pool


async def upsert_async(conn: psycopg.AsyncConnection, plans: list[Any], prepare: bool) -> UpdateCount:
    """Send the upsert ``plans`` (``(Upsert, params)`` pairs) on ``conn``: one statement, or one per
    column set in one transaction and one round-trip. Raises FeatureValueError when the server
    refused a guarded batch (an event time too far ahead of its clock: ``write.future_error``)."""
    keys = sum(len(params[0]) for _, params in plans)
    if len(plans) == 1:
        cur = psycopg.AsyncRawCursor(conn)
        await cur.execute(plans[0][0].statement, plans[0][1], prepare=prepare)
        written = await _written_async(plans, [cur])
        return UpdateCount(written, keys - written)
    # Rows setting different columns: a statement per column set, one transaction, one round-trip.
    # One cursor per statement: in a pipeline a cursor keeps only its last result (and rowcount).
    control = psycopg.AsyncRawCursor(conn)
    cursors = [psycopg.AsyncRawCursor(conn) for _ in plans]
    try:
        async with conn.pipeline():
            await control.execute(b"BEGIN", prepare=False)
            # The rows of all column sets locked first, in key order (the order every writer takes), so two
            # such transactions never hold one key each while waiting for the other's.
            locked = sorted({k for _, params in plans for k in params[0]})
            await control.execute(plans[0][0].lock_statement, (locked,), prepare=prepare)
            for cur, (upsert, params) in zip(cursors, plans):
                await cur.execute(upsert.statement, params, prepare=prepare)
            await control.execute(b"COMMIT", prepare=False)
    except BaseException:
        if not conn.broken:
            await conn.rollback()
        raise
    written = await _written_async(plans, cursors)
    return UpdateCount(written, keys - written)


async def _written_async(plans: list[Any], cursors: list[Any]) -> int:
    """Rows the statements wrote: their rowcounts, or what guarded statements returned (after
    checking that the server did not refuse the batch)."""
    if not plans or not plans[0][0].guarded:
        return sum(cur.rowcount for cur in cursors)
    rows = [await cur.fetchone() for cur in cursors]
    error = future_error(plans, rows[0][1])
    if error is not None:
        raise error
    return sum(int(row[0]) for row in rows)


async def write_conn_async(store: AsyncFeatureStore) -> tuple[AsyncConnectionPool, psycopg.AsyncConnection]:
    """The store's write pool and a live connection of it: a pooled connection the server closed
    while it sat idle (found without a round-trip, ``connections.went_away``) is discarded, the
    pool checked, and another taken, so nothing is ever sent on a dead connection that was known
    dead. A pool that gives none (busy, closed, primary down) raises DatabaseUnavailableError
    naming why; one that gave none because its connections died and psycopg_pool is still backing
    off is renewed if the primary answers now (``renew_write_pool_async``)."""
    pool = write_pool(store)
    for attempt in range(store.write_pool_size + 2):
        pool, conn = await _getconn_async(store, pool)
        if attempt == store.write_pool_size + 1 or not went_away(conn):
            return pool, conn
        logger.info("pgfeatures: a pooled write connection was closed by the server; taking another")
        await conn.close()
        await pool.putconn(conn)  # closed: the pool replaces it
        if attempt == 0:
            await pool.check()  # the others died too, as a rule: replace them all now
    raise AssertionError("unreachable")


async def _getconn_async(store: AsyncFeatureStore,
                         pool: AsyncConnectionPool) -> tuple[AsyncConnectionPool, psycopg.AsyncConnection]:
    """A connection of ``pool``, or of the pool that replaced it (a renewal closes the old pool
    under its waiters); errors as ``write_conn_async``."""
    try:
        return pool, await pool.getconn()
    except PoolTimeout as exc:
        failure: Exception = exc
    except PoolClosed as exc:
        failure = exc
    if isinstance(failure, PoolClosed):
        renewed = store.write_pool is not None and store.write_pool is not pool
    else:
        renewed = store.write_failures.error is not None and await renew_write_pool_async(store, pool)
    if renewed:
        pool = write_pool(store)
        try:
            return pool, await pool.getconn()
        except (PoolTimeout, PoolClosed) as exc:
            failure = exc
    raise database_error(failure, store.dsn or "", acquire_timeout=store.acquire_timeout,
                         last_connect_error=store.write_failures.cause(store.acquire_timeout / 2)) from None


CONFLICT_RETRIES = 3  # a live update rolled back by a deadlock or serialization failure is sent again this often


async def apply_updates_async(store: AsyncFeatureStore, plans: list[Any]) -> UpdateCount:
    """Apply the upsert ``plans`` through the store's write pool, on a connection known alive
    (``write_conn_async``). Sent once: a connection lost after the update was sent raises
    WriteOutcomeUnknownError (the server may have committed it; a resend could overwrite a newer
    write made meanwhile). An update PostgreSQL rolled back for a conflict with a concurrent write
    (deadlock, serialization failure) certainly did not apply: it is sent again, up to
    CONFLICT_RETRIES times after a short random pause, then raises ConflictError. Raises as
    ``update_features_batch``."""
    if not plans:  # no rows: nothing to send (and no plan to take the lock statement from)
        return UpdateCount(0)
    for attempt in range(CONFLICT_RETRIES + 1):
        pool, conn = await write_conn_async(store)
        try:
            return await upsert_async(conn, plans, store._prepare)
        except psycopg.OperationalError as exc:
            if conn.broken:
                raise WriteOutcomeUnknownError(
                    f"the connection to the primary {redact(store.dsn or '')} was lost after the update was sent "
                    f"({str(exc).strip()}): it may or may not have been applied, and was not sent again (read the "
                    "rows to know; a resend is harmless when the rows carry updated_at: newest wins)") from exc
            error = database_error(exc, store.dsn or "")
        except psycopg.Error as exc:
            error = database_error(exc, store.dsn or "")
        finally:
            await pool.putconn(conn)
        if not isinstance(error, ConflictError) or attempt == CONFLICT_RETRIES:
            raise error
        logger.info("pgfeatures: a live update was rolled back by a conflicting write (%s); sending it again", error)
        await sleep_async(random.uniform(0.002, 0.02) * (attempt + 1))
    raise AssertionError("unreachable")
