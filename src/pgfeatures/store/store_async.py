"""The feature store (async source).

The asyncio store is written here and the sync store is generated from it by
``tools/async_to_sync.py`` (``store_async.py`` -> ``store.py``): the two are one source and
differ only in ``await``.

A store is a thin I/O shell. Everything a request needs is compiled by ``reader.py`` (pure); the
store takes a pooled connection, sends the reader's statement(s) in one flush, fetches, and hands
the rows to the reader's decoder. Around that it owns:

- **where reads go**: the read targets (replicas, then the primary as fallback, see
  ``base.Router``), each with its own pool; a target whose connections die is marked down and
  the read moves on to the next at once, and a background probe brings it back;
- **credentials** asked for at every new connection (``credentials=``), and connections renewed
  after ``max_lifetime``;
- **what can be served**: at open the live catalog is compared with the definitions in one
  statement. ``on_drift="raise"`` (default) fails at once with a SchemaDriftError naming every
  table and column that disagrees; ``"isolate"`` serves every other table and fails only the
  requests that touch a broken table (the HTTP service and the CLI run so);
- **retries**: a read whose connection died under it (restart, failover, idle kill) is retried
  once on a fresh connection, and a live update too (an upsert applied twice leaves the same row);
  a bulk load only when nothing can have been committed and its source can be read again.

Every failure is a typed error (see ``errors.py``): DatabaseUnavailableError (down), its
subclasses AuthenticationError (credentials refused) and PoolExhaustedError (busy),
QueryTimeoutError, SchemaDriftError, StoreClosedError, ReadOnlyStoreError, DatabaseError.
"""

from __future__ import annotations

import asyncio  # sync: import threading
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from ..connections import (
    READ_APP,
    WRITE_APP,
    ConnectFailures,
    CredentialProvider,
    check_pooler,
    connect_async,
    database_error,
    make_async_pool,
    prepares,
    resolve_dsn,
)
from ..definitions import Registry
from ..errors import (
    DatabaseUnavailableError,
    DefinitionError,
    LoadInterruptedError,
    PgFeaturesError,
    ReadOnlyStoreError,
    SchemaDriftError,
    StoreClosedError,
)
from ..reader import (
    DEFAULT_STRATEGY,
    BatchReader,
    Features,
    FeaturesArg,
    Fetch,
    Reader,
    ReaderCache,
    Strategy,
    parse_keys,
)
from ..materialize.build_async import status_async
from ..reader.functions import EXISTING_FUNCTIONS, read_function
from ..schema import CATALOG_QUERY, TableCheck
from ..write import UpdateCount, UpdateRows, plan_updates
from ..reader.vector import as_numpy, check_output, stack_numpy
from .base import (
    LAG_QUERY,
    ON_DRIFT,
    READ_SESSION_SETUP,
    ReadTarget,
    Router,
    TableHealth,
    target_name,
    warmup_statements,
)

if TYPE_CHECKING:  # load imports pyarrow: only a bulk load pays for it
    from ..load import LoadSummary

logger = logging.getLogger("pgfeatures")

# Each pooled read connection keeps one raw cursor, made when the connection is warmed:
# making a cursor per request costs more client CPU than decoding 30 tables.
_CURSOR = "_pgfeatures_cursor"
_PIPELINE_CURSORS = "_pgfeatures_pipeline_cursors"
SLOW_WARMUP = 1.0  # seconds: a connection warm-up slower than this is logged


def _pipeline_cursors(conn: Any, n: int, factory: Any) -> list[Any]:
    """At least ``n`` cursors kept on the connection for the pipeline strategy (one per statement)."""
    cursors = getattr(conn, _PIPELINE_CURSORS, None)
    if cursors is None or len(cursors) < n:
        cursors = [factory(conn) for _ in range(n)]
        setattr(conn, _PIPELINE_CURSORS, cursors)
    return cursors


async def _execute_async(conn: psycopg.AsyncConnection, reader: Reader, params: tuple[Any, ...], prepare: bool) -> Features:
    fetch = reader.fetch
    if fetch is Fetch.ONE or fetch is Fetch.ALL:
        cur = getattr(conn, _CURSOR, None) or psycopg.AsyncRawCursor(conn)
        await cur.execute(reader.statements[0], params, prepare=prepare, binary=True)
        return reader.decode(await cur.fetchone() if fetch is Fetch.ONE else await cur.fetchall())
    # One statement per table, each taking its own table's entity key.
    if fetch is Fetch.PIPELINE:
        # One cursor per statement: a cursor keeps only its last result in a pipeline.
        cursors = _pipeline_cursors(conn, len(reader.statements), psycopg.AsyncRawCursor)
        async with conn.pipeline():
            for cur, stmt, i in zip(cursors, reader.statements, reader.param_index):
                await cur.execute(stmt, (params[i],), prepare=prepare, binary=True)
        return reader.decode([await cur.fetchone() for cur, _ in zip(cursors, reader.statements)])
    cur = getattr(conn, _CURSOR, None) or psycopg.AsyncRawCursor(conn)
    rows = []
    for stmt, i in zip(reader.statements, reader.param_index):
        await cur.execute(stmt, (params[i],), prepare=prepare, binary=True)
        rows.append(await cur.fetchone())
    return reader.decode(rows)


