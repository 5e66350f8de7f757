"""FeatureStore and AsyncFeatureStore: thin I/O shells around the compiled readers.

Everything a request needs is compiled by ``reader.py`` (pure); a store only
takes a pooled connection, sends the reader's statement(s) in one flush,
fetches, and hands the rows to the reader's decoder. The sync and async
stores share that logic through ``_StoreCore`` and differ only in the I/O
calls.

Lifecycle: ``open()`` resolves the DSN (starting the embedded server when none
is given), checks the database answers within ``connect_timeout``, opens the
read and write pools, prepares the warm-up statements on every read
connection, reads the hot keys once, and only then sets ``ready``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import PoolTimeout

from .connections import (
    READ_APP,
    WRITE_APP,
    check_connection,
    check_connection_async,
    make_async_pool,
    make_pool,
    resolve_dsn,
    unavailable,
)
from .definitions import KEY_LENGTH, Registry
from .errors import DatabaseUnavailableError
from .reader import (
    DEFAULT_STRATEGY,
    BatchReader,
    Features,
    FeaturesArg,
    Fetch,
    Reader,
    ReaderCache,
    Strategy,
    parse_key,
    parse_keys,
)
from .write import UpdateRows, plan_updates

if TYPE_CHECKING:  # load.py imports pyarrow: only a bulk load pays for it
    from .load import LoadSummary

WARMUP_KEY = bytes(KEY_LENGTH)  # any key will do: warm-up prepares statements, it does not need rows

# Read sessions always use the generic plan of a prepared statement. Under the default
# plan_cache_mode=auto, PostgreSQL re-plans the batch statement (an array parameter) at every
# execution, because a custom plan looks cheaper for each array length; planning thirty
# subqueries costs about as much as running them. Every read is a primary-key lookup whose best
# plan does not depend on the key, so the generic plan is always the right one.
READ_SESSION_SETUP = b"SET plan_cache_mode = force_generic_plan"


class _StoreCore:
    """What both stores share: the registry, compiled readers, settings. No I/O.

    ``registry``: a Registry or the path of a TOML definition. ``dsn``: None means
    ``$PGFEATURES_DSN``, else the embedded server. ``read_dsn``: where the read pool
    connects, e.g. a read replica (default: ``dsn``); writes always go to ``dsn``. ``strategy``: the default read
    strategy. ``pool_size`` / ``write_pool_size``: fixed pool sizes (a write pool of 0:
    read-only store). ``connect_timeout``: how long ``open`` waits for the database;
    ``acquire_timeout``: how long a request waits for a pooled connection before
    DatabaseUnavailableError. ``hot_keys``: read once at open. ``warm``: extra compiled
    readers to prepare on every read connection (the full read and full batch always are).
    ``reader_cache_size``: request shapes kept compiled. ``reconnect_timeout``: how long a
    pool retries a lost connection before the next request starts afresh (see
    ``connections.pool_settings``).
    """

    def __init__(
        self,
        registry: Registry | str | Path,
        dsn: str | None = None,
        *,
        strategy: Strategy | str = DEFAULT_STRATEGY,
        pool_size: int = 4,
        write_pool_size: int = 2,
        connect_timeout: float = 5.0,
        acquire_timeout: float = 5.0,
        read_application_name: str = READ_APP,
        write_application_name: str = WRITE_APP,
        hot_keys: Iterable[bytes | str] = (),
        warm: Iterable[Reader | BatchReader] = (),
        reader_cache_size: int = 100,
        read_dsn: str | None = None,
        reconnect_timeout: float = 10.0,
    ):
        self.registry = registry if isinstance(registry, Registry) else Registry.from_toml(registry)
        self.dsn = dsn
        self.read_dsn = read_dsn
        self.strategy = Strategy.parse(strategy)
        self.pool_size = pool_size
        self.write_pool_size = write_pool_size
        self.connect_timeout = connect_timeout
        self.acquire_timeout = acquire_timeout
        self.reconnect_timeout = reconnect_timeout
        self.read_application_name = read_application_name
        self.write_application_name = write_application_name
        self.hot_keys = parse_keys(hot_keys)
        self.readers = ReaderCache(self.registry, maxsize=reader_cache_size)
        # Prepared on every new read connection before it serves: the default full read, plus extras.
        self.warm_readers: list[Reader | BatchReader] = [
            self.reader(),
            self.batch_reader(),
            *warm,
        ]
        self.ready = False

    def reader(self, tables: Iterable[str] | None = None, features: FeaturesArg = None, strategy: Strategy | str | None = None) -> Reader:
        """The compiled reader for this request shape (cached). Pass it to ``read`` to skip even the cache lookup."""
        return self.readers.reader(tables, features, strategy or self.strategy)

    def batch_reader(self, tables: Iterable[str] | None = None, features: FeaturesArg = None) -> BatchReader:
        return self.readers.batch_reader(tables, features)

    def _pool_settings(self, *, read: bool) -> dict[str, Any]:
        """Settings of the read pool (warmed by the shell's ``_warm``) or of the write pool."""
        return {
            "size": self.pool_size if read else self.write_pool_size,
            "application_name": self.read_application_name if read else self.write_application_name,
            "connect_timeout": self.connect_timeout,
            "acquire_timeout": self.acquire_timeout,
            "reconnect_timeout": self.reconnect_timeout,
            "configure": self._warm if read else None,  # type: ignore[attr-defined]  # each shell defines its own
        }

    def _warmup_statements(self) -> list[tuple[bytes, tuple[Any, ...]]]:
        statements = []
        for r in self.warm_readers:
            if isinstance(r, BatchReader):
                statements.append((r.statement, ([WARMUP_KEY],)))
            else:
                statements.extend((s, (WARMUP_KEY,)) for s in r.statements)
        return statements


def _pool_timeout(exc: PoolTimeout, acquire_timeout: float) -> DatabaseUnavailableError:
    return DatabaseUnavailableError(
        f"no database connection available within {acquire_timeout:g}s (pool exhausted or database down): {exc}"
    )


@contextlib.contextmanager
def _translate_errors(dsn: str, acquire_timeout: float) -> Iterator[None]:
    try:
        yield
    except PoolTimeout as exc:
        raise _pool_timeout(exc, acquire_timeout) from exc
    except psycopg.OperationalError as exc:
        raise unavailable(dsn, exc) from exc


# Each pooled read connection keeps one raw cursor, made when the connection is warmed:
# making a cursor per request costs more client CPU than decoding 30 tables.
_CURSOR = "_pgfeatures_cursor"
_PIPELINE_CURSORS = "_pgfeatures_pipeline_cursors"


def _pipeline_cursors(conn: Any, n: int, factory: Any) -> list[Any]:
    """At least ``n`` cursors kept on the connection for the pipeline strategy (one per statement)."""
    cursors = getattr(conn, _PIPELINE_CURSORS, None)
    if cursors is None or len(cursors) < n:
        cursors = [factory(conn) for _ in range(n)]
        setattr(conn, _PIPELINE_CURSORS, cursors)
    return cursors


# -- sync -----------------------------------------------------------------------------------------


def _execute(conn: psycopg.Connection, reader: Reader, params: tuple[Any, ...]) -> Features:
    fetch = reader.fetch
    if fetch is Fetch.ONE or fetch is Fetch.ALL:
        cur = getattr(conn, _CURSOR, None) or psycopg.RawCursor(conn)
        cur.execute(reader.statements[0], params, prepare=True, binary=True)
        return reader.decode(cur.fetchone() if fetch is Fetch.ONE else cur.fetchall())
    if fetch is Fetch.PIPELINE:
        # One cursor per statement: a cursor keeps only its last result in a pipeline.
        cursors = _pipeline_cursors(conn, len(reader.statements), psycopg.RawCursor)
        with conn.pipeline():
            for cur, stmt in zip(cursors, reader.statements):
                cur.execute(stmt, params, prepare=True, binary=True)
        return reader.decode([cur.fetchone() for cur, _ in zip(cursors, reader.statements)])
    cur = getattr(conn, _CURSOR, None) or psycopg.RawCursor(conn)
    rows = []
    for stmt in reader.statements:
        cur.execute(stmt, params, prepare=True, binary=True)
        rows.append(cur.fetchone())
    return reader.decode(rows)


def _execute_batch(conn: psycopg.Connection, reader: BatchReader, keys: list[bytes]) -> list[Features]:
    cur = getattr(conn, _CURSOR, None) or psycopg.RawCursor(conn)
    cur.execute(reader.statement, (keys,), prepare=True, binary=True)
    return reader.decode(cur.fetchall())


class FeatureStore(_StoreCore):
    """Synchronous feature store. Thread-safe: each call takes its own pooled connection.

    >>> with FeatureStore("features.toml") as store:          # doctest: +SKIP
    ...     store.get_features(key, tables=["user_stats"])
    {'user_stats': {'clicks_7d': 3, 'ctr_7d': 0.25}}
    """

    def __init__(self, registry: Registry | str | Path, dsn: str | None = None, *, open: bool = True, **kwargs: Any):
        super().__init__(registry, dsn, **kwargs)
        self.read_pool = self.write_pool = None
        if open:
            self.open()

    def open(self) -> None:
        """Connect, warm every read connection, read hot keys; then ``ready`` is True.

        Raises DatabaseUnavailableError when the database does not answer within ``connect_timeout``.
        """
        dsn = self.dsn = resolve_dsn(self.dsn)
        read_dsn = self.read_dsn = self.read_dsn or dsn
        check_connection(read_dsn, self.connect_timeout)
        if read_dsn != dsn and self.write_pool_size > 0:
            check_connection(dsn, self.connect_timeout)
        self.read_pool = make_pool(read_dsn, **self._pool_settings(read=True))
        if self.write_pool_size > 0:
            self.write_pool = make_pool(dsn, **self._pool_settings(read=False))
        try:
            self.read_pool.open(wait=True, timeout=self.connect_timeout + 10)
            if self.write_pool is not None:
                self.write_pool.open(wait=True, timeout=self.connect_timeout + 10)
        except PoolTimeout as exc:
            self.close()
            raise unavailable(dsn, exc, self.connect_timeout) from exc
        if self.hot_keys:
            self.get_features_batch(self.hot_keys)
        self.ready = True

    def _warm(self, conn: psycopg.Connection) -> None:
        cur = psycopg.RawCursor(conn)
        cur.execute(READ_SESSION_SETUP)
        for stmt, params in self._warmup_statements():
            cur.execute(stmt, params, prepare=True, binary=True)
            cur.fetchall()
        setattr(conn, _CURSOR, cur)

    def close(self) -> None:
        self.ready = False
        for pool in (self.read_pool, self.write_pool):
            if pool is not None:
                pool.close()

    def __enter__(self) -> "FeatureStore":
        if self.read_pool is None:
            self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A read-pool connection, with database errors translated."""
        assert self.read_pool is not None, "store is not open"
        with _translate_errors(self.read_dsn or "", self.acquire_timeout), self.read_pool.connection() as conn:
            yield conn

    def get_features(
        self,
        key: bytes | str,
        tables: Iterable[str] | None = None,
        features: FeaturesArg = None,
        *,
        strategy: Strategy | str | None = None,
    ) -> Features:
        """``{table: {feature: value}}`` for one key; a table where the key has no row maps to None.

        Raises KeyFormatError, UnknownTableError, UnknownFeatureError (naming the valid
        ones) before any I/O, and DatabaseUnavailableError when the database cannot be reached.
        """
        return self.read(self.reader(tables, features, strategy), key)

    def read(self, reader: Reader, key: bytes | str) -> Features:
        """Run a compiled reader for one key: one round-trip (N for ``sequential``)."""
        return self._run(_execute, reader, (parse_key(key),))

    def get_features_batch(
        self, keys: Sequence[bytes | str], tables: Iterable[str] | None = None, features: FeaturesArg = None
    ) -> list[Features]:
        """One result per key, in input order (duplicates repeat), in one round-trip."""
        return self.read_batch(self.batch_reader(tables, features), keys)

    def read_batch(self, reader: BatchReader, keys: Sequence[bytes | str]) -> list[Features]:
        parsed = parse_keys(keys)
        if not parsed:
            return []
        return self._run(_execute_batch, reader, parsed)

    def _run(self, execute: Any, reader: Any, args: Any) -> Any:
        """Run ``execute(conn, reader, args)`` on a pooled connection.

        getconn/putconn rather than ``pool.connection()``: with autocommit there is no
        transaction to end, and the context managers cost measurable CPU per request.
        A connection that died under the request (server restart, failover, idle
        kill) makes the pool check all its idle connections, and the read is
        retried once on a fresh one: reads are idempotent.
        """
        pool = self.read_pool
        assert pool is not None, "store is not open"
        for attempt in (0, 1):
            try:
                conn = pool.getconn()
            except PoolTimeout as exc:
                raise _pool_timeout(exc, self.acquire_timeout) from exc
            try:
                result = execute(conn, reader, args)
            except psycopg.OperationalError as exc:
                pool.putconn(conn)
                if attempt or not conn.broken:
                    raise unavailable(self.read_dsn or "", exc) from exc
                pool.check()  # after a restart every idle connection is dead: replace them all
                continue
            except BaseException:
                pool.putconn(conn)
                raise
            pool.putconn(conn)
            return result
        raise AssertionError("unreachable")

    # -- write path (see write.py / load.py): thin shells over the pure planning, on the write pool --

    @contextlib.contextmanager
    def write_connection(self) -> Iterator[psycopg.Connection]:
        """A write-pool connection, with database errors translated."""
        if self.write_pool is None:
            raise DatabaseUnavailableError("no write pool: the store is not open or was opened with write_pool_size=0")
        with _translate_errors(self.dsn or "", self.acquire_timeout), self.write_pool.connection() as conn:
            yield conn

    def write_features(self, table: str, data: Any, **options: Any) -> LoadSummary:
        """Bulk-load ``data`` (files, Arrow, pandas/polars) into ``table`` in one transaction; see
        ``load.load`` for the sources, the options (LoadOptions fields and ``progress``) and the errors."""
        from .load import load

        with self.write_connection() as conn:
            return load(conn, self.registry, table, data, **options)

    def update_features(self, key: bytes | str, table: str, values: Mapping[str, Any], *, nan: str = "reject") -> None:
        """Upsert some or all features of one entity, in one round-trip (see write.py)."""
        self.update_features_batch(table, [(key, values)], nan=nan)

    def update_features_batch(self, table: str, rows: UpdateRows, *, nan: str = "reject") -> int:
        """Upsert many entities (``{key: values}`` or ``(key, values)`` pairs) in one round-trip and
        one transaction. Returns the number of distinct keys written."""
        plans = plan_updates(self.registry, table, rows, nan=nan)
        with self.write_connection() as conn:
            cur = psycopg.RawCursor(conn)
            if len(plans) == 1:
                cur.execute(plans[0][0].statement, plans[0][1], prepare=True)
                return len(plans[0][1][0])
            try:  # rows setting different columns: a statement per column set, one transaction, one round-trip
                with conn.pipeline():
                    cur.execute(b"BEGIN", prepare=False)
                    for upsert, params in plans:
                        cur.execute(upsert.statement, params, prepare=True)
                    cur.execute(b"COMMIT", prepare=False)
            except BaseException:
                conn.rollback()
                raise
        return sum(len(params[0]) for _, params in plans)


# -- async ----------------------------------------------------------------------------------------


async def _execute_async(conn: psycopg.AsyncConnection, reader: Reader, params: tuple[Any, ...]) -> Features:
    fetch = reader.fetch
    if fetch is Fetch.ONE or fetch is Fetch.ALL:
        cur = getattr(conn, _CURSOR, None) or psycopg.AsyncRawCursor(conn)
        await cur.execute(reader.statements[0], params, prepare=True, binary=True)
        return reader.decode(await cur.fetchone() if fetch is Fetch.ONE else await cur.fetchall())
    if fetch is Fetch.PIPELINE:
        cursors = _pipeline_cursors(conn, len(reader.statements), psycopg.AsyncRawCursor)
        async with conn.pipeline():
            for cur, stmt in zip(cursors, reader.statements):
                await cur.execute(stmt, params, prepare=True, binary=True)
        return reader.decode([await cur.fetchone() for cur, _ in zip(cursors, reader.statements)])
    cur = getattr(conn, _CURSOR, None) or psycopg.AsyncRawCursor(conn)
    rows = []
    for stmt in reader.statements:
        await cur.execute(stmt, params, prepare=True, binary=True)
        rows.append(await cur.fetchone())
    return reader.decode(rows)


async def _execute_batch_async(conn: psycopg.AsyncConnection, reader: BatchReader, keys: list[bytes]) -> list[Features]:
    cur = getattr(conn, _CURSOR, None) or psycopg.AsyncRawCursor(conn)
    await cur.execute(reader.statement, (keys,), prepare=True, binary=True)
    return reader.decode(await cur.fetchall())


class AsyncFeatureStore(_StoreCore):
    """The asyncio twin of FeatureStore, same API with ``await``. Open with ``async with`` or ``await open()``."""

    def __init__(self, registry: Registry | str | Path, dsn: str | None = None, **kwargs: Any):
        super().__init__(registry, dsn, **kwargs)
        self.read_pool = self.write_pool = None

    async def open(self) -> None:
        import asyncio

        if not self.dsn:
            self.dsn = await asyncio.to_thread(resolve_dsn, None)
        dsn = self.dsn
        read_dsn = self.read_dsn = self.read_dsn or dsn
        await check_connection_async(read_dsn, self.connect_timeout)
        if read_dsn != dsn and self.write_pool_size > 0:
            await check_connection_async(dsn, self.connect_timeout)
        self.read_pool = make_async_pool(read_dsn, **self._pool_settings(read=True))
        if self.write_pool_size > 0:
            self.write_pool = make_async_pool(dsn, **self._pool_settings(read=False))
        try:
            await self.read_pool.open(wait=True, timeout=self.connect_timeout + 10)
            if self.write_pool is not None:
                await self.write_pool.open(wait=True, timeout=self.connect_timeout + 10)
        except PoolTimeout as exc:
            await self.close()
            raise unavailable(dsn, exc, self.connect_timeout) from exc
        if self.hot_keys:
            await self.get_features_batch(self.hot_keys)
        self.ready = True

    async def _warm(self, conn: psycopg.AsyncConnection) -> None:
        cur = psycopg.AsyncRawCursor(conn)
        await cur.execute(READ_SESSION_SETUP)
        for stmt, params in self._warmup_statements():
            await cur.execute(stmt, params, prepare=True, binary=True)
            await cur.fetchall()
        setattr(conn, _CURSOR, cur)

    async def close(self) -> None:
        self.ready = False
        for pool in (self.read_pool, self.write_pool):
            if pool is not None:
                await pool.close()

    async def __aenter__(self) -> "AsyncFeatureStore":
        if self.read_pool is None:
            await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @contextlib.asynccontextmanager
    async def connection(self):  # type: ignore[no-untyped-def]
        assert self.read_pool is not None, "store is not open"
        with _translate_errors(self.read_dsn or "", self.acquire_timeout):
            async with self.read_pool.connection() as conn:
                yield conn

    async def get_features(
        self,
        key: bytes | str,
        tables: Iterable[str] | None = None,
        features: FeaturesArg = None,
        *,
        strategy: Strategy | str | None = None,
    ) -> Features:
        return await self.read(self.reader(tables, features, strategy), key)

    async def read(self, reader: Reader, key: bytes | str) -> Features:
        return await self._run(_execute_async, reader, (parse_key(key),))

    async def get_features_batch(
        self, keys: Sequence[bytes | str], tables: Iterable[str] | None = None, features: FeaturesArg = None
    ) -> list[Features]:
        return await self.read_batch(self.batch_reader(tables, features), keys)

    async def read_batch(self, reader: BatchReader, keys: Sequence[bytes | str]) -> list[Features]:
        parsed = parse_keys(keys)
        if not parsed:
            return []
        return await self._run(_execute_batch_async, reader, parsed)

    async def _run(self, execute: Any, reader: Any, args: Any) -> Any:
        """The async twin of ``FeatureStore._run`` (same retry rule)."""
        pool = self.read_pool
        assert pool is not None, "store is not open"
        for attempt in (0, 1):
            try:
                conn = await pool.getconn()
            except PoolTimeout as exc:
                raise _pool_timeout(exc, self.acquire_timeout) from exc
            try:
                result = await execute(conn, reader, args)
            except psycopg.OperationalError as exc:
                await pool.putconn(conn)
                if attempt or not conn.broken:
                    raise unavailable(self.read_dsn or "", exc) from exc
                await pool.check()
                continue
            except BaseException:
                await pool.putconn(conn)
                raise
            await pool.putconn(conn)
            return result
        raise AssertionError("unreachable")

    # -- write path (see write.py / load.py): thin shells over the pure planning, on the write pool --

    @contextlib.asynccontextmanager
    async def write_connection(self):  # type: ignore[no-untyped-def]
        """A write-pool connection, with database errors translated."""
        if self.write_pool is None:
            raise DatabaseUnavailableError("no write pool: the store is not open or was opened with write_pool_size=0")
        with _translate_errors(self.dsn or "", self.acquire_timeout):
            async with self.write_pool.connection() as conn:
                yield conn

    async def write_features(self, table: str, data: Any, **options: Any) -> LoadSummary:
        """``FeatureStore.write_features``; file reading and encoding run on a worker thread."""
        from .load import load_async

        async with self.write_connection() as conn:
            return await load_async(conn, self.registry, table, data, **options)

    async def update_features(self, key: bytes | str, table: str, values: Mapping[str, Any], *, nan: str = "reject") -> None:
        await self.update_features_batch(table, [(key, values)], nan=nan)

    async def update_features_batch(self, table: str, rows: UpdateRows, *, nan: str = "reject") -> int:
        plans = plan_updates(self.registry, table, rows, nan=nan)
        async with self.write_connection() as conn:
            cur = psycopg.AsyncRawCursor(conn)
            if len(plans) == 1:
                await cur.execute(plans[0][0].statement, plans[0][1], prepare=True)
                return len(plans[0][1][0])
            try:
                async with conn.pipeline():
                    await cur.execute(b"BEGIN", prepare=False)
                    for upsert, params in plans:
                        await cur.execute(upsert.statement, params, prepare=True)
                    await cur.execute(b"COMMIT", prepare=False)
            except BaseException:
                await conn.rollback()
                raise
        return sum(len(params[0]) for _, params in plans)
