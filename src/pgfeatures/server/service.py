"""One worker's serving state, without HTTP: the store, coalescing, deadlines, readiness, metrics.

Lifecycle. ``start()`` returns at once and opens the store in the background
(retrying with backoff while the database is unreachable), then runs the
warm-up hooks; only then is the service ``ready``. The HTTP server therefore
answers ``/healthz`` from the first moment and ``/readyz`` says why it is
not ready yet.

Bounded waits. Every database call has two limits: the store's
``acquire_timeout`` for a pooled connection (pool exhausted or database
down), and ``request_timeout`` for the whole call. The call runs in a task of
its own and is abandoned at the deadline: cancelling a psycopg query waits
for the server to acknowledge the cancel, which a hung server never does, so
the request is answered first (QueryTimeoutError: 504 ``query_timeout``)
and the task is cancelled in the background, where the pool replaces its
connection. A call whose answer arrives in the loop iteration where its
deadline fires is late too (QueryTimeoutError, not the bare TimeoutError of
``asyncio.timeout``). Whatever fails, the caller gets a pgfeatures typed
error, whose class says whether to retry (see ``errors.py``).

Batches. A batch is read in chunks of ``batch_chunk_keys`` keys, one
statement each, with these bounds per chunk; at most ``batch_slots``
chunks (of all batches together) hold a read connection at once, so
single-key reads always have the rest of the pool (``open_batch``).

Feature services and vectors. A request names its reader (``features_reader``, ``service_reader``,
and their batch forms): the store's compiled reader for the request shape, or its batch form when
coalescing, decoding to FeatureResults or (``vector``) to ServiceVectors. Database time is also
recorded per feature service. A service's request-time transforms (``transform_plan``) run on what the
read returned, after the database call and outside its deadline, through the store's
``apply_transforms`` (inline, or on a worker thread for ``offload = true``), per request, or once per
batch chunk for a ``batch = true`` transform; their time is ``pgfeatures_transform_duration_seconds``.

Writes. ``push`` runs ``update_features_batch`` on the store's write pool (``write_pool_size``; 0
makes a read-only service whose pushes are 403 ``read_only``), under the same deadline.

Inventory. ``inventory`` (see ``inventory.py``) holds what the tables hold and how fresh they
are, refreshed in the background when asked for, at most every ``inventory_interval``.

Retention. With ``expire_every``, ``pgfeatures expire`` runs in the background (``retention_async``):
rows past their table's ttl plus ``expire_grace`` deleted in small batches, counted in
``pgfeatures_expired_rows_total``.

Readiness. The database counts as reachable if a read succeeded within the
last second and nothing failed since; otherwise one ``SELECT 1`` through the
read pool (shared by concurrent probes, result cached for a second) decides.
Going through the pool, rather than a fresh connection, means ``/readyz``
turns ready again only once the pool has reconnected, i.e. once reads work.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import psycopg
from psycopg_pool import PoolClosed, PoolTimeout

from ..connections import connect_async, database_error
from ..definitions import Registry
from ..errors import (
    AuthenticationError,
    DatabaseUnavailableError,
    PgFeaturesError,
    PoolExhaustedError,
    QueryTimeoutError,
    StoreClosedError,
    VectorOutputError,
)
from ..reader import BatchReader, FeaturesArg
from ..reader.transforms import ServiceTransforms
from ..store import AsyncFeatureStore
from ..write import UpdateCount
from .coalesce import Coalescer
from .config import ServerConfig
from .encoding import Float32Plan, json_outputs
from .errors import NotReadyError, classify
from .inventory import Inventory
from .metrics import Metrics, worker_exited
from .vectors import VectorPlan

log = logging.getLogger("pgfeatures.server")

WarmupHook = Callable[[AsyncFeatureStore], Awaitable[object]]
"""A warm-up step: awaited after the store is open, before the service reports ready."""

T = TypeVar("T")
P = TypeVar("P")  # a plan: Float32Plan, VectorPlan


class Readiness(NamedTuple):
    """What ``/readyz`` says: ``reason`` is a class (``ready``, ``warming_up``, ``shutting_down``, or the
    error type a read would get: ``database_unavailable``, ``database_auth_failed``, ``query_timeout``,
    ...), fit for anyone; ``message`` says what happened in words that may name hosts, users and a
    credential provider's error, for those holding the token."""

    ready: bool
    reason: str
    message: str