async def _execute_batch_async(conn: psycopg.AsyncConnection, reader: BatchReader, arrays: tuple[list[Any], ...],
                               prepare: bool) -> list[Features]:
    cur = getattr(conn, _CURSOR, None) or psycopg.AsyncRawCursor(conn)
    await cur.execute(reader.statement, arrays, prepare=prepare, binary=True)
    return reader.decode(await cur.fetchall())


async def _select_one_async(conn: psycopg.AsyncConnection, reader: None, args: None, prepare: bool) -> None:
    cur = getattr(conn, _CURSOR, None) or psycopg.AsyncRawCursor(conn)
    await cur.execute(b"SELECT 1", prepare=False)
    await cur.fetchall()


async def _upsert_async(conn: psycopg.AsyncConnection, plans: list[Any], prepare: bool) -> UpdateCount:
    keys = sum(len(params[0]) for _, params in plans)
    if len(plans) == 1:
        cur = psycopg.AsyncRawCursor(conn)
        await cur.execute(plans[0][0].statement, plans[0][1], prepare=prepare)
        return UpdateCount(cur.rowcount, keys - cur.rowcount)
    # Rows setting different columns: a statement per column set, one transaction, one round-trip.
    # One cursor per statement: in a pipeline a cursor keeps only its last result (and rowcount).
    control = psycopg.AsyncRawCursor(conn)
    cursors = [psycopg.AsyncRawCursor(conn) for _ in plans]
    try:
        async with conn.pipeline():
            await control.execute(b"BEGIN", prepare=False)
            for cur, (upsert, params) in zip(cursors, plans):
                await cur.execute(upsert.statement, params, prepare=prepare)
            await control.execute(b"COMMIT", prepare=False)
    except BaseException:
        if not conn.broken:
            await conn.rollback()
        raise
    written = sum(cur.rowcount for cur in cursors)
    return UpdateCount(written, keys - written)


