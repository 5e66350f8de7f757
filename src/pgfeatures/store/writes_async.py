"""The store's write path (async source): ``AsyncWritePath``, which owns the write pool and sends
the upserts of live updates (``writes.py``, generated, holds ``WritePath`` for the sync store).

- **the write pool**: the store's separate pool on the primary, opened and closed with the store,
  renewed after an outage once the primary answers (rather than waiting out psycopg_pool's
  reconnection backoff), or ReadOnlyStoreError without one;
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
import time
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from ..connections import (
    ConnectFailures,
    CredentialProvider,
    connect_async,
    database_error,
    filled_async,
    make_async_pool,
    redact,
    went_away,
)
from ..connections.concurrency import AsyncLock, sleep_async
from ..errors import (
    ConflictError,
    PgFeaturesError,
    ReadOnlyStoreError,
    StoreClosedError,
    WriteOutcomeUnknownError,
)
from ..write import UpdateCount, future_error
from .base import PROBE_INTERVAL, target_name
from .options import StoreOptions

logger = logging.getLogger("pgfeatures")

CONFLICT_RETRIES = 3  # a live update rolled back by a deadlock or serialization failure is sent again this often


class AsyncWritePath:
    """The write path of one store: its write pool on the primary (none with ``write_pool_size=0``),
    and the live updates sent through it. Safe to share between tasks (threads, for the sync one)."""

    def __init__(self, options: StoreOptions, credentials: CredentialProvider | None, prepare: bool):
        self.options = options
        self.credentials = credentials
        self.prepare = prepare  # prepared statements (not behind a transaction-mode pooler)
        self.dsn = ""
        self.pool: AsyncConnectionPool | None = None
        self.failures = ConnectFailures()  # why the pool could not connect, if it could not
        self._opened: object | None = None  # a token per open (None: closed): a renewal installs into its own
        self._renewal = AsyncLock()
        self._probe_at = 0.0

    # -- lifecycle ----------------------------------------------------------------------------------

    async def open(self, dsn: str) -> None:
        """Start the write pool on ``dsn`` (the primary), without waiting for it to fill: writes are not
        needed to serve reads. Nothing without a write pool."""
        self.dsn = dsn
        self._opened = object()
        if self.options.write_pool_size > 0:
            self.pool = self._new_pool()
            await self.pool.open(wait=False)

    async def close(self) -> None:
        """Close the write pool; writes fail with StoreClosedError from now on. Closing twice is harmless."""
        self._opened = None
        pool, self.pool = self.pool, None
        if pool is not None:
            await pool.close()

    def _new_pool(self) -> AsyncConnectionPool:
        o = self.options
        return make_async_pool(
            self.dsn,
            size=o.write_pool_size,
            application_name=o.write_application_name,
            connect_timeout=o.connect_timeout,
            acquire_timeout=o.acquire_timeout,
            reconnect_timeout=o.reconnect_timeout,
            max_lifetime=o.max_lifetime,
            credentials=self.credentials,
            pooler=o.pooler,
            failures=self.failures,
            order=o.pool_order,
        )

    def writable(self) -> AsyncConnectionPool:
        """The write pool. Raises StoreClosedError when the store is not open, ReadOnlyStoreError when
        it has no write pool."""
        if self.pool is None:
            if self._opened is None:
                raise StoreClosedError("the store is not open: call open() or use it as a context manager")
            raise ReadOnlyStoreError(
                "this store has no write pool (write_pool_size=0, or a read-only service): it cannot write"
            )
        return self.pool

    # -- connections --------------------------------------------------------------------------------

    async def connection_async(self) -> tuple[AsyncConnectionPool, psycopg.AsyncConnection]:
        """The write pool and a live connection of it: a pooled connection the server closed while it
        sat idle (found without a round-trip, ``connections.went_away``) is discarded, the pool
        checked, and another taken, so nothing is ever sent on a dead connection that was known
        dead. A pool that gives none (busy, closed, primary down) raises DatabaseUnavailableError
        naming why; one that gave none because its connections died and psycopg_pool is still backing
        off is renewed if the primary answers now (``renew_async``)."""
        pool = self.writable()
        size = self.options.write_pool_size
        for attempt in range(size + 2):
            pool, conn = await self._getconn_async(pool)
            if attempt == size + 1 or not went_away(conn):
                return pool, conn
            logger.info("pgfeatures: a pooled write connection was closed by the server; taking another")
            await conn.close()
            await pool.putconn(conn)  # closed: the pool replaces it
            if attempt == 0:
                await pool.check()  # the others died too, as a rule: replace them all now
        raise AssertionError("unreachable")

    async def _getconn_async(self, pool: AsyncConnectionPool) -> tuple[AsyncConnectionPool, psycopg.AsyncConnection]:
        """A connection of ``pool``, or of the pool that replaced it (a renewal closes the old pool
        under its waiters); errors as ``connection_async``."""
        try:
            return pool, await pool.getconn()
        except PoolTimeout as exc:
            failure: Exception = exc
        except PoolClosed as exc:
            failure = exc
        if isinstance(failure, PoolClosed):
            renewed = self.pool is not None and self.pool is not pool
        else:
            renewed = self.failures.error is not None and await self.renew_async(pool)
        if renewed:
            pool = self.writable()
            try:
                return pool, await pool.getconn()
            except (PoolTimeout, PoolClosed) as exc:
                failure = exc
        timeout = self.options.acquire_timeout
        raise database_error(
            failure, self.dsn, acquire_timeout=timeout, last_connect_error=self.failures.cause(timeout / 2)
        ) from None

    # -- renewal after an outage --------------------------------------------------------------------

    async def renew_async(self, old: AsyncConnectionPool) -> bool:
        """Replace the write pool ``old``, which gave no connection and whose last connection attempt
        failed, once the primary answers a fresh connection: like a read pool's renewal, so writes need
        not wait out psycopg_pool's reconnection backoff after an outage. The primary is asked at most
        every PROBE_INTERVAL, counted from the end of the last attempt (writers that queued behind an
        attempt do not each try again). Returns whether the write pool is now another pool than
        ``old`` (renewed here or by a concurrent writer)."""
        opened = self._opened
        async with self._renewal:
            if self.pool is not old:
                return self.pool is not None
            if time.monotonic() < self._probe_at:
                return False
            try:
                new = await self._filled_async()
            finally:
                self._probe_at = time.monotonic() + PROBE_INTERVAL
            if new is None:
                return False
            if self.pool is not old or self._opened is not opened or opened is None:
                # The store closed (or closed and opened again) meanwhile: ``old`` is not ours to replace.
                await new.close(timeout=0)
                return False
            self.pool = new
        logger.info(
            "pgfeatures: the primary %s answers again; the write pool renewed", target_name(self.dsn, "primary")
        )
        await old.close(timeout=0)
        return True

    async def _filled_async(self) -> AsyncConnectionPool | None:
        """A new write pool, if the primary answers a fresh connection and the pool fills in
        connect_timeout; else None. A caller cancelled meanwhile leaves no pool behind."""
        o = self.options
        try:
            probe = await connect_async(
                self.dsn, o.write_application_name, o.connect_timeout, credentials=self.credentials, pooler=o.pooler
            )
        except PgFeaturesError:
            return None
        await probe.close()
        return await filled_async(self._new_pool(), o.connect_timeout)

    # -- live updates -------------------------------------------------------------------------------

    async def apply_async(self, plans: list[Any]) -> UpdateCount:
        """Apply the upsert ``plans`` through the write pool, on a connection known alive
        (``connection_async``). Sent once: a connection lost after the update was sent raises
        WriteOutcomeUnknownError (the server may have committed it; a resend could overwrite a newer
        write made meanwhile). An update PostgreSQL rolled back for a conflict with a concurrent write
        (deadlock, serialization failure) certainly did not apply: it is sent again, up to
        CONFLICT_RETRIES times after a short random pause, then raises ConflictError. Raises as
        ``update_features_batch``."""
        if not plans:  # no rows: nothing to send (and no plan to take the lock statement from)
            return UpdateCount(0)
        for attempt in range(CONFLICT_RETRIES + 1):
            pool, conn = await self.connection_async()
            try:
                return await upsert_async(conn, plans, self.prepare)
            except psycopg.OperationalError as exc:
                if conn.broken:
                    raise WriteOutcomeUnknownError(
                        f"the connection to the primary {redact(self.dsn)} was lost after the update was sent "
                        f"({str(exc).strip()}): it may or may not have been applied, and was not sent again (read "
                        "the rows to know; a resend is harmless when the rows carry updated_at: newest wins)"
                    ) from exc
                error = database_error(exc, self.dsn)
            except psycopg.Error as exc:
                error = database_error(exc, self.dsn)
            finally:
                await pool.putconn(conn)
            if not isinstance(error, ConflictError) or attempt == CONFLICT_RETRIES:
                raise error
            logger.info(
                "pgfeatures: a live update was rolled back by a conflicting write (%s); sending it again", error
            )
            await sleep_async(random.uniform(0.002, 0.02) * (attempt + 1))
        raise AssertionError("unreachable")


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