READY = Readiness(True, "ready", "ready")

PLANS_KEPT = 256  # request shapes whose Float32Plan is kept
HEALTHY_FOR = 1.0  # seconds a successful read (or probe) vouches for the database
PROBE_TIMEOUT = 1.0  # an orchestrator's probe typically times out at 1 s
METRICS_INTERVAL = 1.0
OPEN_BACKOFF = (0.5, 10.0)  # first and largest delay between attempts to open the store


class Service:
    """The store and everything around it for one worker process."""

    def __init__(self, config: ServerConfig, registry: Registry, warmup: Iterable[WarmupHook] = ()):
        self.config = config
        self.registry = registry
        # A broken table (missing, renamed, drifted) only breaks the requests that touch it.
        self.store = AsyncFeatureStore(registry, config.dsn, options=config.store_options())
        self.metrics = Metrics(registry.tables, registry.services)
        self.store.on_transform = self.metrics.observe_transform  # each transform's time, per service
        self.inventory = Inventory(self.store, registry, config.inventory_interval)
        self.coalescer: Coalescer | None = None
        if config.coalesce:
            self.coalescer = Coalescer(
                self._read_coalesced,
                window=config.coalesce_window,
                max_keys=config.coalesce_max_keys,
                max_in_flight=config.pool_size,
                on_batch=self.metrics.batch_keys.observe,
            )
        # Batch chunks hold at most this many read connections at once; single-key reads keep the rest.
        self._batch_slots = asyncio.Semaphore(config.batch_slots)
        self.warmup = list(warmup)
        self.ready = False
        self.closing = False
        self.status = "warming up"  # why not ready, for /readyz
        self._db_seconds = {
            k: self.metrics.db_time.labels(k) for k in ("single", "batch", "coalesced", "probe", "push")
        }
        self._service_seconds = {name: self.metrics.service_db_time.labels(name) for name in registry.services}
        self._last_ok = 0.0
        self._last_error = 0.0
        self._probe: asyncio.Future[Readiness] | None = None
        self._probe_at = float("-inf")
        self._probe_result = Readiness(False, "database_unavailable", "not checked")
        self._background: set[asyncio.Future[Any]] = set()
        self._plans: dict[int, tuple[Any, Any]] = {}
        self._reloading = asyncio.Lock()
        self.metrics.serve(registry)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin opening the store in the background; return at once."""
        self._spawn(self._open())
        self._spawn(self._refresh_metrics())
        if self.config.expire_every > 0:
            self._spawn(self._expire_loop())

    async def stop(self) -> None:
        """Close the store; reads from now on get StoreClosedError (503 ``shutting_down``)."""
        self.closing = True
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.coalescer is not None:
            await self.coalescer.close()
        await self.inventory.close()
        await self.store.close()
        self.ready = False
        worker_exited(os.getpid())

    def _spawn(self, coro: Awaitable[Any]) -> None:
        self._keep(asyncio.ensure_future(coro))

    def _keep(self, task: asyncio.Future[Any]) -> None:
        """Hold a reference to a background task until it ends (the loop keeps only weak ones)."""
        self._background.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Future[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: an abandoned query's error is expected, not news

    async def _open(self) -> None:
        delay, largest = OPEN_BACKOFF
        while True:
            try:
                await self.store.open()
                for hook in self.warmup:
                    await hook(self.store)
                break
            except Exception as exc:  # keep trying whatever it is: /readyz and the log say why
                self.status = f"warming up: {exc}"
                log.warning("pgfeatures: cannot open the store (retrying in %.1fs): %s", delay, exc)
                await self.store.close()
                await asyncio.sleep(delay)
                delay = min(2 * delay, largest)
        self._last_ok = time.monotonic()
        self.ready = True
        self.status = "ready"
        self.metrics.ready.set(1)
        self.flush_metrics()
        self.inventory.refresh_soon()
        log.info("pgfeatures: ready, %d tables, pool of %d", len(self.registry.tables), self.config.pool_size)

    async def _expire_loop(self) -> None:
        """``--expire-every``: ``pgfeatures expire`` in the background, on a connection of its own to the
        primary (never one of the pools'), every ``expire_every`` seconds once the store is open. With
        several workers each runs it; a table being expired by one is skipped by the others (advisory
        lock). A failed run is logged and retried at the next interval."""
        from ..retention_async import expire_async

        while True:
            await asyncio.sleep(self.config.expire_every)
            if not self.ready or self.store.dsn is None or self.config.write_pool_size == 0:
                continue
            try:
                conn = await connect_async(
                    self.store.dsn,
                    "pgfeatures-expire",
                    self.store.connect_timeout,
                    credentials=self.store.credentials,
                    pooler=self.store.pooler,
                )
                try:
                    results = await expire_async(conn, self.registry, grace=self.config.expire_grace)
                finally:
                    await conn.close()
            except (PgFeaturesError, psycopg.Error) as exc:
                log.warning("pgfeatures: expire failed (retrying in %gs): %s", self.config.expire_every, exc)
                continue
            for result in results:
                self.metrics.expired_deleted(result.table, result.deleted)
                if result.deleted:
                    log.info("pgfeatures: expire: %s", result.describe())

    async def _refresh_metrics(self) -> None:
        while True:
            await asyncio.sleep(METRICS_INTERVAL)
            self.flush_metrics()

    def flush_metrics(self) -> None:
        pool = self.store.read_pool
        self.metrics.flush(pool.get_stats() if pool is not None else None)

    # -- definitions -------------------------------------------------------------------------------

    async def reload(self, registry: Registry | None = None) -> dict[str, Any]:
        """Serve ``registry`` (default: the definitions file read again) from now on, without a restart:
        the store compiles, checks and prepares the new readers on every read connection and swaps them
        in (``AsyncFeatureStore.reload``: requests in flight finish on the old ones), then this worker's
        own per-definition state follows (validation, metrics labels, inventory, OpenAPI document).

        Returns ``{"fingerprint", "previous", "changed"}``. Raises DefinitionError (a file that does not
        load), SchemaDriftError (a table or column of the new definitions missing: apply them first),
        NotReadyError (still warming up: the definitions are read when the store opens), the database's
        typed errors; in every case the previous definitions go on serving."""
        self._check_ready()
        async with self._reloading:
            new: Registry = registry if registry is not None else await asyncio.to_thread(self.config.registry)
            previous = self.registry.fingerprint
            if new.fingerprint != previous or new != self.registry:
                await self.store.reload(new, on_drift="raise")  # new definitions the database lacks: refused
                self.registry = new
                self.metrics.serve(new)
                self._service_seconds = {name: self.metrics.service_db_time.labels(name) for name in new.services}
                self.inventory.serve(new)
                self._plans.clear()
                # The store logged the change (once, at WARNING); this says the server's own state followed.
                log.info("pgfeatures: the server serves the reloaded definitions (%s)", new.fingerprint)
            return {"fingerprint": new.fingerprint, "previous": previous, "changed": new.fingerprint != previous}

    def reload_soon(self) -> None:
        """``reload`` in the background (SIGHUP): the outcome goes to the log."""

        async def run() -> None:
            try:
                await self.reload()
            except Exception as exc:  # the previous definitions go on serving: say why, do not crash the worker
                log.error(
                    "pgfeatures: reload failed, the previous definitions (%s) go on serving: %s",
                    self.registry.fingerprint,
                    exc,
                )

        self._spawn(run())

    # -- reads -------------------------------------------------------------------------------------

    def _check_ready(self) -> None:
        if self.closing:
            raise StoreClosedError("the service is shutting down: retry on another instance")
        if not self.ready:
            raise NotReadyError(f"the service is not ready yet ({self.status})")

    def features_reader(self, tables: Sequence[str] | None, features: FeaturesArg) -> Any:
        """The reader of one request for these tables and features (the batch form when coalescing).
        Raises the store's typed errors for a bad selection (UnknownTableError, ...): no I/O."""
        if self.coalescer is not None:
            return self.store.batch_reader(tables, features)
        return self.store.reader(tables, features)

    def features_batch_reader(self, tables: Sequence[str] | None, features: FeaturesArg) -> BatchReader:
        return self.store.batch_reader(tables, features)

    def service_reader(self, name: str, features: FeaturesArg, vector: bool) -> Any:
        """The reader of one request of the feature service ``name`` (all its features, or the subset
        ``features``), decoding to ServiceVectors with ``vector``. Raises UnknownServiceError naming
        the valid services, DefinitionError for features it does not serve: no I/O."""
        readers = self.store.readers
        if self.coalescer is not None:
            return self.service_batch_reader(name, features, vector)
        if vector:
            return readers.service_vector_reader(name, features, self.store.strategy)
        return readers.service_reader(name, features, self.store.strategy)

    def service_batch_reader(self, name: str, features: FeaturesArg, vector: bool) -> BatchReader:
        readers = self.store.readers
        if vector:
            return readers.service_vector_batch_reader(name, features)
        return readers.service_batch_reader(name, features)

    def transform_plan(self, name: str, features: FeaturesArg, context: Any) -> ServiceTransforms | None:
        """What runs after a read of service ``name`` (``AsyncFeatureStore.transform_plan``): None when nothing
        does. Raises ContextError for a context the service does not take. No I/O."""
        return self.store.transform_plan(name, features, context)

    async def read_one(
        self,
        reader: Any,
        params: tuple[Any, ...],
        vector: bool = False,
        transform: tuple[ServiceTransforms, Mapping[str, Any]] | None = None,
    ) -> Any:
        """One request's features (a FeatureResult, or a ServiceVector with ``vector``), through
        ``reader`` (from ``features_reader`` / ``service_reader``): coalesced into a batch when
        enabled, else one read. ``params``: the request's keys bound once (``parsing.bind_key``), read
        as they are (``read_bound``). ``real`` values of a FeatureResult come back as numpy.float32
        scalars (exact; see ``encoding``).

        Raises NotReadyError, StoreClosedError, the database's typed errors (DatabaseUnavailableError,
        ...), and QueryTimeoutError after at most ``request_timeout``.
        """
        self._check_ready()
        if self.coalescer is not None:
            result = await self._bounded(
                self.coalescer.read(reader, params), self.config.request_timeout + self.config.coalesce_window
            )
        else:
            result = await self._db("single", self.store.read_bound, reader, params, service=reader.selection.service)
        self.metrics.count((result,))
        if transform is not None:
            result = await self.store.apply_transforms(transform[0], result, transform[1])
        if not vector:
            self._float32(reader).apply((result,))
            if transform is not None:
                json_outputs((result,), transform[0])
        return result

    def open_batch(
        self,
        reader: BatchReader,
        arrays: tuple[Sequence[Any], ...],
        vector: bool = False,
        transform: tuple[ServiceTransforms, Mapping[str, list[Any]]] | None = None,
    ) -> AsyncGenerator[list[Any], None]:
        """The results of many requests (keys bound once: one array per entity, ``parsing.bind_keys``),
        in input order, as chunks of at most ``batch_chunk_keys``.

        Checks readiness now (raising as ``read_one`` does, before any I/O); each chunk is then one
        statement, read when the iterator asks for it. A chunk waits at most ``acquire_timeout`` for
        one of the ``batch_slots`` connections batches may hold (PoolExhaustedError), then at most
        ``request_timeout`` for the database. ``transform``: a service's transforms and the batch's checked
        context as columns (``ServiceTransforms.contexts``), run on each chunk's results (a ``batch = true``
        transform: once per chunk).
        """
        self._check_ready()
        return self._chunks(reader, arrays, vector, transform)

    async def _chunks(
        self,
        reader: BatchReader,
        arrays: tuple[Sequence[Any], ...],
        vector: bool,
        transform: tuple[ServiceTransforms, Mapping[str, list[Any]]] | None,
    ) -> AsyncGenerator[list[Any], None]:
        step = self.config.batch_chunk_keys
        plan = None if vector else self._float32(reader)
        for start in range(0, len(arrays[0]), step):
            results = await self._read_chunk(reader, tuple(list(a[start : start + step]) for a in arrays))
            self.metrics.count(results)
            if transform is not None:
                outputs, columns = transform
                chunk = {name: column[start : start + step] for name, column in columns.items()}
                results = await self.store.apply_transforms_batch(outputs, results, chunk)
            if plan is not None:
                plan.apply(results)
                if transform is not None:
                    json_outputs(results, transform[0])
            yield results

    async def _read_chunk(self, reader: BatchReader, arrays: tuple[list[Any], ...]) -> list[Any]:
        slots = self._batch_slots
        try:
            async with asyncio.timeout(self.config.acquire_timeout):
                await slots.acquire()
        except TimeoutError:
            self.metrics.db_errors.labels("batch_slots").inc()
            raise PoolExhaustedError(
                f"batches already hold {self.config.batch_slots} of the {self.config.pool_size} read connections "
                f"(batch_connections) and none came free within {self.config.acquire_timeout:g}s (acquire_timeout): "
                "retry, send smaller batches, or raise --batch-connections / --pool-size"
            ) from None
        try:
            return await self._db(
                "batch", self.store.read_batch_bound, reader, arrays, service=reader.selection.service
            )
        finally:
            slots.release()

    def _float32(self, reader: Any) -> Float32Plan:
        """The reader's Float32Plan (cached by reader identity; readers are cached by the store)."""
        return self._plan(reader, Float32Plan, reader.selection)

    def vector_plan(self, reader: Any, outputs: ServiceTransforms | None = None) -> VectorPlan:
        """How the vectors of ``reader`` are encoded (cached by reader identity: a reader of a whole service
        always runs its transforms, ``outputs``, and a reader of a subset never does)."""
        return self._plan(reader, VectorPlan, reader, self.registry, outputs)

    def _plan(self, reader: Any, make: type[P], *args: Any) -> P:
        entry = self._plans.get(id(reader))
        if entry is not None and entry[0] is reader and isinstance(entry[1], make):
            return entry[1]
        if len(self._plans) >= PLANS_KEPT:
            self._plans.clear()
        plan = make(*args)
        self._plans[id(reader)] = (reader, plan)
        return plan

    def describe_service(self, name: str, detail: bool = False) -> dict[str, Any]:
        """``GET /v1/services`` (one entry) and, with ``detail``, ``GET /v1/services/{name}``: what the
        service reads (with the TTL it applies to each table), its vector's shape (and column names and types), whether it is materialized,
        its serving rows' state as last found, and whether this worker reads them (``serving``).
        Raises UnknownServiceError. No I/O."""
        svc = self.registry.service(name)
        items = svc.resolve(self.registry)
        entities = list(dict.fromkeys(t.entity for t, _ in items))
        outputs = self.store.transform_plan(name, None, None)
        try:
            plan: VectorPlan | None = self.vector_plan(
                self.store.readers.service_vector_batch_reader(name, None), outputs
            )
            refused = None
        except VectorOutputError as exc:  # a string or a list no transform maps: a dict answer only
            plan, refused = None, str(exc)
        doc: dict[str, Any] = {
            "name": name,
            "version": svc.version,
            "description": svc.description,
            "definitions": self.registry.fingerprint,
            "entities": [
                {"name": e.name, "key_type": e.key_type, **({"hash": e.hash} if e.hash else {}), "accepts": e.accepts}
                for e in entities
            ],
            "tables": [t.name for t, _ in items],
            "ttl": svc.ttl,
            "ttl_override": svc.ttl_override,
            "table_ttls": {t.name: svc.effective_ttl(t) for t, _ in items},
            "materialize": svc.materialize,
            "state": self.inventory.service_state(name) if svc.materialize else None,
            "serving": "materialized" if name in self.store.readers.materialized else "tables",
            "columns": len(plan.names) if plan is not None else None,
            "dtype": plan.dtype if plan is not None else None,
            **({"vector": refused} if refused is not None else {}),
            "context": {n: t.name for n, t in svc.context},
            "transforms": [
                {"name": t.name, "function": outputs.transforms[i].spec, "outputs": list(t.output_names)}
                for i, t in enumerate(svc.transforms)
            ]
            if outputs is not None
            else [],
        }
        if detail:
            doc["names"] = list(plan.names) if plan is not None else None
            doc["types"] = list(plan.types) if plan is not None else None
        return doc

    # -- writes ------------------------------------------------------------------------------------

    async def push(
        self, table: str, rows: Sequence[tuple[Any, Mapping[str, Any]]], overwrite_newer: bool
    ) -> UpdateCount:
        """Upsert rows of ``table`` through the store's write pool (``update_features_batch``: one
        statement per set of columns, one transaction; newest wins unless ``overwrite_newer``).

        Raises UnknownFeatureError / FeatureValueError / KeyFormatError before any I/O,
        ReadOnlyStoreError without a write pool, NotReadyError, the database's typed errors, and
        QueryTimeoutError after ``request_timeout`` (the write may then have been applied or not:
        retrying is safe, an upsert applied twice leaves the same row).
        """
        self._check_ready()
        call = functools.partial(self.store.update_features_batch, table, rows, overwrite_newer=overwrite_newer)
        count: UpdateCount = await self._db("push", call, write=True)
        self.metrics.pushed(table, int(count), count.skipped)
        return count

    async def _read_coalesced(self, reader: Any, bound: list[tuple[Any, ...]]) -> list[Any]:
        arrays = tuple(map(list, zip(*bound)))  # one request's parameters per row -> one array per entity
        return await self._db(
            "coalesced", self.store.read_batch_bound, reader, arrays, service=reader.selection.service
        )

    async def _db(
        self,
        kind: str,
        call: Callable[..., Awaitable[T]],
        *args: Any,
        timeout: float | None = None,
        service: str | None = None,
        write: bool = False,
    ) -> T:
        """Run one store call in its own task, within the deadline; record success or failure
        (per feature service too, with ``service``). A ``write`` says nothing about the read path,
        so it does not count for readiness.

        Every failure leaves as a pgfeatures typed error: psycopg and pool exceptions that
        escape the store are translated (``connections.database_error``), and a call still
        running at the deadline is abandoned (cancelled in the background, where the pool
        replaces its connection) with QueryTimeoutError.
        """
        start = time.perf_counter()
        limit = timeout or self.config.request_timeout
        task = asyncio.ensure_future(call(*args))
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                result = await asyncio.shield(task)
        except BaseException as exc:
            if not task.done():  # the deadline passed, or the request itself was cancelled
                task.cancel()  # abandoned: psycopg cancels the query and the pool replaces the connection
                self._keep(task)
                if not isinstance(exc, TimeoutError):
                    raise
                self._failed("timeout", write)
                raise QueryTimeoutError(
                    f"the database did not answer within {limit:g}s (request_timeout); the query was cancelled"
                ) from None
            if deadline.expired() and isinstance(exc, TimeoutError):
                # The call finished in the loop iteration where the deadline fired (its answer and the
                # timer seen together): the deadline passed first, so this is a timeout like any other,
                # whatever the call returned (retrieved here, so it is not reported as never retrieved).
                if not task.cancelled():
                    task.exception()
                self._failed("timeout", write)
                raise QueryTimeoutError(f"the database did not answer within {limit:g}s (request_timeout)") from None
            error = self._translate(exc)
            if isinstance(error, DatabaseUnavailableError):
                self._failed("unavailable", write)
            elif isinstance(error, QueryTimeoutError):
                self._failed("timeout", write)
            if error is exc:
                raise
            raise error from exc
        seconds = time.perf_counter() - start
        if not write:
            self._last_ok = time.monotonic()
        self._db_seconds[kind].observe(seconds)
        if service is not None:
            self._service_seconds[service].observe(seconds)
        return result

    def _translate(self, exc: BaseException) -> BaseException:
        if isinstance(exc, (psycopg.Error, PoolTimeout, PoolClosed)) and not isinstance(exc, PgFeaturesError):
            return database_error(exc, self.store.dsn or "", acquire_timeout=self.config.acquire_timeout)
        if isinstance(exc, TimeoutError) and not isinstance(exc, PgFeaturesError):  # a deadline below the store's
            return QueryTimeoutError(f"a database call timed out: {exc or type(exc).__name__}")
        return exc

    def _failed(self, reason: str, write: bool = False) -> None:
        if not write:  # a write pool's failure says nothing about reads
            self._last_error = time.monotonic()
        self.metrics.db_errors.labels(f"push_{reason}" if write else reason).inc()

    @staticmethod
    async def _bounded(awaitable: Awaitable[T], timeout: float) -> T:
        try:
            async with asyncio.timeout(timeout):
                return await awaitable
        except TimeoutError as exc:
            if isinstance(exc, QueryTimeoutError):  # the call's own deadline, raised inside
                raise
            raise QueryTimeoutError(f"the database did not answer within {timeout:g}s (request_timeout)") from None

    # -- readiness ---------------------------------------------------------------------------------

    async def readiness(self) -> Readiness:
        """Warmed up and the database answers, or why not. Never waits longer than PROBE_TIMEOUT."""
        if self.closing:
            return Readiness(False, "shutting_down", "the service is shutting down")
        if not self.ready:
            return Readiness(False, "warming_up", self.status)
        now = time.monotonic()
        if self._last_ok > self._last_error and now - self._last_ok < HEALTHY_FOR:
            return READY
        if now - self._probe_at < HEALTHY_FOR:
            return self._probe_result
        if self._probe is None:
            self._probe = asyncio.ensure_future(self._run_probe())
        return await asyncio.shield(self._probe)

    async def _run_probe(self) -> Readiness:
        """``SELECT 1`` through the read path: a dead pooled connection is replaced and the probe
        retried at once, as a read would be, so readiness follows the database within one probe."""
        try:
            await self._db("probe", self.store.ping, timeout=min(PROBE_TIMEOUT, self.config.request_timeout))
            result = READY
        except AuthenticationError as exc:
            result = Readiness(False, classify(exc).type, f"database refused the credentials: {exc}")
        except (DatabaseUnavailableError, QueryTimeoutError, StoreClosedError) as exc:
            result = Readiness(False, classify(exc).type, f"database unavailable: {exc}")
        finally:
            self._probe = None
        self._probe_at = time.monotonic()
        self._probe_result = result
        return result

    def details(self) -> dict[str, Any]:
        """What /readyz shows beside its status: the read targets and the tables that cannot be served."""
        status = self.store.status()
        return {"read_targets": status["read_targets"], "broken_tables": status["broken_tables"]}
