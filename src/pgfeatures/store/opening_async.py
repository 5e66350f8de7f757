"""Opening a store (async source): everything ``open()`` does before the store serves.

Owns, for ``store_async.AsyncFeatureStore`` (and, generated from this module by
``tools/async_to_sync.py``, for the sync store):

- **catalog inspection**: the live catalog compared with the definitions in one statement, on the
  first read target that answers at open (``first_inspection_async``), and for one target when a
  broken table is re-checked (``inspect_target_async``, used by ``reads_async.py``);
- **materialized services**: which are built and so read from their serving rows;
- **read functions** (``pooler="transaction"``): the warm readers in their function form, each
  function created where it is missing;
- **the pools**: their settings, opening them (read pools per target, the write pool), waiting for
  the read pools to fill, renewing them (after an outage, and at ``max_lifetime``), closing them;
  and the warm-up of every new read connection (session setting, warm-up statements prepared,
  its raw cursor).

The order of the steps, and what a failed step means, stay in ``AsyncFeatureStore.open``.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from ..connections import ConnectFailures, connect_async, database_error, getconn_oldest_async, make_async_pool
from ..connections.concurrency import AsyncBackground
from ..errors import DatabaseUnavailableError, PgFeaturesError, SchemaDriftError
from ..materialize.build_async import states_async
from ..reader import BatchReader
from ..reader.functions import EXISTING_FUNCTIONS, read_function
from ..schema import CATALOG_QUERY, TableCheck
from .base import (
    PROBE_INTERVAL,
    READ_CURSOR,
    READ_SESSION_SETUP,
    RENEWAL_RETRY,
    ReadTarget,
    Router,
    Served,
    target_name,
    warmup_statements,
)

if TYPE_CHECKING:
    from .store_async import AsyncFeatureStore

logger = logging.getLogger("pgfeatures")

SLOW_WARMUP = 1.0  # seconds: a connection warm-up slower than this is logged


# -- catalog inspection --------------------------------------------------------------------------


async def first_inspection_async(store: AsyncFeatureStore, router: Router, served: Served) -> dict[str, TableCheck]:
    """The catalog checks of ``served``'s tables, read on the first read target that answers;
    unreachable ones are marked down."""
    errors: list[PgFeaturesError] = []
    for target in router.targets:
        if target.down and any(not t.down for t in router.targets):
            continue
        try:
            return await inspect_target_async(store, target, list(served.registry.tables), served)
        except DatabaseUnavailableError as exc:
            errors.append(exc)
            router.mark_down(target, str(exc))
    raise errors[0]


async def inspect_target_async(
    store: AsyncFeatureStore, target: ReadTarget, tables: list[str], served: Served | None = None
) -> dict[str, TableCheck]:
    """The catalog checks of ``tables`` (of ``served``, else what the store serves now) on ``target``,
    through a fresh connection."""
    conn = await connect_async(
        target.dsn, "pgfeatures-check", store.connect_timeout, credentials=store.credentials, pooler=store.pooler
    )
    try:
        return await _catalog_async(served or store._served, conn, tables)
    except psycopg.Error as exc:
        raise database_error(exc, target.dsn) from exc
    finally:
        await conn.close()


async def _catalog_async(served: Served, conn: psycopg.AsyncConnection, tables: list[str]) -> dict[str, TableCheck]:
    cur = psycopg.AsyncRawCursor(conn)
    await cur.execute(CATALOG_QUERY, (served.registry.schema, tables), prepare=False)
    return served.health.from_rows(await cur.fetchall())


# -- materialized services and read functions ----------------------------------------------------


async def find_materialized_async(store: AsyncFeatureStore, router: Router, served: Served) -> None:
    """Which of ``served``'s materialized services are built (their serving rows exist for these
    definitions and follow the tables): those are read from their serving rows; the others by the
    flexible read, with a warning saying why."""
    registry = served.registry
    wanted = [name for name, svc in registry.services.items() if svc.materialize]
    if not wanted:
        return
    target = next((t for t in router.targets if not t.down), router.targets[0])
    conn = await connect_async(
        target.dsn, "pgfeatures-check", store.connect_timeout, credentials=store.credentials, pooler=store.pooler
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


async def read_functions_async(store: AsyncFeatureStore, router: Router, served: Served) -> dict[bytes, Any]:
    """``pooler="transaction"``: the warm readers in their function form (see reader/functions.py),
    each function created on the primary where it is missing. A shape whose function cannot be
    had (no CREATE privilege, primary down and not created by ``pgfeatures init``) reads unprepared."""
    forms = [(r, f) for r in served.warm if (f := read_function(r)) is not None]
    if not forms:
        return {}
    names = list(dict.fromkeys(f.name for _, f in forms))
    existing: set[str] = set()
    for dsn in [store.dsn or "", *(t.dsn for t in router.targets)]:
        try:
            conn = await connect_async(
                dsn, "pgfeatures-init", store.connect_timeout, credentials=store.credentials, pooler=store.pooler
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


async def prepare_everywhere_async(store: AsyncFeatureStore, router: Router, served: Served) -> int:
    """Prepare ``served``'s warm readers on every idle connection of every read pool, one connection
    at a time (the rest keep serving), before a reload swaps ``served`` in. A connection that is busy
    throughout, or opened meanwhile, prepares the new statements at their first use instead. Returns
    the connections prepared."""
    if not store._prepare:
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
        for _ in range(3 * store.pool_size):
            try:
                conn = await getconn_oldest_async(pool, timeout=store.acquire_timeout)
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
            if len(seen) >= pool.get_stats().get("pool_size", store.pool_size):
                break
    return prepared


# -- the pools -----------------------------------------------------------------------------------

OPEN_GRACE = 10.0  # seconds a read pool may take to fill at open, beyond connect_timeout (warm-up prepares)
STALLED = (
    "its connections were opened but did not finish their warm-up (a pooler with no free server "
    "connection, e.g. PgBouncer in session mode with default_pool_size below the clients' connections, "
    "or a database that accepts logins but does not answer)"
)


async def open_pools_async(store: AsyncFeatureStore, router: Router, dsn: str) -> None:
    """Open a read pool per read target and the write pool (if any), and wait for the read pools to
    fill: a target whose pool does not fill in time is marked down. Raises DatabaseUnavailableError
    when every target is down; the pools opened so far are closed on any failure."""
    try:
        for target in router.targets:
            target.pool = make_async_pool(target.dsn, **pool_settings(store, True, target.failures))
            await target.pool.open(wait=False)
            router.renew_after(target, lifetime(store))
        if store.write_pool_size > 0:
            store.write_pool = make_async_pool(dsn, **pool_settings(store, False, store.write_failures))
            await store.write_pool.open(wait=False)  # writes are not needed to serve reads
        for target in router.targets:
            if not target.down:
                try:
                    await target.pool.wait(timeout=store.connect_timeout + OPEN_GRACE)
                except PoolTimeout:
                    router.mark_down(target, str(target.failures.cause() or STALLED))
        if all(t.down for t in router.targets):
            first = router.targets[0]
            cause = first.failures.cause()
            if cause is None:  # connected, but never finished its warm-up
                raise DatabaseUnavailableError(
                    f"no read connection ready within {store.connect_timeout + OPEN_GRACE:g}s "
                    f"at {first.name}: {STALLED}"
                )
            raise database_error(
                PoolTimeout("no connection"), first.dsn, acquire_timeout=store.connect_timeout, last_connect_error=cause
            )
    except BaseException:
        await close_pools_async(store, router)
        raise


async def filled_pool_async(
    store: AsyncFeatureStore, dsn: str, read: bool, failures: ConnectFailures
) -> AsyncConnectionPool | None:
    """A new read (``read``) or write pool on ``dsn`` once it holds its connections; None (and the
    pool closed) if it does not fill within the store's connect_timeout. A caller cancelled while
    it fills (a closing store, a client gone) leaves no pool behind: it is closed, then the
    cancellation goes on."""
    new = make_async_pool(dsn, **pool_settings(store, read, failures))
    await new.open(wait=False)
    try:
        await new.wait(timeout=store.connect_timeout)
    except PoolTimeout:
        await new.close()
        return None
    except BaseException:
        await new.close()
        raise
    return new


async def close_if_closed_async(
    store: AsyncFeatureStore, router: Router | None, *pools: AsyncConnectionPool | None
) -> bool:
    """After a renewal installed a new pool: whether the store is still the open store it was when
    the renewal started (``router``: the read targets it had). If it closed (or closed and opened
    again) meanwhile, its close may have seen either pool, so ``pools`` (the new and the replaced
    one) are closed here; closing a closed pool does nothing."""
    if store.router is not None and store.router is router:
        return False
    for pool in pools:
        if pool is not None:
            await pool.close(timeout=0)
    return True


async def renew_pool_async(store: AsyncFeatureStore, target: ReadTarget, why: str = "answers again") -> bool:
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
    router = store.router
    if router is None or not any(
        t is target for t in router.targets
    ):  # the store closed (or reopened) since the probe began
        return False
    failures = ConnectFailures()
    new = await filled_pool_async(store, target.dsn, True, failures)
    if new is None:
        target.renewal_failure = str(
            failures.cause() or f"its connections were not ready within {store.connect_timeout:g}s"
        )
        return False
    old, target.pool, target.failures = target.pool, new, failures
    if await close_if_closed_async(store, router, new, old):
        return False
    router.renew_after(target, lifetime(store))
    logger.info("pgfeatures: %s %s; its pool renewed", target.name, why)
    if old is not None:
        await old.close(timeout=0)
    return True


async def renew_expiring_async(store: AsyncFeatureStore, target: ReadTarget) -> None:
    """``max_lifetime``: replace ``target``'s pool by a new one, filled while the old one serves
    (psycopg_pool's own max_lifetime closes a connection before its replacement is made, and reads
    wait out the new login and warm-up: with a provider slower than ``acquire_timeout``, they
    failed). A renewal that cannot fill (the provider or the database failing) leaves the old
    connections serving, logs why, and is tried again after RENEWAL_RETRY seconds."""
    router = store.router
    renewed = False
    try:
        renewed = await renew_pool_async(store, target, "reached max_lifetime")
    finally:
        target.renewing = False
    if not renewed and router is not None and store.router is router:
        retry = min(RENEWAL_RETRY, store.max_lifetime)
        logger.warning(
            "pgfeatures: %s: renewing the read pool (max_lifetime) failed (%s); its connections keep "
            "serving, tried again in %gs",
            target.name,
            target.renewal_failure,
            retry,
        )
        router.renew_after(target, retry)


def lifetime(store: AsyncFeatureStore) -> float:
    """Seconds until a new read pool is renewed: 90-100 % of max_lifetime, so that the targets of a
    store (and the worker processes of a service) do not all renew at once."""
    return store.max_lifetime * random.uniform(0.9, 1.0)


async def renew_write_pool_async(store: AsyncFeatureStore, old: AsyncConnectionPool) -> bool:
    """Replace the write pool ``old``, which gave no connection and whose last connection attempt
    failed, once the primary answers a fresh connection: like ``renew_pool_async`` for the read
    pools, so writes need not wait out psycopg_pool's reconnection backoff after an outage. The
    primary is asked at most every PROBE_INTERVAL, counted from the end of the last attempt (writers
    that queued behind an attempt do not each try again). Returns whether the store's write pool is
    now another pool than ``old`` (renewed here or by a concurrent writer)."""
    router = store.router
    async with store._write_renewal:
        if store.write_pool is not old:
            return store.write_pool is not None
        if time.monotonic() < store._write_probe_at:
            return False
        try:
            new = await _filled_write_pool_async(store)
        finally:
            store._write_probe_at = time.monotonic() + PROBE_INTERVAL
        if new is None:
            return False
        if store.write_pool is not old:  # the store closed (or opened again) meanwhile: ``old`` is not ours
            await new.close(timeout=0)
            return False
        store.write_pool = new
        if await close_if_closed_async(store, router, new):  # a close that ran before or during the install
            return False
    logger.info(
        "pgfeatures: the primary %s answers again; the write pool renewed", target_name(store.dsn or "", "primary")
    )
    await old.close(timeout=0)
    return True


async def _filled_write_pool_async(store: AsyncFeatureStore) -> AsyncConnectionPool | None:
    """A new write pool, if the primary answers a fresh connection and the pool fills; else None."""
    dsn = store.dsn or ""
    try:
        probe = await connect_async(
            dsn, store.write_application_name, store.connect_timeout, credentials=store.credentials, pooler=store.pooler
        )
    except PgFeaturesError:
        return None
    await probe.close()
    return await filled_pool_async(store, dsn, False, store.write_failures)


async def close_pools_async(store: AsyncFeatureStore, router: Router | None) -> None:
    """Stop the store's probes and renewals, then close the read pools of ``router``'s targets and the
    store's write pool."""
    # Stopped first, and waited for: a stopped renewal closes the pool it was filling (filled_pool_async).
    # Replaced only then (the next open starts with a background of its own): a probe stopping meanwhile
    # sleeps on the stopped one, which returns at once.
    await store.background.stop(store.connect_timeout)
    store.background = AsyncBackground()
    pools = [t.pool for t in (router.targets if router else ()) if t.pool is not None]
    for pool in [*pools, *([store.write_pool] if store.write_pool is not None else [])]:
        await pool.close()
    store.write_pool = None


