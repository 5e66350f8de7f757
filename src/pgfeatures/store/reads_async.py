"""The store's read path (async source): ``AsyncReadRouter``, which owns how a compiled read reaches
a read target (``reads.py``, generated, holds ``ReadRouter`` for the sync store).

- **the read targets and their pools**: the replicas, then the primary as fallback (``base.Router``
  orders them), a pool per target, opened and waited for at open, closed at close; every new read
  connection is warmed (session setting, what is served prepared, its raw cursor) before it serves;
- **routing and retry**: ``run_async`` takes a pooled connection of the first read target that
  serves, retries a read whose connection died under it, marks a target down and moves on to the
  next at once;
- **rechecks of broken tables**: a request touching a table that could not be served re-checks
  it in the catalog when due, and a statement rejected for a missing table or column re-checks it;
- **probes**: a background probe of every read target that is down (or lagging) brings it back;
  a target that is down is probed every PROBE_INTERVAL until it serves again;
- **renewals**: a read pool is renewed whole, at ``max_lifetime`` (started by a read that finds it
  due) and once the database answers again after an outage; the old pool serves until the new one
  holds its connections.

Probes and renewals run as the router's background work (``connections.concurrency``), stopped
and waited for at close. The statements a read sends on one connection (``execute_async``, ...)
are plain functions; the store's lifecycle and public read methods stay in ``store_async.py``.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from ..connections import (
    ConnectFailures,
    CredentialProvider,
    connect_async,
    database_error,
    filled_async,
    make_async_pool,
    prepares,
)
from ..connections.concurrency import AsyncBackground
from ..errors import DatabaseUnavailableError, PgFeaturesError, SchemaDriftError, StoreClosedError
from ..reader import BatchReader, Fetch, Reader
from ..reader.nearest import NearestReader
from ..reader.records import register_record_bytes
from ..schema import TableCheck
from .base import (
    LAG_QUERY,
    PROBE_INTERVAL,
    READ_CURSOR,
    READ_SESSION_SETUP,
    RENEWAL_RETRY,
    ReadTarget,
    Router,
    Served,
    TableHealth,
    pipeline_cursors,
    target_name,
)
from .opening_async import OPEN_GRACE, SLOW_WARMUP, STALLED, inspect_target_async, prepare_served_async
from .options import StoreOptions

logger = logging.getLogger("pgfeatures")

T = TypeVar("T")  # what a read returns (a FeatureResult, a ServiceVector, a list of them, None for ``ping``)
R = TypeVar("R", bound="Reader[Any] | BatchReader[Any] | NearestReader | None")  # the compiled reader a read runs (None: ``ping``)
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


async def execute_batch_async(
    conn: psycopg.AsyncConnection, reader: BatchReader[T], arrays: tuple[list[Any], ...], prepare: bool
) -> list[T]:
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

# -- rechecks of tables that cannot be served ----------------------------------------------------

# -- probes of read targets that are down --------------------------------------------------------

# -- renewals of read pools at max_lifetime ------------------------------------------------------


class AsyncReadRouter:
    """The read path of one store: its read targets (replicas, then the primary as fallback), a pool
    per target, their renewal (``max_lifetime``, and after an outage) and the probes that bring a
    target that is down back; reads routed and retried over them. Owns that state; the store (and
    its ``reload``) tell it what is served now (``served``: the current definitions, their readers
    and table health), which every new read connection prepares before it serves."""

    def __init__(
        self, options: StoreOptions, credentials: CredentialProvider | None, current: Callable[[], Served]
    ) -> None:
        self.options = options
        self.credentials = credentials
        self.pooler = options.pooler
        self._prepare = prepares(options.pooler)
        self.pool_size = options.pool_size
        self.connect_timeout = options.connect_timeout
        self.acquire_timeout = options.acquire_timeout
        self.max_lifetime = options.max_lifetime
        self.dsn = ""  # the primary (set by ``targets``)
        self._current = current  # the store's current Served (``reload`` swaps it)
        self.router: Router | None = None  # the targets of the open store (None: closed)
        self.background = AsyncBackground()  # probes and renewals: stopped at close

    @property
    def served(self) -> Served:
        """What the store serves now (its definitions, readers and table health)."""
        return self._current()

    @property
    def health(self) -> TableHealth:
        return self._current().health

    def targets(self, dsn: str) -> Router:
        """The read targets of a store opening on the primary ``dsn``: its replicas (``read_dsns``) and
        the primary as fallback (unless ``read_fallback=False`` with replicas), no pool yet."""
        self.dsn = dsn
        o = self.options
        replicas = [ReadTarget(target_name(d, f"replica {i + 1}"), d, False) for i, d in enumerate(o.read_dsns)]
        primary = ReadTarget(target_name(dsn, "primary"), dsn, True) if not replicas or o.read_fallback else None
        return Router(replicas, primary, o.max_replica_lag)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """A warmed read connection of the first read target that serves, with database errors
        translated (for diagnostics; reads go through ``run_async``)."""
        router = self.router
        if router is None:
            raise StoreClosedError("the store is not open: call open() or use it as a context manager")
        target = router.order()[0]
        pool = target.pool  # the connection goes back to the pool it came from, even if renewed meanwhile
        try:
            conn = await pool.getconn()
        except (PoolTimeout, PoolClosed) as exc:
            raise self.unavailable(exc, target) from None
        try:
            yield conn
        except psycopg.Error as exc:
            raise database_error(exc, target.dsn) from exc
        finally:
            await pool.putconn(conn)

    async def open_async(self, router: Router) -> None:
        """Open a read pool per target of ``router`` (see ``targets``) and wait for them to fill, then
        serve through them: a target whose pool does not fill in time is marked down. Raises DatabaseUnavailableError
        when every target is down; the pools opened so far are closed on any failure."""
        try:
            for target in router.targets:
                target.pool = make_async_pool(target.dsn, **self.pool_settings(target.failures))
                await target.pool.open(wait=False)
                router.renew_after(target, self.lifetime())
            for target in router.targets:
                if not target.down:
                    try:
                        await target.pool.wait(timeout=self.connect_timeout + OPEN_GRACE)
                    except PoolTimeout:
                        router.mark_down(target, str(target.failures.cause() or STALLED))
            if all(t.down for t in router.targets):
                first = router.targets[0]
                cause = first.failures.cause()
                if cause is None:  # connected, but never finished its warm-up
                    raise DatabaseUnavailableError(
                        f"no read connection ready within {self.connect_timeout + OPEN_GRACE:g}s "
                        f"at {first.name}: {STALLED}"
                    )
                raise database_error(
                    PoolTimeout("no connection"),
                    first.dsn,
                    acquire_timeout=self.connect_timeout,
                    last_connect_error=cause,
                )
        except BaseException:
            await self._close_pools_async(router)
            raise
        self.router = router

    async def close_async(self) -> None:
        """Stop serving: stop the probes and renewals, then close the read pools. Closing twice is harmless."""
        router, self.router = self.router, None
        await self._close_pools_async(router)

    async def _close_pools_async(self, router: Router | None) -> None:
        """Stop the probes and renewals, then close the read pools of ``router``'s targets."""
        # Stopped first, and waited for: a stopped renewal closes the pool it was filling (filled_pool_async).
        # Replaced only then (the next open starts with a background of its own): a probe stopping meanwhile
        # sleeps on the stopped one, which returns at once.
        await self.background.stop(self.connect_timeout)
        self.background = AsyncBackground()
        for pool in [t.pool for t in (router.targets if router else ()) if t.pool is not None]:
            await pool.close()

    def pool_settings(self, failures: ConnectFailures) -> dict[str, Any]:
        """The settings of a read pool, from the store's options (the write pool's: ``writes_async``)."""

        async def configure_async(conn: psycopg.AsyncConnection) -> None:
            await self.warm_connection_async(conn)

        o = self.options
        return {
            "size": o.pool_size,
            "application_name": o.read_application_name,
            "connect_timeout": o.connect_timeout,
            "acquire_timeout": o.acquire_timeout,
            "reconnect_timeout": o.reconnect_timeout,
            # A read pool is renewed whole (renew_expiring_async): its connections never expire one by one.
            "max_lifetime": float("inf"),
            "configure": configure_async,
            "credentials": self.credentials,
            "pooler": o.pooler,
            "failures": failures,
            "order": o.pool_order,
        }

    async def warm_connection_async(self, conn: psycopg.AsyncConnection) -> None:
        """Prepare the warm-up statements of what the store serves now on a new read connection, before
        it serves.

        A statement that fails because a table or column is missing is skipped (and logged): one
        broken table must not keep every connection from serving the others.
        """
        started = time.monotonic()
        cur = psycopg.AsyncRawCursor(conn)
        if conn.info.encoding == "utf-8":  # the compiled record parsers decode strings as UTF-8
            register_record_bytes(cur)
        if self._prepare:
            await cur.execute(READ_SESSION_SETUP)
            await prepare_served_async(conn, cur, self.served)
        setattr(conn, READ_CURSOR, cur)
        seconds = time.monotonic() - started
        if seconds > SLOW_WARMUP:
            logger.warning("pgfeatures: warming a read connection took %.1fs", seconds)

    async def run_async(self, execute: Execute[R, A, T], reader: R, args: A) -> T:
        """Run ``execute(conn, reader, args, prepare)`` on a read target of the store, moving on to the
        next target when one fails.

        getconn/putconn rather than ``pool.connection()``: with autocommit there is no transaction
        to end, and the context managers cost measurable CPU per request. A connection that died
        under the request (server restart, failover, idle kill) makes the pool check its idle
        connections; the read is retried on that target if connections survived (again for each
        further dead one, at most pool_size times), else the target is marked down and the next one
        tried. Reads are idempotent.
        """
        router = self.router
        if router is None:
            raise StoreClosedError("the store is not open: call open() or use it as a context manager")
        if self.health.broken and reader is not None and not self.health.broken.isdisjoint(reader.tables):
            await self.recheck_async(reader.tables)
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
            for attempt in range(self.pool_size + 1):
                try:
                    conn = await pool.getconn()
                except PoolTimeout as exc:
                    error = exc
                    break
                except PoolClosed as exc:
                    if self.router is None or target.pool is pool:
                        raise StoreClosedError(f"the store is closed: {exc}") from None
                    pool = target.pool  # the probe renewed it while this request waited: wait on the new one
                    continue
                try:
                    result = await execute(conn, reader, args, self._prepare)
                except psycopg.OperationalError as exc:
                    await pool.putconn(conn)
                    if not conn.broken:  # the server answered with an error: not a lost connection
                        raise database_error(exc, target.dsn) from exc
                    error = exc
                    if attempt == 0:
                        logger.info(
                            "pgfeatures: read connection to %s lost (%s); checking the pool",
                            target.name,
                            str(exc).strip(),
                        )
                        await pool.check()
                    # Retry here if connections survived, or if there is nowhere else to go
                    # (getconn then waits for the replacement the check started).
                    if target is last or pool.get_stats().get("pool_available", 0):
                        continue
                    break
                except psycopg.Error as exc:
                    await pool.putconn(conn)
                    raise (await self.read_failed_async(exc, reader, target, conn)) from exc
                except BaseException:
                    await pool.putconn(conn)
                    raise
                await pool.putconn(conn)
                if target.down:
                    router.mark_up(target)
                now = time.monotonic()
                if now >= router.next_probe_at:  # a target is down or lagging, and due for a probe
                    self.probe_soon()
                if now >= router.next_renewal_at:  # a pool is due for renewal (max_lifetime)
                    self.renew_soon()
                return result
            # Down: its connections died, or it cannot make new ones (or waits on a credential provider
            # that has not answered). A pool that is merely busy (a timeout with nothing failing) is not
            # down: the read spills to the next target.
            if not isinstance(error, PoolTimeout) or target.failures.cause(self.acquire_timeout / 2) is not None:
                router.mark_down(target, str(self.unavailable(error, target)))
                self.probe_soon()
        assert target is not None
        raise self.unavailable(error, target) from error

    def unavailable(self, error: BaseException | None, target: ReadTarget) -> PgFeaturesError:
        """The typed error for a read target that could not serve (``error``: why, if known)."""
        if error is None:
            return DatabaseUnavailableError(f"{target.name} is unavailable")
        return database_error(
            error,
            target.dsn,
            acquire_timeout=self.acquire_timeout,
            last_connect_error=target.failures.cause(self.acquire_timeout / 2),
        )

    async def read_failed_async(
        self,
        exc: psycopg.Error,
        reader: Reader[Any] | BatchReader[Any] | NearestReader | None,
        target: ReadTarget,
        conn: psycopg.AsyncConnection,
    ) -> PgFeaturesError:
        """The error for a statement the server rejected; a missing table or column is re-checked
        in the catalog so the error (and the tables left out from now on) name it."""
        error = database_error(exc, target.dsn)
        if not isinstance(error, SchemaDriftError) or reader is None:
            return error
        checks = await self.recheck_tables_async(list(reader.tables))
        if checks is not None and self.health.broken & set(reader.tables):
            return self.health.error(reader.tables)
        return error

    async def recheck_async(self, tables: Sequence[str]) -> None:
        """Re-check the broken ones of ``tables`` (if due); raise SchemaDriftError if any is still broken."""
        due = self.health.due(tables)
        if due:
            await self.recheck_tables_async(due)
        if not self.health.broken.isdisjoint(tables):
            raise self.health.error(tables)

    async def recheck_tables_async(self, tables: list[str]) -> dict[str, TableCheck] | None:
        """The catalog checks of ``tables`` on the first read target that answers (None if none does),
        recorded in the store's table health."""
        router = self.router
        for target in router.order() if router else ():
            try:
                checks = await inspect_target_async(self, target, tables)
            except PgFeaturesError:
                continue
            self.health.update(checks)
            return checks
        return None

    def probe_soon(self) -> None:
        """Start a background probe of every read target that is down (or lagging) and due for one."""
        router = self.router
        if router is None:
            return
        for target in router.due_for_probe(time.monotonic()):
            self.background.spawn(self.probe_async, target)

    async def probe_async(self, target: ReadTarget) -> None:
        """Probe ``target`` (``probe_once_async``); while it stays down, again every PROBE_INTERVAL
        until it serves or the store closes. A target that is down is not left waiting for reads to
        start probes: a read waits up to acquire_timeout on a pool that has no connection, and the
        target comes back within a probe of the database (and the credential provider) answering."""
        router = self.router
        try:
            while router is not None and self.router is router:
                await self.probe_once_async(router, target)
                if not target.down:
                    return
                await self.background.sleep(PROBE_INTERVAL)
        finally:
            target.probing = False

    async def probe_once_async(self, router: Router, target: ReadTarget) -> None:
        """Is ``target`` serving? A fresh connection (through the credential provider) measures its lag;
        if it answers, the pool's dead connections are replaced (a pool with none left is renewed) and
        the target is used again once its pool has a live connection."""
        try:
            conn = await connect_async(
                target.dsn, "pgfeatures-probe", self.connect_timeout, credentials=self.credentials, pooler=self.pooler
            )
            try:
                cur = await conn.execute(LAG_QUERY, prepare=False)
                row = await cur.fetchone()
            finally:
                await conn.close()
            router.set_lag(target, row[0] if row else None)
            if target.down:
                await target.pool.check()
                if not target.pool.get_stats().get("pool_available", 0):
                    await self.renew_pool_async(target)
                if target.pool.get_stats().get("pool_available", 0):
                    router.mark_up(target)
        except (PgFeaturesError, psycopg.Error, PoolClosed) as exc:
            target.reason = str(exc)
        except Exception:  # a probe must never take the store down; log and try again later
            logger.exception("pgfeatures: probe of %s failed", target.name)

    def renew_soon(self) -> None:
        """Start, in the background, the renewal of every read pool due for one (``max_lifetime``)."""
        router = self.router
        if router is None:
            return
        for target in router.due_for_renewal(time.monotonic()):
            self.background.spawn(self.renew_expiring_async, target)

    async def renew_expiring_async(self, target: ReadTarget) -> None:
        """``max_lifetime``: replace ``target``'s pool by a new one, filled while the old one serves
        (psycopg_pool's own max_lifetime closes a connection before its replacement is made, and reads
        wait out the new login and warm-up: with a provider slower than ``acquire_timeout``, they
        failed). A renewal that cannot fill (the provider or the database failing) leaves the old
        connections serving, logs why, and is tried again after RENEWAL_RETRY seconds."""
        router = self.router
        renewed = False
        try:
            renewed = await self.renew_pool_async(target, "reached max_lifetime")
        finally:
            target.renewing = False
        if not renewed and router is not None and self.router is router:
            retry = min(RENEWAL_RETRY, self.max_lifetime)
            logger.warning(
                "pgfeatures: %s: renewing the read pool (max_lifetime) failed (%s); its connections keep "
                "serving, tried again in %gs",
                target.name,
                target.renewal_failure,
                retry,
            )
            router.renew_after(target, retry)

    def lifetime(self) -> float:
        """Seconds until a new read pool is renewed: 90-100 % of max_lifetime, so that the targets of a
        store (and the worker processes of a service) do not all renew at once."""
        return self.max_lifetime * random.uniform(0.9, 1.0)

    async def renew_pool_async(self, target: ReadTarget, why: str = "answers again") -> bool:
        """Replace ``target``'s pool by a new one once the new one holds its connections; requests
        waiting on the old one retry on the new one, and those using its connections finish on them.

        Done once the database answers again but the pool has no connection: its reconnection attempts
        wait out psycopg_pool's backoff (1, 2, 4 s ...), so after an outage of a few seconds the old
        pool could stay empty for seconds more (3.1 s measured in the soak); the new pool connects at
        once. And at ``max_lifetime`` (``renew_expiring_async``): the old pool serves until the new
        one is ready. The new pool records its failures to connect in a record of its own, which
        becomes the target's once installed (a renewal filling must not make the old pool's timeouts
        look like the new pool's pending provider calls).

        Returns whether the pool was replaced (False: the new pool did not fill, or the store closed
        meanwhile: then both pools are closed)."""
        router = self.router
        if router is None or not any(
            t is target for t in router.targets
        ):  # the store closed (or reopened) since the probe began
            return False
        failures = ConnectFailures()
        new = await self.filled_pool_async(target.dsn, failures)
        if new is None:
            target.renewal_failure = str(
                failures.cause() or f"its connections were not ready within {self.connect_timeout:g}s"
            )
            return False
        old, target.pool, target.failures = target.pool, new, failures
        if await self.close_if_closed_async(router, new, old):
            return False
        router.renew_after(target, self.lifetime())
        logger.info("pgfeatures: %s %s; its pool renewed", target.name, why)
        if old is not None:
            await old.close(timeout=0)
        return True

    async def filled_pool_async(self, dsn: str, failures: ConnectFailures) -> AsyncConnectionPool | None:
        """A new read pool on ``dsn`` once it holds its connections; None (and the
        pool closed) if it does not fill within the store's connect_timeout. A caller cancelled while
        it fills (a closing store, a client gone) leaves no pool behind: it is closed, then the
        cancellation goes on."""
        return await filled_async(make_async_pool(dsn, **self.pool_settings(failures)), self.connect_timeout)

    async def close_if_closed_async(self, router: Router | None, *pools: AsyncConnectionPool | None) -> bool:
        """After a renewal installed a new pool: whether the store is still the open store it was when
        the renewal started (``router``: the read targets it had). If it closed (or closed and opened
        again) meanwhile, its close may have seen either pool, so ``pools`` (the new and the replaced
        one) are closed here; closing a closed pool does nothing."""
        if self.router is not None and self.router is router:
            return False
        for pool in pools:
            if pool is not None:
                await pool.close(timeout=0)
        return True
