"""The feature store (async source).

The asyncio store is written in ``store_async.py`` and the sync store is generated from it by
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
  on a fresh connection (for each dead pooled connection it meets, at most pool_size + 1 times);
  a live update is sent only on a connection known alive (one the server closed while idle is
  replaced before anything is sent) and never twice (lost after sending: WriteOutcomeUnknownError);
  a bulk load is retried only when nothing can have been committed and its source can be read again.

This module holds the store's lifecycle (``open``, ``close``, ``reload``, ``status``) and its
public methods; it composes objects that own their state, each an async source with a generated
sync twin:

- ``options.py``: StoreOptions, every setting, validated once;
- ``reads_async.py``: ``AsyncReadRouter``, the read path: the read targets and their pools, routing
  and retry over them, their renewal (``max_lifetime``, after an outage), the probes of targets
  that are down, rechecks of broken tables, the warm-up of each new read connection;
- ``writes_async.py``: ``AsyncWritePath``, the write path: the write pool (opened and closed with
  the store, renewed after an outage), upserts and their retry;
- ``opening_async.py``: what ``open`` and ``reload`` learn through the router (catalog
  inspection, materialized services, read functions, statements prepared on every connection);
- ``base.py``: what all share without I/O.

Every failure is a typed error (see ``errors.py``): DatabaseUnavailableError (down), its
subclasses AuthenticationError (credentials refused) and PoolExhaustedError (busy),
QueryTimeoutError, SchemaDriftError, StoreClosedError, ReadOnlyStoreError, DatabaseError.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Unpack, overload

import psycopg
from psycopg_pool import AsyncConnectionPool

from ..connections import (
    database_error,
    prepares,
    resolve_dsn,
)
from ..connections.concurrency import AsyncBackground, AsyncLock, open_in_constructor_async, to_thread_async
from ..connections.credentials import with_deadline
from ..definitions import Registry
from ..errors import (
    ConfigError,
    ContextError,
    ExtraNotInstalledError,
    LoadInterruptedError,
    SchemaDriftError,
    StoreClosedError,
)
from ..reader import (
    BatchReader,
    Features,
    FeaturesArg,
    Reader,
    ReaderCache,
    Strategy,
)
from ..reader.nearest import Nearest, check_request
from ..reader.transforms import Observe, ServiceTransforms, compile_transforms, no_context
from ..reader.vector import Output, ServiceVector, ServiceVectors, as_numpy, check_output, stack_numpy
from ..write import UpdateCount, UpdateRows, plan_updates
from .base import (
    ON_DRIFT,
    Router,
    Served,
    TableHealth,
)
from .nearest_async import execute_nearest_async, vector_facts_async
from .opening_async import (
    find_materialized_async,
    first_inspection_async,
    prepare_everywhere_async,
    read_functions_async,
)
from .options import DEFAULT_OPTIONS, StoreOptions, StoreSettings, hashkey_hot_keys, hot_keys_by_entity
from .reads_async import AsyncReadRouter, execute_async, execute_batch_async, select_one_async
from .writes_async import AsyncWritePath

if TYPE_CHECKING:  # load imports pyarrow: only a bulk load pays for it
    from ..load import LoadSummary

logger = logging.getLogger("pgfeatures")

T = TypeVar("T")  # what a compiled reader decodes to: a FeatureResult, or a ServiceVector


class AsyncFeatureStore:
    """The feature store: reads any subset of tables for one key or many in one round-trip,
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
    - ``options``: every setting below at once (a StoreOptions, see store/options.py); keyword
      settings given too are applied on top of it.
    - ``strategy``: default read strategy (``single``; see reader.py).
    - ``pool_size`` / ``write_pool_size``: fixed pool sizes (read pool per read target); a write
      pool of 0 makes a read-only store (writes raise ReadOnlyStoreError, and the primary is not
      needed to open when replicas serve the reads).
    - ``pool_order``: which idle connection a request takes: ``"lifo"`` (default), the most recently
      returned, so a lightly loaded store keeps few backends hot; ``"fifo"``: psycopg_pool's own
      order, every connection in turn (see connections/pool_async.py).
    - ``read_dsns`` (or one ``read_dsn``): read replicas, taken in turn; ``read_fallback``
      (default True): while every replica is down (or too far behind), reads go to the primary,
      and back to the replicas when they return. ``max_replica_lag``: seconds; a replica further
      behind the primary is not read.
    - ``credentials``: a credential provider (see ``pgfeatures.connections.credentials``), called
      for every new connection; its password or parameters override the DSN's.
      ``credentials_timeout``: seconds it may take to answer; past that the connection attempt
      fails with CredentialsTimeoutError (the provider is asked again by the next attempt).
    - ``pooler``: ``"transaction"`` behind a transaction-mode pooler such as PgBouncer: no
      statement is ever prepared and no session setting made (slower: see README); ``"session"``
      or None: prepared statements, the fast path.
    - ``max_lifetime``: seconds after which a pooled connection is replaced (with jitter), so
      rotating credentials are renewed in time and server-side connection caps are respected. A
      read pool is renewed whole: a new pool is filled (through the provider) while the old one
      serves, then takes its place, so a renewal never makes a read wait or fail; a renewal that
      cannot fill (provider or database failing) keeps the old connections and is tried again.
    - ``connect_timeout``: how long ``open`` and each new connection wait for the database;
      ``acquire_timeout``: how long a request waits for a pooled connection;
      ``reconnect_timeout``: how long a pool keeps retrying a lost connection before the next
      request starts a fresh attempt (see connections/pool_async.py).
    - ``on_drift``: ``"raise"`` (default): ``open`` fails with a SchemaDriftError when a table or a
      column of the definitions is missing or of another type; ``"isolate"``: such tables are left
      out and only requests touching them fail (with SchemaDriftError naming the table).
    - ``hot_keys``: read once at open, to load their pages into the cache: a list of keys when the
      tables have one entity, else ``{entity: [keys]}``; each key is checked against its entity.
    - ``warm``: extra compiled readers prepared on every read connection (the full read and the
      full batch always are).
    - ``reader_cache_size``: most prepared statements kept per connection for compiled request
      shapes (bounded LRU).
    - ``read_application_name`` / ``write_application_name``: ``application_name`` of the pools.
    - ``max_future_skew``: seconds an event time (``updated_at``) written by a live update may be
      ahead of the database server's clock (default 300); a batch with one further ahead is refused
      whole (FeatureValueError naming the row). None: no bound.
    - ``exact_limit``: the most rows of a table an exact nearest-neighbour search may scan (``nearest``
      without a usable HNSW index, or with ``exact=True``); past it the search is refused
      (ExactSearchRefusedError). Default 50,000.

    Raises DefinitionError for bad definitions, ConfigError for bad settings (before any I/O).
    """

    def __init__(
        self,
        registry: Registry | str | Path,
        dsn: str | None = None,
        *,
        open: bool | None = None,
        options: StoreOptions | None = None,
        read_dsn: str | None = None,
        **settings: Unpack[StoreSettings],
    ):
        registry = registry if isinstance(registry, Registry) else Registry.from_toml(registry)
        options = (options or DEFAULT_OPTIONS).with_settings(read_dsn, **settings)
        self.options = options
        self.dsn = dsn
        self.read_dsns = options.read_dsns
        self.read_fallback = options.read_fallback
        self.max_replica_lag = options.max_replica_lag
        credentials = options.credentials
        self.credentials = with_deadline(credentials, options.credentials_timeout) if credentials is not None else None
        self.pooler = options.pooler
        self._prepare = prepares(self.pooler)
        self.max_lifetime = options.max_lifetime
        self.strategy = options.read_strategy
        self.pool_size = options.pool_size
        self.write_pool_size = options.write_pool_size
        self.pool_order = options.pool_order
        self.connect_timeout = options.connect_timeout
        self.acquire_timeout = options.acquire_timeout
        self.reconnect_timeout = options.reconnect_timeout
        self.on_drift = options.on_drift
        self.read_application_name = options.read_application_name
        self.write_application_name = options.write_application_name
        self.max_future_skew = options.max_future_skew
        self.reader_cache_size = options.reader_cache_size
        self.extra_warm = list(options.warm)
        self._served = Served.new(registry, options.reader_cache_size)  # see ``reload``
        self.hot_keys_by_entity = hot_keys_by_entity(registry, self._served.readers, options.hot_keys)
        self.hot_keys = hashkey_hot_keys(registry, self.hot_keys_by_entity)  # what warm-up's cache probe reads
        self._reloading = AsyncLock()
        # Told (service, transform, seconds) after each transform call: the HTTP service's metrics set it.
        self.on_transform: Observe | None = None
        # The read path (targets, their pools, renewals and probes) and the write path own their state.
        self.reads = AsyncReadRouter(options, self.credentials, lambda: self._served)
        self.writes = AsyncWritePath(options, self.credentials, self._prepare)  # owns the write pool
        self.ready = False
        open_in_constructor_async(self, open)

    # -- what it serves ------------------------------------------------------------------------------

    @property
    def registry(self) -> Registry:
        """The definitions served now (``reload`` replaces them)."""
        return self._served.registry

    @property
    def readers(self) -> ReaderCache:
        """The compiled readers of the definitions served now."""
        return self._served.readers

    @property
    def health(self) -> TableHealth:
        return self._served.health

    @property
    def warm_readers(self) -> list[Reader[Any] | BatchReader[Any]]:
        """The readers prepared on every read connection before it serves."""
        return self._served.warm

    @property
    def fingerprint(self) -> str:
        """The fingerprint of the definitions served now (``Registry.fingerprint``)."""
        return self._served.fingerprint

    # -- compiled readers ---------------------------------------------------------------------------

    def reader(
        self, tables: Iterable[str] | None = None, features: FeaturesArg = None, strategy: Strategy | str | None = None
    ) -> Reader[Features]:
        """The compiled reader for this request shape (cached). Pass it to ``read`` to skip even the
        cache lookup. Raises UnknownTableError / UnknownFeatureError naming the valid ones."""
        return self.readers.reader(tables, features, strategy or self.strategy)

    def batch_reader(self, tables: Iterable[str] | None = None, features: FeaturesArg = None) -> BatchReader[Features]:
        """The compiled many-keys reader for this request shape (cached)."""
        return self.readers.batch_reader(tables, features)

    def _warm_readers(self, served: Served) -> list[Reader[Any] | BatchReader[Any]]:
        """What every read connection prepares for ``served``: the full read and batch of every table
        that can be served, every feature service's single and batch readers (except those touching a
        broken table), and the readers asked for (``warm``)."""
        readers, broken = served.readers, served.health.broken
        servable = _servable(served)
        out: list[Reader[Any] | BatchReader[Any]] = []
        if servable != []:  # every table broken (isolate): nothing to warm; each request names what is broken
            out += [readers.reader(servable, None, self.strategy), readers.batch_reader(servable, None)]
        for name in served.registry.services:
            reader = readers.service_reader(name, None, self.strategy)
            if broken.isdisjoint(reader.tables):
                out += [reader, readers.service_batch_reader(name, None)]
        return [*out, *self.extra_warm]

    async def _compile(self, router: Router, served: Served, on_drift: str | None = None) -> Served:
        """Make ``served`` ready to serve: its tables checked against the live catalog (SchemaDriftError
        with ``on_drift="raise"``, default the store's), its built materialized services found, its warm
        readers compiled (and, behind a transaction-mode pooler, their functions found or created). Its
        services' transforms are resolved first, before any I/O (DefinitionError naming the transform)."""
        served.transforms = compile_transforms(served.registry)
        checks = await first_inspection_async(self.reads, router, served)
        served.health.update(checks)
        if served.health.broken and (on_drift or self.on_drift) == "raise":
            raise served.health.error(served.health.broken)
        await find_materialized_async(self.reads, router, served)
        served.warm = self._warm_readers(served)
        if not self._prepare:
            served.via_functions = await read_functions_async(self.reads, router, served)
        return served

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
            self.dsn = await to_thread_async(resolve_dsn, None)
        dsn = self.dsn
        router = self.reads.targets(dsn)
        self._served = await self._compile(router, Served.new(self.registry, self.reader_cache_size))
        await self.writes.open(dsn)  # not waited for: writes are not needed to serve reads
        try:
            await self.reads.open_async(router)
        except BaseException:
            await self.writes.close()
            raise
        servable = _servable(self._served)
        for entity, keys in self.hot_keys_by_entity.items():  # per entity: one batch over its tables that can be served
            tables = [
                n
                for n, t in self.registry.tables.items()
                if t.entity.name == entity and (servable is None or n in servable)
            ]
            if tables:
                await self.get_features_batch(keys, tables)
        self.ready = True

    async def reload(self, registry: Registry | str | Path, *, on_drift: str | None = None) -> str:
        """Serve ``registry`` (a Registry, or the path of a TOML file) from now on, without closing.

        The new definitions are compiled and checked against the live catalog, their materialized
        services found, and their readers prepared on every idle read connection while the old ones
        go on serving; then they are swapped in at once. Requests already running finish on the old
        readers. Returns the new definitions' fingerprint.

        ``on_drift``: as the constructor's, for this reload (default: the store's); a service serving with
        ``"isolate"`` reloads with ``"raise"``, so definitions the database does not match are refused.

        Raises ConfigError (an unknown ``on_drift``), DefinitionError (a file that does not load), SchemaDriftError (a table or column of the
        new definitions is missing or of another type, with ``on_drift="raise"``),
        DatabaseUnavailableError, StoreClosedError: in every case the old definitions go on serving.
        """
        router = self.router
        if router is None:
            raise StoreClosedError("the store is not open: call open() or use it as a context manager")
        if not isinstance(registry, Registry):
            registry = await to_thread_async(Registry.from_toml, registry)
        async with self._reloading:
            if on_drift is not None and on_drift not in ON_DRIFT:  # a setting, as the constructor's
                raise ConfigError(f"unknown on_drift {on_drift!r}; valid: {', '.join(ON_DRIFT)}")
            served = await self._compile(router, Served.new(registry, self.reader_cache_size), on_drift)
            await prepare_everywhere_async(self.reads, router, served)
            if self.router is not router:
                raise StoreClosedError("the store closed while reloading its definitions")
            old, self._served = self._served, served
        if old.fingerprint != served.fingerprint:
            logger.warning("pgfeatures: definitions reloaded: %s -> %s", old.fingerprint, served.fingerprint)
        return served.fingerprint

    async def close(self) -> None:
        """Close the pools; in-flight calls finish or fail with StoreClosedError. Closing twice is harmless."""
        self.ready = False
        await self.reads.close_async()
        await self.writes.close()

    async def __aenter__(self) -> AsyncFeatureStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def router(self) -> Router | None:
        """The read targets in their routing order (None while the store is closed)."""
        return self.reads.router

    @property
    def background(self) -> AsyncBackground:
        """The read path's background work (probes, renewals), stopped at close."""
        return self.reads.background

    @property
    def write_pool(self) -> AsyncConnectionPool | None:
        """The write pool (None when the store is closed, or has none: ``write_pool_size=0``)."""
        return self.writes.pool

    @property
    def read_pool(self) -> AsyncConnectionPool | None:
        """The pool of the first read target (the primary when there is no replica)."""
        return self.router.targets[0].pool if self.router is not None else None

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """A warmed read connection of the first read target that serves, with database errors
        translated (for diagnostics; reads go through ``read``/``read_batch``)."""
        async with self.reads.connection() as conn:
            yield conn

    def status(self) -> dict[str, Any]:
        """What the store can serve now: read targets (up or down, why, lag), tables that cannot be
        served and why, whether it has a write pool. No I/O."""
        router = self.router
        return {
            "ready": self.ready,
            "read_targets": [
                {
                    "name": t.name,
                    "up": not t.down and (router.serving(t) if router else False),
                    "reason": t.reason,
                    "lag": t.lag,
                }
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

    async def read(self, reader: Reader[T], key: Any) -> T:
        """Run a compiled reader for one request's keys: one round-trip (N for ``sequential``). Raises as ``get_features``.

        A reader of a materialized service's serving rows whose rows cannot be read any more (the
        service was rebuilt for another definition, or a table it reads was dropped) is never
        answered from other rows: its statement fails, the service is read table by table from then
        on, and this request is answered that way (one more round-trip, once)."""
        return await self.read_bound(reader, reader.binder.one(key))

    async def read_bound(self, reader: Reader[T], params: tuple[Any, ...]) -> T:
        """``read`` for a request whose keys were already checked and bound (``reader.binder.one(key)``):
        a front end binds each key once. Raises as ``read``, but no KeyFormatError."""
        via = self._served.via_functions
        if via:
            reader = _via(via, reader.statements[0], reader)
        try:
            return await self.reads.run_async(execute_async, reader, params)
        except SchemaDriftError as exc:
            if reader.fallback is None:
                raise
            fallback: Reader[T] = self._serving_rows_gone(reader, exc)
        return await self.read_bound(fallback, params)  # the flexible twin binds the same entities

    def _serving_rows_gone(self, reader: Reader[Any] | BatchReader[Any], exc: SchemaDriftError) -> Any:
        """The flexible twin of a materialized reader whose serving rows cannot be read (see ``read``)."""
        service = reader.selection.service or ""
        if self.readers.demote(service):
            logger.warning(
                "pgfeatures: the serving rows of service %s cannot be read any more (%s): it is read table by "
                "table until they are rebuilt and the definitions reloaded",
                service,
                str(exc).strip(),
            )
        assert reader.fallback is not None
        return reader.fallback()

    async def get_features_batch(
        self, keys: Any, tables: Iterable[str] | None = None, features: FeaturesArg = None
    ) -> list[Features]:
        """One result per row of keys, in input order (duplicates repeat), in one round-trip.

        ``keys``: a list of keys (bare, or one per entity as for ``get_features``), or
        ``{entity: [keys]}`` (one list per entity, of equal lengths). Raises as ``get_features``.
        """
        return await self.read_batch(self.batch_reader(tables, features), keys)

    @overload
    async def get_service(self, name: str, key: Any, features: FeaturesArg = None, *,
                          output: Literal["dict"] = "dict", context: Mapping[str, Any] | None = None) -> Features: ...
    @overload
    async def get_service(self, name: str, key: Any, features: FeaturesArg = None, *,
                          output: Literal["list", "numpy"], context: Mapping[str, Any] | None = None) -> ServiceVector: ...
    @overload
    async def get_service(self, name: str, key: Any, features: FeaturesArg = None, *,
                          output: Output, context: Mapping[str, Any] | None = None) -> Features | ServiceVector: ...

    async def get_service(self, name: str, key: Any, features: FeaturesArg = None, *,
                          output: Output = "dict", context: Mapping[str, Any] | None = None) -> Features | ServiceVector:
        """The features of the feature service ``name`` for one request's keys (as ``get_features``),
        with the service's ttl; from its serving rows when it is materialized and built.

        ``features``: a subset of the service's. ``output``: ``"dict"`` (a FeatureResult, tables in
        the service's order), ``"list"`` or ``"numpy"``: a ServiceVector, the features as one flat
        vector in the service's order (``.names``), missing values None (NaN in numpy; float32 when
        every feature is real, else float64), and ``.status`` per table.

        ``context``: the request's values the service's transforms take (``{name: value}``, checked
        against its declared types before any I/O). The transforms run after the read, with the
        connection back in its pool; their outputs join the answer as ``result[transform]`` (and after
        the stored features in a vector). A subset (``features``) is a read of stored features: no
        transform runs. Raises UnknownServiceError naming the valid services, ContextError for a bad
        context, TransformError for a transform that fails, and as ``get_features``.
        """
        plan = self.transform_plan(name, features, context)
        ctx = plan.context(context) if plan is not None else None
        if output == "dict":
            found = await self.read(self.readers.service_reader(name, features, self.strategy), key)
            return found if plan is None else await self.apply_transforms(plan, found, ctx)
        check_output(output)
        vector = await self.read(self.readers.service_vector_reader(name, features, self.strategy), key)
        if plan is not None:
            vector = await self.apply_transforms(plan, vector, ctx)
        return as_numpy(vector, self.registry, plan.types if plan else None) if output == "numpy" else vector

    @overload
    async def get_service_batch(self, name: str, keys: Any, features: FeaturesArg = None, *,
                                output: Literal["dict"] = "dict", context: Any = None) -> list[Features]: ...
    @overload
    async def get_service_batch(self, name: str, keys: Any, features: FeaturesArg = None, *,
                                output: Literal["list"], context: Any = None) -> list[ServiceVector]: ...
    @overload
    async def get_service_batch(self, name: str, keys: Any, features: FeaturesArg = None, *,
                                output: Literal["numpy"], context: Any = None) -> ServiceVectors: ...
    @overload
    async def get_service_batch(self, name: str, keys: Any, features: FeaturesArg = None, *,
                                output: Output, context: Any = None
                                ) -> list[Features] | list[ServiceVector] | ServiceVectors: ...

    async def get_service_batch(self, name: str, keys: Any, features: FeaturesArg = None, *,
                                output: Output = "dict", context: Any = None
                                ) -> list[Features] | list[ServiceVector] | ServiceVectors:
        """``get_service`` for many rows of keys, in one round-trip (keys as for ``get_features_batch``):
        a list of results in input order, or with ``output="numpy"`` one ServiceVectors (a 2-D array,
        a row per request).

        ``context``: one object per row of keys (a list), or columns (``{name: [value per row]}``); a
        ``batch = true`` transform is called once for the whole batch, on columns. Raises as ``get_service``."""
        plan = self.transform_plan(name, features, context)
        if output == "dict":
            reader = self.readers.service_batch_reader(name, features)
            arrays = reader.binder.many(keys)
            columns = plan.contexts(context, len(arrays[0])) if plan is not None else None
            found = await self.read_batch_bound(reader, arrays)
            return found if plan is None else await self.apply_transforms_batch(plan, found, columns)
        check_output(output)
        vreader = self.readers.service_vector_batch_reader(name, features)
        arrays = vreader.binder.many(keys)
        columns = plan.contexts(context, len(arrays[0])) if plan is not None else None
        vectors = await self.read_batch_bound(vreader, arrays)
        if plan is not None:
            vectors = await self.apply_transforms_batch(plan, vectors, columns)
        return stack_numpy(vectors, self.registry, plan.types if plan else None) if output == "numpy" else vectors

    def transform_plan(self, name: str, features: FeaturesArg, context: Any) -> ServiceTransforms | None:
        """What runs after a read of service ``name`` with ``features`` (None: all) and ``context``: its compiled
        context checks and transforms (``reader/transforms.py``: ``context``/``contexts`` check a request's
        context, ``apply_transforms`` runs them), or None when nothing runs (the service declares none, or a
        subset is read). For front ends that read with compiled readers (``read_bound``). No I/O.
        Raises ContextError for a context sent to a service without one, or with a subset."""
        plan = self._served.transforms.get(name)
        if plan is None:
            if context:
                self.registry.service(name)  # UnknownServiceError first
                no_context(name, context)
            return None
        if features is not None:  # a subset is a read of stored features: a context would go unused
            if context:
                raise ContextError(
                    f"service {name!r}: a read of a subset of its features (features=...) runs no transform, so it "
                    "takes no context: read the whole service, or drop the context"
                )
            return None
        return plan

    async def apply_transforms(self, plan: ServiceTransforms, result: T, context: Mapping[str, Any] | None) -> T:
        """``plan``'s transforms run on one request's result (a FeatureResult or a ServiceVector) with its
        checked ``context``: here, or on a worker thread when one of them says ``offload = true`` (the
        asyncio store's event loop is not blocked by it). Raises TransformError."""
        if plan.offload:
            done: T = await to_thread_async(plan.apply, result, context or {}, self.on_transform)
        else:
            done = plan.apply(result, context or {}, self.on_transform)
        return done

    async def apply_transforms_batch(
        self, plan: ServiceTransforms, results: list[T], columns: Mapping[str, list[Any]] | None
    ) -> list[T]:
        """``apply_transforms`` for a batch's results, with the context as columns (``plan.contexts``)."""
        if plan.offload:
            return await to_thread_async(plan.apply_batch, results, columns or {}, self.on_transform)
        return plan.apply_batch(results, columns or {}, self.on_transform)

    async def read_batch(self, reader: BatchReader[T], keys: Any) -> list[T]:
        """Run a compiled batch reader: one statement for all ``keys`` (see ``get_features_batch``).
        Raises as ``get_features``."""
        return await self.read_batch_bound(reader, reader.binder.many(keys))

    async def read_batch_bound(self, reader: BatchReader[T], arrays: tuple[list[Any], ...]) -> list[T]:
        """``read_batch`` for keys already checked and bound (``reader.binder.many(keys)``: one array per
        entity). Raises as ``read_batch``, but no KeyFormatError."""
        if not arrays[0]:
            return []
        via = self._served.via_functions
        if via:
            reader = _via(via, reader.statement, reader)
        try:
            return await self.reads.run_async(execute_batch_async, reader, arrays)
        except SchemaDriftError as exc:
            if reader.fallback is None:
                raise
            fallback: BatchReader[T] = self._serving_rows_gone(reader, exc)
        return await self.read_batch_bound(fallback, arrays)

    async def nearest(
        self,
        table: str,
        feature: str,
        query: Any,
        k: int = 10,
        *,
        features: Sequence[str] | str | None = None,
        where: Mapping[str, Any] | None = None,
        ef_search: int | None = None,
        exact: bool = False,
    ) -> Nearest:
        """The ``k`` keys of ``table`` whose embedding ``feature`` is nearest ``query``, nearest first, with
        their distances (smaller is nearer: ``ip`` gives the negative inner product) and the ``features`` of
        their rows (names, ``"*"`` for all, None for none; defaults applied as by ``get_features``), in one
        statement and one round-trip. A row past the table's ttl is not a neighbour.

        The search is ``"hnsw"`` when the feature declares ``index = "hnsw"`` and the database has that
        index, with ``ef_search`` (k..1000; default the server's, at least ``k``) for this request only;
        else ``"exact"`` (or with ``exact=True``): every row's distance, refused past the store's
        ``exact_limit`` rows. ``where``: ``{feature: value | [values] | None}``, equality on the table's
        scalar, string and timestamp features, ANDed. See ``reader/nearest.py``.

        Raises UnknownTableError / UnknownFeatureError naming the valid ones, NearestError (not an embedding,
        ``k`` or ``ef_search`` out of range, a bad ``where``), FeatureValueError (a query of the wrong dimension,
        non-finite, or all zeros for cosine) before any I/O; ExactSearchRefusedError; and as ``get_features``.
        """
        request = check_request(
            self.registry, table, feature, query, k, features=features, where=where, ef_search=ef_search, exact=exact
        )
        readers = self.readers
        facts = readers.vector_facts.get((table, feature))
        if facts is None:
            args = (self.registry.schema, request.table, request.feature)
            facts = readers.vector_facts[(table, feature)] = await self.reads.run_async(vector_facts_async, None, args)
        reader = readers.nearest_reader(request, facts, self.options.exact_limit)
        return await self.reads.run_async(execute_nearest_async, reader, reader.params(request))

    async def ping(self) -> None:
        """``SELECT 1`` through the read path (same targets, fallback and retry as a read).

        Raises what a read would: DatabaseUnavailableError / AuthenticationError / StoreClosedError.
        """
        await self.reads.run_async(select_one_async, None, None)

    # -- writes -------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def write_connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """A write-pool connection, with database errors translated. Raises ReadOnlyStoreError
        without a write pool, DatabaseUnavailableError when the primary cannot be reached."""
        pool, conn = await self.writes.connection_async()
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
        once on a fresh connection when its source can be read again; otherwise the error says so.
        Raises ExtraNotInstalledError without the load extra (numpy, pyarrow)."""
        try:
            from ..load import load_async
        except ImportError as exc:  # the core install: psycopg only
            raise ExtraNotInstalledError(
                f"write_features needs the load extra (module {exc.name or exc!r} is missing): "
                "pip install 'pgfeatures[load]'"
            ) from None

        for attempt in (0, 1):
            try:
                async with self.write_connection() as conn:
                    return await load_async(conn, self.registry, table, data, **options)
            except LoadInterruptedError as exc:
                if attempt or not exc.retry_safe:  # committed, unknown, or a one-shot source: say so, do not guess
                    raise
                logger.warning(
                    "pgfeatures: load into %s lost its connection before COMMIT (%s); retrying once", table, exc
                )
                await self.writes.writable().check()
        raise AssertionError("unreachable")

    async def update_features(
        self,
        key: Any,
        table: str,
        values: Mapping[str, Any],
        *,
        nan: str = "reject",
        inf: str = "reject",
        overwrite_newer: bool = False,
    ) -> UpdateCount:
        """Upsert some or all features of one entity, in one round-trip (see write.py). Returns 1, or 0
        when the stored row is newer than the given ``updated_at`` (newest wins). Raises as
        ``update_features_batch``."""
        return await self.update_features_batch(
            table, [(key, values)], nan=nan, inf=inf, overwrite_newer=overwrite_newer
        )

    async def update_features_batch(
        self, table: str, rows: UpdateRows, *, nan: str = "reject", inf: str = "reject", overwrite_newer: bool = False
    ) -> UpdateCount:
        """Upsert many entities (``{key: values}`` or ``(key, values)`` pairs) in one round-trip and one
        transaction. Returns the number of distinct keys written (an int), with ``.skipped``: keys whose
        stored row was newer than the row's ``updated_at`` and was kept (newest wins; pass
        ``overwrite_newer=True`` to write them anyway). NaN is refused unless ``nan="null"`` (written as
        NULL), ±Infinity unless ``inf="keep"`` (written as it is; JSON answers carry it as "Infinity").

        ``updated_at`` (event time) is an aware datetime, an ISO 8601 string with a zone or epoch
        seconds; rows without it are stamped with the database server's clock. A key given twice is
        merged in event-time order when every occurrence carries one (newest wins), else in order.

        Raises UnknownTableError, UnknownFeatureError, KeyFormatError, FeatureValueError before any
        I/O; FeatureValueError, with nothing written, when an event time is more than the store's
        ``max_future_skew`` ahead of the server's clock; ReadOnlyStoreError;
        DatabaseUnavailableError; SchemaDriftError. A pooled connection the
        server closed while idle (a restart, ``pg_terminate_backend``) is found before anything is
        sent on it and replaced; a connection lost after the update was sent raises
        WriteOutcomeUnknownError (a DatabaseUnavailableError): it may or may not have been applied, and
        it is not sent again.
        """
        plans = plan_updates(
            self.registry,
            table,
            rows,
            nan=nan,
            inf=inf,
            overwrite_newer=overwrite_newer,
            max_future_skew=self.max_future_skew,
        )
        return await self.writes.apply_async(plans)


def _via(via: Mapping[bytes, Any], statement: bytes, reader: Any) -> Any:
    """``reader`` in its function form (``pooler="transaction"``) when its statement has one, decoding as
    ``reader`` does: a vector reader shares its statement, so its function, with the dict reader."""
    twin = via.get(statement)
    if twin is None:
        return reader
    return twin if twin.decode is reader.decode else twin.decoding(reader.decode)


def _servable(served: Served) -> list[str] | None:
    """The tables of ``served`` to warm: every table (None), or (isolate) those that match their definitions."""
    if not served.health.broken:
        return None
    return [t for t in served.registry.tables if t not in served.health.broken]