def pool_settings(store: AsyncFeatureStore, read: bool, failures: ConnectFailures) -> dict[str, Any]:
    """The settings of a read pool (``read``) or of the write pool, from the store's options."""

    async def configure_async(conn: psycopg.AsyncConnection) -> None:
        await warm_connection_async(store, conn)

    return {
        "size": store.pool_size if read else store.write_pool_size,
        "application_name": store.read_application_name if read else store.write_application_name,
        "connect_timeout": store.connect_timeout,
        "acquire_timeout": store.acquire_timeout,
        "reconnect_timeout": store.reconnect_timeout,
        # A read pool is renewed whole (renew_expiring_async): its connections never expire one by one.
        "max_lifetime": float("inf") if read else store.max_lifetime,
        "configure": configure_async if read else None,
        "credentials": store.credentials,
        "pooler": store.pooler,
        "failures": failures,
        "order": store.pool_order,
    }


async def warm_connection_async(store: AsyncFeatureStore, conn: psycopg.AsyncConnection) -> None:
    """Prepare the warm-up statements of what the store serves now on a new read connection, before
    it serves.

    A statement that fails because a table or column is missing is skipped (and logged): one
    broken table must not keep every connection from serving the others.
    """
    started = time.monotonic()
    cur = psycopg.AsyncRawCursor(conn)
    if store._prepare:
        await cur.execute(READ_SESSION_SETUP)
        await prepare_served_async(conn, cur, store._served)
    setattr(conn, READ_CURSOR, cur)
    seconds = time.monotonic() - started
    if seconds > SLOW_WARMUP:
        logger.warning("pgfeatures: warming a read connection took %.1fs", seconds)