class AsyncFeatureStore:
    """Feature store on asyncio: reads any subset of tables for one key or many in one round-trip,
    and writes (bulk loads, live updates) through a separate write pool. Safe to share between
    tasks (the sync FeatureStore: between threads): each call takes its own pooled connection.

    Open with ``open()`` or as a context manager (``with``; ``async with`` for the asyncio
    store); the sync store also opens in its constructor unless ``open=False``.

    Parameters:

    - ``registry``: a Registry, or the path of a TOML definitions file.
    - ``dsn``: the primary (writes, and reads unless replicas are given); None means
      ``$PGFEATURES_DSN``, else the embedded server (started on demand).
    - ``open``: the sync store opens in its constructor unless False; the asyncio store cannot
      open in a constructor (``open=True`` raises TypeError): ``await store.open()`` or ``async with``.
    - ``strategy``: default read strategy (``single``; see reader.py).
    - ``pool_size`` / ``write_pool_size``: fixed pool sizes (read pool per read target); a write
      pool of 0 makes a read-only store (writes raise ReadOnlyStoreError, and the primary is not
      needed to open when replicas serve the reads).
    - ``read_dsns`` (or one ``read_dsn``): read replicas, taken in turn; ``read_fallback``
      (default True): while every replica is down (or too far behind), reads go to the primary,
      and back to the replicas when they return. ``max_replica_lag``: seconds; a replica further
      behind the primary is not read.
    - ``credentials``: a credential provider (see ``pgfeatures.connections.credentials``), called
      for every new connection; its password or parameters override the DSN's.
    - ``pooler``: ``"transaction"`` behind a transaction-mode pooler such as PgBouncer: no
      statement is ever prepared and no session setting made (slower: see README); ``"session"``
      or None: prepared statements, the fast path.
    - ``max_lifetime``: seconds after which a pooled connection is replaced (with jitter), so
      rotating credentials are renewed in time and server-side connection caps are respected.
    - ``connect_timeout``: how long ``open`` and each new connection wait for the database;
      ``acquire_timeout``: how long a request waits for a pooled connection;
      ``reconnect_timeout``: how long a pool keeps retrying a lost connection before the next
      request starts a fresh attempt (see connections/pool_async.py).
    - ``on_drift``: ``"raise"`` (default): ``open`` fails with a SchemaDriftError when a table or a
      column of the definitions is missing or of another type; ``"isolate"``: such tables are left
      out and only requests touching them fail (with SchemaDriftError naming the table).
    - ``hot_keys``: read once at open, to load their pages into the cache.
    - ``warm``: extra compiled readers prepared on every read connection (the full read and the
      full batch always are).
    - ``reader_cache_size``: most prepared statements kept per connection for compiled request
      shapes (bounded LRU).
    - ``read_application_name`` / ``write_application_name``: ``application_name`` of the pools.

    Raises DefinitionError for bad definitions, ConfigError for bad settings (before any I/O).
    """

    def __init__(
        self,
        registry: Registry | str | Path,
        dsn: str | None = None,
        *,
        open: bool | None = None,
        strategy: Strategy | str = DEFAULT_STRATEGY,
        pool_size: int = 4,
        write_pool_size: int = 2,
        read_dsns: Sequence[str] = (),
        read_dsn: str | None = None,
        read_fallback: bool = True,
        max_replica_lag: float | None = None,
        credentials: CredentialProvider | None = None,
        pooler: str | None = None,
        max_lifetime: float = 1800.0,
        connect_timeout: float = 5.0,
        acquire_timeout: float = 5.0,
        reconnect_timeout: float = 10.0,
        on_drift: str = "raise",
        hot_keys: Iterable[bytes | str] = (),
        warm: Iterable[Reader | BatchReader] = (),
        reader_cache_size: int = 100,
        read_application_name: str = READ_APP,
        write_application_name: str = WRITE_APP,
    ):
        self.registry = registry if isinstance(registry, Registry) else Registry.from_toml(registry)
        self.dsn = dsn
        if isinstance(read_dsns, str):
            read_dsns = [read_dsns]
        self.read_dsns = tuple(dict.fromkeys([*read_dsns, *([read_dsn] if read_dsn else [])]))
        self.read_fallback = read_fallback
        self.max_replica_lag = max_replica_lag
        self.credentials = credentials
        self.pooler = check_pooler(pooler)
        self._prepare = prepares(self.pooler)
        self.max_lifetime = max_lifetime
        self.strategy = Strategy.parse(strategy)
        if pool_size < 1 or write_pool_size < 0:
            raise DefinitionError(f"pool_size must be at least 1 and write_pool_size at least 0, got {pool_size}, {write_pool_size}")
        self.pool_size = pool_size
        self.write_pool_size = write_pool_size
        self.connect_timeout = connect_timeout
        self.acquire_timeout = acquire_timeout
        self.reconnect_timeout = reconnect_timeout
        if on_drift not in ON_DRIFT:
            raise DefinitionError(f"unknown on_drift {on_drift!r}; valid: {', '.join(ON_DRIFT)}")
        self.on_drift = on_drift
        self.read_application_name = read_application_name
        self.write_application_name = write_application_name
        self.hot_keys = parse_keys(hot_keys)
        self.readers = ReaderCache(self.registry, max_statements=reader_cache_size)
        self.extra_warm = list(warm)
        self.warm_readers: list[Reader | BatchReader] = []
        self.health = TableHealth(self.registry)
        self.router: Router | None = None
        self.write_pool: AsyncConnectionPool | None = None
        self.write_failures = ConnectFailures()
        self.ready = False
        self._probes: set[Any] = set()
        self._via_functions: dict[bytes, Any] = {}
        if open:  # sync: if open or open is None:
            raise TypeError("the asyncio store cannot open in its constructor: use `await store.open()` or `async with`")  # sync: self.open()

    # -- compiled readers ---------------------------------------------------------------------------

    def reader(self, tables: Iterable[str] | None = None, features: FeaturesArg = None,
               strategy: Strategy | str | None = None) -> Reader:
        """The compiled reader for this request shape (cached). Pass it to ``read`` to skip even the
        cache lookup. Raises UnknownTableError / UnknownFeatureError naming the valid ones."""
        return self.readers.reader(tables, features, strategy or self.strategy)

    def batch_reader(self, tables: Iterable[str] | None = None, features: FeaturesArg = None) -> BatchReader:
        """The compiled many-keys reader for this request shape (cached)."""
        return self.readers.batch_reader(tables, features)

    def _service_readers(self) -> list[Reader | BatchReader]:
        """Every feature service's single and batch readers, except those touching a broken table."""
        out: list[Reader | BatchReader] = []
        for name in self.registry.services:
            reader = self.readers.service_reader(name, None, self.strategy)
            if self.health.broken.isdisjoint(reader.tables):
                out += [reader, self.readers.service_batch_reader(name, None)]
        return out

    def _servable(self) -> list[str] | None:
        """The tables to warm: every table, or (isolate) those that match their definitions."""
        if not self.health.broken:
            return None
        return [t for t in self.registry.tables if t not in self.health.broken]

    # -- lifecycle ----------------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, check the live catalog against the definitions, open and warm the pools, read the
        hot keys; then ``ready`` is True. Opening an open store does nothing.

        Raises DatabaseUnavailableError (AuthenticationError when the credentials are refused) when
        no read target answers within ``connect_timeout``, and SchemaDriftError (``on_drift="raise"``)
        naming every table and column that disagrees with the definitions.
        """
        if self.router is not None:
            return
        if not self.dsn:
            self.dsn = await asyncio.to_thread(resolve_dsn, None)  # sync: self.dsn = resolve_dsn(None)
        dsn = self.dsn
        replicas = [ReadTarget(target_name(d, f"replica {i + 1}"), d, False) for i, d in enumerate(self.read_dsns)]
        primary = ReadTarget(target_name(dsn, "primary"), dsn, True) if not replicas or self.read_fallback else None
        router = Router(replicas, primary, self.max_replica_lag)
        checks = await self._first_inspection_async(router)
        self.health.update(checks)
        if self.health.broken and self.on_drift == "raise":
            raise self.health.error(self.health.broken)
        await self._find_materialized_async(router)
        servable = self._servable()
        # Every table broken (isolate): nothing to warm; each request names what is broken.
        table_readers: list[Reader | BatchReader] = [self.reader(servable), self.batch_reader(servable)] if servable != [] else []
        self.warm_readers = [*table_readers, *self._service_readers(), *self.extra_warm]
        if not self._prepare:
            self._via_functions = await self._read_functions_async(router)
        try:
            for target in router.targets:
                target.pool = make_async_pool(target.dsn, **self._pool_settings(True, target.failures))
                await target.pool.open(wait=False)
            if self.write_pool_size > 0:
                self.write_pool = make_async_pool(dsn, **self._pool_settings(False, self.write_failures))
                await self.write_pool.open(wait=False)  # writes are not needed to serve reads
            for target in router.targets:
                if not target.down:
                    try:
                        await target.pool.wait(timeout=self.connect_timeout + 10)
                    except PoolTimeout:
                        router.mark_down(target, str(target.failures.error or "its pool did not fill in time"))
            if all(t.down for t in router.targets):
                first = router.targets[0]
                raise database_error(PoolTimeout("no connection"), first.dsn, acquire_timeout=self.connect_timeout,
                                     last_connect_error=first.failures.error)
        except BaseException:
            await self._close_pools_async(router)
            raise
        self.router = router
        if self.hot_keys and servable != []:
            await self.get_features_batch(self.hot_keys, servable)
        self.ready = True

    async def _first_inspection_async(self, router: Router) -> dict[str, TableCheck]:
        """The catalog checks, read on the first read target that answers; unreachable ones are marked down."""
        errors: list[PgFeaturesError] = []
        for target in router.targets:
            try:
                return await self._inspect_async(target, list(self.registry.tables))
            except DatabaseUnavailableError as exc:
                errors.append(exc)
                router.mark_down(target, str(exc))
        raise errors[0]

    async def _find_materialized_async(self, router: Router) -> None:
        """Which materialized services are built (their serving tables match the definitions): those
        are read from their serving rows; the others by the flexible read, with a warning."""
        wanted = [name for name, svc in self.registry.services.items() if svc.materialize]
        if not wanted:
            return
        target = next((t for t in router.targets if not t.down), router.targets[0])
        conn = await connect_async(target.dsn, "pgfeatures-check", self.connect_timeout,
                                   credentials=self.credentials, pooler=self.pooler)
        try:
            states = await status_async(conn, self.registry)
        except psycopg.Error as exc:
            raise database_error(exc, target.dsn) from exc
        finally:
            await conn.close()
        built = {}
        for name in wanted:
            if states.get(name) == "built":
                built[name] = self.registry.layouts(name)
            else:
                logger.warning("pgfeatures: service %s is materialize = true but its serving rows are %s: it is read "
                               "table by table until `pgfeatures materialize %s` builds them", name, states.get(name), name)
        self.readers.materialized = built

    async def _read_functions_async(self, router: Router) -> dict[bytes, Any]:
        """``pooler="transaction"``: the warm readers in their function form (see reader/functions.py),
        each function created on the primary where it is missing. A shape whose function cannot be
        had (no CREATE privilege, primary down and not created by ``pgfeatures init``) reads unprepared."""
        forms = [(r, f) for r in self.warm_readers if (f := read_function(r)) is not None]
        if not forms:
            return {}
        names = list(dict.fromkeys(f.name for _, f in forms))
        existing: set[str] = set()
        for dsn in [self.dsn or "", *(t.dsn for t in router.targets)]:
            try:
                conn = await connect_async(dsn, "pgfeatures-init", self.connect_timeout,
                                           credentials=self.credentials, pooler=self.pooler)
            except PgFeaturesError as exc:
                logger.warning("pgfeatures: cannot check the read functions at %s: %s", target_name(dsn, "server"), exc)
                continue
            try:
                cur = psycopg.AsyncRawCursor(conn)
                await cur.execute(EXISTING_FUNCTIONS, (self.registry.schema, names), prepare=False)
                existing = {row[0] for row in await cur.fetchall()}
                for reader, form in forms:
                    if form.name in existing:
                        continue
                    try:
                        await conn.execute(form.create, prepare=False)
                        existing.add(form.name)
                    except psycopg.Error as exc:
                        logger.warning("pgfeatures: cannot create the read function %s (%s): reads of tables %s are "
                                       "planned at every call; run `pgfeatures init` as the schema's owner",
                                       form.name, str(exc).strip(), ", ".join(reader.tables))
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

    async def _inspect_async(self, target: ReadTarget, tables: list[str]) -> dict[str, TableCheck]:
        conn = await connect_async(target.dsn, "pgfeatures-check", self.connect_timeout,
                                   credentials=self.credentials, pooler=self.pooler)
        try:
            return await self._catalog_async(conn, tables)
        except psycopg.Error as exc:
            raise database_error(exc, target.dsn) from exc
        finally:
            await conn.close()

    async def _catalog_async(self, conn: psycopg.AsyncConnection, tables: list[str]) -> dict[str, TableCheck]:
        cur = psycopg.AsyncRawCursor(conn)
        await cur.execute(CATALOG_QUERY, (self.registry.schema, tables), prepare=False)
        return self.health.from_rows(await cur.fetchall())

    def _pool_settings(self, read: bool, failures: ConnectFailures) -> dict[str, Any]:
        return {
            "size": self.pool_size if read else self.write_pool_size,
            "application_name": self.read_application_name if read else self.write_application_name,
            "connect_timeout": self.connect_timeout,
            "acquire_timeout": self.acquire_timeout,
            "reconnect_timeout": self.reconnect_timeout,
            "max_lifetime": self.max_lifetime,
            "configure": self._warm_async if read else None,
            "credentials": self.credentials,
            "pooler": self.pooler,
            "failures": failures,
        }

    async def _warm_async(self, conn: psycopg.AsyncConnection) -> None:
        """Prepare the warm-up statements on a new read connection, before it serves.

        A statement that fails because a table or column is missing is skipped (and logged): one
        broken table must not keep every connection from serving the others.
        """
        started = time.monotonic()
        cur = psycopg.AsyncRawCursor(conn)
        if self._prepare:
            statements = warmup_statements(self.warm_readers)
            conn.prepared_max = max(conn.prepared_max or 0, self.readers.max_statements + len(statements))
            await cur.execute(READ_SESSION_SETUP)
            for reader, stmt, params in statements:
                try:
                    await cur.execute(stmt, params, prepare=True, binary=True)
                    await cur.fetchall()
                except psycopg.Error as exc:
                    if conn.broken or not isinstance(database_error(exc), SchemaDriftError):
                        raise
                    logger.warning("pgfeatures: not prepared on a new connection (tables %s): %s",
                                   ", ".join(reader.tables), str(exc).strip())
        setattr(conn, _CURSOR, cur)
        seconds = time.monotonic() - started
        if seconds > SLOW_WARMUP:
            logger.warning("pgfeatures: warming a read connection took %.1fs", seconds)

    async def close(self) -> None:
        """Close the pools; in-flight calls finish or fail with StoreClosedError. Closing twice is harmless."""
        self.ready = False
        router, self.router = self.router, None
        await self._close_pools_async(router)

    async def _close_pools_async(self, router: Router | None) -> None:
        for task in list(self._probes):  # async-only
            task.cancel()  # async-only
        pools = [t.pool for t in (router.targets if router else ()) if t.pool is not None]
        for pool in [*pools, *([self.write_pool] if self.write_pool is not None else [])]:
            await pool.close()
        self.write_pool = None

    async def __aenter__(self) -> "AsyncFeatureStore":
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def read_pool(self) -> AsyncConnectionPool | None:
        """The pool of the first read target (the primary when there is no replica)."""
        return self.router.targets[0].pool if self.router is not None else None

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """A warmed read connection of the first read target that serves, with database errors
        translated (for diagnostics; reads go through ``read``/``read_batch``)."""
        router = self.router
        if router is None:
            raise StoreClosedError("the store is not open: call open() or use it as a context manager")
        target = router.order()[0]
        try:
            conn = await target.pool.getconn()
        except (PoolTimeout, PoolClosed) as exc:
            raise self._unavailable(exc, target) from None
        try:
            yield conn
        except psycopg.Error as exc:
            raise database_error(exc, target.dsn) from exc
        finally:
            await target.pool.putconn(conn)

    def status(self) -> dict[str, Any]:
        """What the store can serve now: read targets (up or down, why, lag), tables that cannot be
        served and why, whether it has a write pool. No I/O."""
        router = self.router
        return {
            "ready": self.ready,
            "read_targets": [
                {"name": t.name, "up": not t.down and (router.serving(t) if router else False), "reason": t.reason, "lag": t.lag}
                for t in (router.targets if router else ())
            ],
            "broken_tables": self.health.status(),
            "writes": self.write_pool is not None,
        }

    # -- reads --------------------------------------------------------------------------------------

    async def get_features(
        self,
        key: Any,
        tables: Iterable[str] | None = None,
        features: FeaturesArg = None,
        *,
        strategy: Strategy | str | None = None,
    ) -> Features:
        """``{table: {feature: value}}`` for one request, with ``.status`` per table (``present``,
        ``missing`` or ``expired``); a table that is not present maps to None, or to its defaults.

        ``key``: one key per entity the tables need (``{"user": 42, "merchant": "m-1"}``), or a bare
        key when they need one entity. ``tables``: None for all; ``features``:
        ``{table: [feature, ...]}`` or ``["table.feature"]``.
        Raises KeyFormatError, UnknownTableError, UnknownFeatureError (naming the valid ones) before
        any I/O; SchemaDriftError for a table that cannot be served; DatabaseUnavailableError (and
        its subclasses) when no read target can answer; QueryTimeoutError; StoreClosedError.
        """
        return await self.read(self.reader(tables, features, strategy), key)

    async def read(self, reader: Reader, key: Any) -> Features:
        """Run a compiled reader for one request's keys: one round-trip (N for ``sequential``). Raises as ``get_features``."""
        if self._via_functions:
            reader = self._via_functions.get(reader.statements[0], reader)
        return await self._run_async(_execute_async, reader, reader.binder.one(key))

    async def get_features_batch(
        self, keys: Any, tables: Iterable[str] | None = None, features: FeaturesArg = None
    ) -> list[Features]:
        """One result per row of keys, in input order (duplicates repeat), in one round-trip.

        ``keys``: a list of keys (bare, or one per entity as for ``get_features``), or
        ``{entity: [keys]}`` (one list per entity, of equal lengths). Raises as ``get_features``.
        """
        return await self.read_batch(self.batch_reader(tables, features), keys)

    async def get_service(self, name: str, key: Any, features: FeaturesArg = None, *, output: str = "dict") -> Any:
        """The features of the feature service ``name`` for one request's keys (as ``get_features``),
        with the service's ttl; from its serving rows when it is materialized and built.

        ``features``: a subset of the service's. ``output``: ``"dict"`` (a FeatureResult, tables in
        the service's order), ``"list"`` or ``"numpy"``: a ServiceVector, the features as one flat
        vector in the service's order (``.names``), missing values None (NaN in numpy; float32 when
        every feature is real, else float64), and ``.status`` per table.
        Raises UnknownServiceError naming the valid services, and as ``get_features``.
        """
        if output == "dict":
            return await self.read(self.readers.service_reader(name, features, self.strategy), key)
        check_output(output)
        vector: Any = await self.read(self.readers.service_vector_reader(name, features, self.strategy), key)
        return as_numpy(vector, self.registry) if output == "numpy" else vector

    async def get_service_batch(self, name: str, keys: Any, features: FeaturesArg = None, *, output: str = "dict") -> Any:
        """``get_service`` for many rows of keys, in one round-trip (keys as for ``get_features_batch``):
        a list of results in input order, or with ``output="numpy"`` one ServiceVectors (a 2-D array,
        a row per request)."""
        if output == "dict":
            return await self.read_batch(self.readers.service_batch_reader(name, features), keys)
        check_output(output)
        vectors: Any = await self.read_batch(self.readers.service_vector_batch_reader(name, features), keys)
        return stack_numpy(vectors, self.registry) if output == "numpy" else vectors

    async def read_batch(self, reader: BatchReader, keys: Any) -> list[Features]:
        """Run a compiled batch reader: one statement for all ``keys`` (see ``get_features_batch``).
        Raises as ``get_features``."""
        arrays = reader.binder.many(keys)
        if not arrays[0]:
            return []
        if self._via_functions:
            reader = self._via_functions.get(reader.statement, reader)
        return await self._run_async(_execute_batch_async, reader, arrays)

    async def ping(self) -> None:
        """``SELECT 1`` through the read path (same targets, fallback and retry as a read).

        Raises what a read would: DatabaseUnavailableError / AuthenticationError / StoreClosedError.
        """
        await self._run_async(_select_one_async, None, None)

    async def _run_async(self, execute: Any, reader: Any, args: Any) -> Any:
        """Run ``execute(conn, reader, args, prepare)`` on a read target, moving on to the next
        target when one fails.

        getconn/putconn rather than ``pool.connection()``: with autocommit there is no transaction
        to end, and the context managers cost measurable CPU per request. A connection that died
        under the request (server restart, failover, idle kill) makes the pool check its idle
        connections; the read is retried once on that target if connections survived, else the
        target is marked down and the next one tried. Reads are idempotent.
        """
        router = self.router
        if router is None:
            raise StoreClosedError("the store is not open: call open() or use it as a context manager")
        if self.health.broken and reader is not None and not self.health.broken.isdisjoint(reader.tables):
            await self._recheck_async(reader.tables)
        error: BaseException | None = None
        target: ReadTarget | None = None
        order = router.order()
        last = order[-1]
        for target in order:
            pool = target.pool
            for attempt in (0, 1):
                try:
                    conn = await pool.getconn()
                except PoolTimeout as exc:
                    error = exc
                    break
                except PoolClosed as exc:
                    raise StoreClosedError(f"the store is closed: {exc}") from None
                try:
                    result = await execute(conn, reader, args, self._prepare)
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
                    raise (await self._read_failed_async(exc, reader, target, conn)) from exc
                except BaseException:
                    await pool.putconn(conn)
                    raise
                await pool.putconn(conn)
                if target.down:
                    router.mark_up(target)
                if time.monotonic() >= router.next_probe_at:  # a target is down or lagging, and due for a probe
                    self._probe_soon()
                return result
            # Down: its connections died, or it cannot make new ones. A pool that is merely busy
            # (a timeout with no failure to connect) is not down: the read spills to the next target.
            if not isinstance(error, PoolTimeout) or target.failures.error is not None:
                router.mark_down(target, str(self._unavailable(error, target)))
                self._probe_soon()
        assert target is not None
        raise self._unavailable(error, target) from error

    def _unavailable(self, error: BaseException | None, target: ReadTarget) -> PgFeaturesError:
        if error is None:
            return DatabaseUnavailableError(f"{target.name} is unavailable")
        return database_error(error, target.dsn, acquire_timeout=self.acquire_timeout,
                              last_connect_error=target.failures.error)

    async def _read_failed_async(self, exc: psycopg.Error, reader: Any, target: ReadTarget,
                                 conn: psycopg.AsyncConnection) -> PgFeaturesError:
        """The error for a statement the server rejected; a missing table or column is re-checked
        in the catalog so the error (and the tables left out from now on) name it."""
        error = database_error(exc, target.dsn)
        if not isinstance(error, SchemaDriftError) or reader is None:
            return error
        checks = await self._recheck_tables_async(list(reader.tables))
        if checks is not None and self.health.broken & set(reader.tables):
            return self.health.error(reader.tables)
        return error

    async def _recheck_async(self, tables: Sequence[str]) -> None:
        """Re-check the broken ones of ``tables`` (if due); raise SchemaDriftError if any is still broken."""
        due = self.health.due(tables)
        if due:
            await self._recheck_tables_async(due)
        if not self.health.broken.isdisjoint(tables):
            raise self.health.error(tables)

    async def _recheck_tables_async(self, tables: list[str]) -> dict[str, TableCheck] | None:
        router = self.router
        for target in router.order() if router else ():
            try:
                checks = await self._inspect_async(target, tables)
            except PgFeaturesError:
                continue
            self.health.update(checks)
            return checks
        return None

    # -- probes of read targets that are down ------------------------------------------------------

    def _probe_soon(self) -> None:
        """Start a background probe of every read target that is down (or lagging) and due for one."""
        router = self.router
        if router is None:
            return
        for target in router.due_for_probe(time.monotonic()):
            task = asyncio.ensure_future(self._probe_async(target))  # sync: threading.Thread(target=self._probe, args=(target,), daemon=True).start()
            self._probes.add(task)  # async-only
            task.add_done_callback(self._probes.discard)  # async-only

    async def _probe_async(self, target: ReadTarget) -> None:
        """Is ``target`` serving? A fresh connection (through the credential provider) measures its lag;
        if it answers, the pool's dead connections are replaced and the target is used again once
        its pool has a live connection."""
        router = self.router
        try:
            conn = await connect_async(target.dsn, "pgfeatures-probe", self.connect_timeout,
                                       credentials=self.credentials, pooler=self.pooler)
            try:
                cur = await conn.execute(LAG_QUERY, prepare=False)
                row = await cur.fetchone()
            finally:
                await conn.close()
            if router is None:
                return
            router.set_lag(target, row[0] if row else None)
            if target.down:
                await target.pool.check()
                if target.pool.get_stats().get("pool_available", 0):
                    router.mark_up(target)
        except (PgFeaturesError, psycopg.Error, PoolClosed) as exc:
            target.reason = str(exc)
        except Exception:  # a probe must never take the store down; log and try again later
            logger.exception("pgfeatures: probe of %s failed", target.name)
        finally:
            target.probing = False

    # -- writes -------------------------------------------------------------------------------------

    def _write_pool(self) -> AsyncConnectionPool:
        if self.write_pool is None:
            if self.router is None:
                raise StoreClosedError("the store is not open: call open() or use it as a context manager")
            raise ReadOnlyStoreError("this store has no write pool (write_pool_size=0, or a read-only service): "
                                     "it cannot write")
        return self.write_pool

    @contextlib.asynccontextmanager
    async def write_connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """A write-pool connection, with database errors translated. Raises ReadOnlyStoreError
        without a write pool, DatabaseUnavailableError when the primary cannot be reached."""
        pool = self._write_pool()
        try:
            conn = await pool.getconn()
        except (PoolTimeout, PoolClosed) as exc:
            raise database_error(exc, self.dsn or "", acquire_timeout=self.acquire_timeout,
                                 last_connect_error=self.write_failures.error) from None
        try:
            yield conn
        except psycopg.Error as exc:
            raise database_error(exc, self.dsn or "") from exc
        finally:
            await pool.putconn(conn)

    async def write_features(self, table: str, data: Any, **options: Any) -> LoadSummary:
        """Bulk-load ``data`` (files, Arrow, pandas/polars) into ``table`` in one transaction; see
        ``pgfeatures.load.load`` for the sources, the options (LoadOptions fields and ``progress``) and
        the errors. A load whose connection was found dead before anything could commit is retried
        once on a fresh connection when its source can be read again; otherwise the error says so."""
        from ..load import load_async

        for attempt in (0, 1):
            try:
                async with self.write_connection() as conn:
                    return await load_async(conn, self.registry, table, data, **options)
            except LoadInterruptedError as exc:
                if attempt or not exc.retry_safe:  # committed, unknown, or a one-shot source: say so, do not guess
                    raise
                logger.warning("pgfeatures: load into %s lost its connection before COMMIT (%s); retrying once", table, exc)
                await self._write_pool().check()
        raise AssertionError("unreachable")

    async def update_features(self, key: Any, table: str, values: Mapping[str, Any], *, nan: str = "reject",
                              overwrite_newer: bool = False) -> UpdateCount:
        """Upsert some or all features of one entity, in one round-trip (see write.py). Returns 1, or 0
        when the stored row is newer than the given ``updated_at`` (newest wins). Raises as
        ``update_features_batch``."""
        return await self.update_features_batch(table, [(key, values)], nan=nan, overwrite_newer=overwrite_newer)

    async def update_features_batch(self, table: str, rows: UpdateRows, *, nan: str = "reject",
                                    overwrite_newer: bool = False) -> UpdateCount:
        """Upsert many entities (``{key: values}`` or ``(key, values)`` pairs) in one round-trip and one
        transaction. Returns the number of distinct keys written (an int), with ``.skipped``: keys whose
        stored row was newer than the row's ``updated_at`` and was kept (newest wins; pass
        ``overwrite_newer=True`` to write them anyway).

        Raises UnknownTableError, UnknownFeatureError, KeyFormatError, FeatureValueError before any
        I/O; ReadOnlyStoreError; DatabaseUnavailableError; SchemaDriftError. A connection found dead
        is replaced and the update sent once more (an upsert applied twice leaves the same row).
        """
        plans = plan_updates(self.registry, table, rows, nan=nan, overwrite_newer=overwrite_newer)
        pool = self._write_pool()
        for attempt in (0, 1):
            conn: psycopg.AsyncConnection | None
            try:
                conn = await pool.getconn()
            except (PoolTimeout, PoolClosed) as exc:
                raise database_error(exc, self.dsn or "", acquire_timeout=self.acquire_timeout,
                                     last_connect_error=self.write_failures.error) from None
            try:
                return await _upsert_async(conn, plans, self._prepare)
            except psycopg.OperationalError as exc:
                if attempt or not conn.broken:
                    raise database_error(exc, self.dsn or "") from exc
                logger.warning("pgfeatures: write connection lost (%s); retrying the update once", str(exc).strip())
                await pool.putconn(conn)
                conn = None
                await pool.check()
            except psycopg.Error as exc:
                raise database_error(exc, self.dsn or "") from exc
            finally:
                if conn is not None:
                    await pool.putconn(conn)
        raise AssertionError("unreachable")
