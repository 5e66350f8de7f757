"""The Feast online store backed by pgfeatures' narrow tables.

``feature_store.yaml``::

    online_store:
      type: pgfeatures.feast.PgfeaturesOnlineStore
      dsn: postgresql://feast@db/features     # default: $PGFEATURES_DSN, else the embedded server
      pool_size: 4

- ``feast apply`` (``update``) creates one pgfeatures table per feature view (see mapping.py),
  in the schema ``db_schema`` (default: the Feast project's name); an existing table that
  disagrees is reported as pgfeatures reports drift; removed views' tables are dropped.
- Writes (``feast materialize``, ``push``, ``write_to_online_store``) go through pgfeatures'
  bulk load: binary COPY into a stage, merged in one transaction, newest event time wins.
- ``get_online_features`` reads every requested view for every entity row with one statement
  and one round-trip; a view's ``ttl`` is enforced in that statement on the server's clock: an
  expired row comes back as ``OUTSIDE_MAX_AGE`` with no value. The async methods are native
  (``async_supported``), so ``feast serve`` calls them without a thread pool.
- A feature service with ``precompute_online=True`` is a pgfeatures materialized service that
  ``feast apply`` builds (infra.py) and pgfeatures' triggers keep in step with every write: it is read
  from its serving rows (one primary-key lookup per entity, one statement), with the same answers as
  without precompute; Feast's precomputed-vector hooks read those rows and write nothing
  (precomputed.py).

The plugin keeps a pgfeatures store (sync, and one for the running event loop for async calls)
whose definitions are every feature view (and precomputed service) it has seen; a view or service
seen with a new definition reopens it.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from feast import Entity as FeastEntity
from feast import FeatureService as FeastFeatureService
from feast import FeatureView, utils
from feast.infra.online_stores.online_store import OnlineStore
from feast.infra.supported_async_methods import SupportedAsyncMethods
from feast.online_response import OnlineResponse
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import FeastConfigBaseModel, RepoConfig
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import StrictStr

from ..connections import connect, load_provider, resolve_dsn
from ..definitions import UPDATED_AT, FeatureService, Registry, check_identifier
from ..errors import DefinitionError, PgFeaturesError
from ..reader import EXPIRED
from ..store import AsyncFeatureStore, FeatureStore, StoreOptions
from ..store.options import pick
from . import infra
from .keys import entity_key_proto, key_part, proto_key, proto_value
from .mapping import ViewLayout, registry_of, service_of, view_layout
from .plan import RequestPlan, event_time, plan_request
from .precomputed import feature_names, key_columns, vectors
from .response import PRESENT, Column, PgfeaturesOnlineResponse, append_columns, feast_value
from .writes import arrow_batch, arrow_table

logger = logging.getLogger("pgfeatures.feast")

STORE_TYPE = "pgfeatures.feast.PgfeaturesOnlineStore"

# The precomputed service a request on Feast's generic path reads (set around OnlineStore.get_online_features,
# read by _read_features_per_fv, which Feast calls with the request's views but not its service).
_SERVICE: contextvars.ContextVar[FeatureService | None] = contextvars.ContextVar(
    "pgfeatures_feast_service", default=None
)


class PgfeaturesOnlineStoreConfig(FeastConfigBaseModel):
    """``online_store:`` settings. Every production option of a pgfeatures store is here; unknown
    keys are refused by Feast's config check."""

    type: StrictStr = STORE_TYPE
    dsn: StrictStr | None = None  # default: $PGFEATURES_DSN, else the embedded server
    db_schema: StrictStr | None = None  # default: the Feast project's name
    pool_size: int = 4
    write_pool_size: int = 2
    read_dsn: StrictStr | None = None
    read_dsns: list[StrictStr] = []
    read_fallback: bool = True
    max_replica_lag: float | None = None
    credentials: StrictStr | None = None  # "module:callable", a pgfeatures credential provider
    pooler: StrictStr | None = None  # "transaction" behind a transaction-mode pooler
    max_lifetime: float = 1800.0
    connect_timeout: float = 5.0
    acquire_timeout: float = 5.0
    text_key_length: int = 256  # the longest String join key value accepted


def store_options(config: PgfeaturesOnlineStoreConfig) -> dict[str, Any]:
    """pgfeatures store keyword arguments from the Feast config: the DSN, and StoreOptions made of every
    setting the config holds under the store's own name (``pick``), its replicas, its provider, and
    ``on_drift="isolate"`` (a view not applied yet fails only the requests that touch it)."""
    read_dsns = (*config.read_dsns, *([config.read_dsn] if config.read_dsn else []))
    credentials = load_provider(config.credentials) if config.credentials else None
    options = StoreOptions(
        **{**pick(config), "read_dsns": read_dsns, "credentials": credentials, "on_drift": "isolate"}
    )
    return {"dsn": config.dsn, "options": options}


def schema_of(config: RepoConfig) -> str:
    """The PostgreSQL schema of the project's tables. Raises DefinitionError naming the setting."""
    name = config.online_store.db_schema or config.project
    try:
        return check_identifier("schema", name)
    except DefinitionError as exc:
        source = (
            "online_store.db_schema"
            if config.online_store.db_schema
            else "the project name (set online_store.db_schema)"
        )
        raise DefinitionError(f"{source}: {exc}") from None


def _request_context(registry: Any, project: str, features: Any, full_feature_names: bool) -> tuple[Any, ...] | None:
    """Feast's own resolution of a request (cached by Feast until its registry refreshes), or None
    when this Feast has no such function (then the generic path answers)."""
    resolve = getattr(utils, "_get_cached_request_context", None)
    if resolve is None:
        return None
    return resolve(registry, project, features, full_feature_names)


def _columnar(entity_rows: Any) -> dict[str, Any]:
    if isinstance(entity_rows, list):
        columnar: dict[str, list[Any]] = {k: [] for k in entity_rows[0].keys()}
        for row in entity_rows:
            for key, value in row.items():
                try:
                    columnar[key].append(value)
                except KeyError as exc:
                    raise ValueError("All entity_rows must have the same keys.") from exc
        return columnar
    return dict(entity_rows)


def _ddl_connection(config: RepoConfig, dsn: str) -> Any:
    """One connection to the primary (``dsn``, resolved) for ``feast apply`` / ``teardown`` (outside the pools)."""
    settings = config.online_store
    credentials = load_provider(settings.credentials) if settings.credentials else None
    return connect(
        dsn,
        "pgfeatures-feast-apply",
        settings.connect_timeout,
        credentials=credentials,
        pooler=settings.pooler,
    )


def _serves(tables: Registry, service: FeatureService) -> bool:
    """Whether ``service`` resolves against ``tables`` (a view changed since may no longer have its features)."""
    try:
        service.resolve(tables)
    except PgFeaturesError:  # an unknown table or feature, a feature listed twice
        return False
    return True


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


@dataclass
class _Compiled:
    """A request plan compiled for one pgfeatures store (sync or async) and one Feast resolution."""

    context: tuple[Any, ...] | None
    store: Any
    plan: RequestPlan


class PgfeaturesOnlineStore(OnlineStore):
    """Feast's online store interface over pgfeatures (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._layouts: dict[str, ViewLayout] = {}
        self._services: dict[str, FeatureService] = {}  # precomputed services, as pgfeatures services
        self._registry: Registry | None = None
        self._generation = 0
        self._sync: FeatureStore | None = None
        self._sync_generation = -1
        self._async: AsyncFeatureStore | None = None
        self._async_generation = -1
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._async_lock: asyncio.Lock | None = None
        self._compiled: dict[Any, _Compiled] = {}
        self._feast_registry: Any = None  # the latest Feast registry a read passed (the vector hooks get none)
        self._warned: set[str] = set()

    @property
    def async_supported(self) -> SupportedAsyncMethods:
        return SupportedAsyncMethods(read=True, write=True)

    # -- definitions and stores ---------------------------------------------------------------------

    def _learn(
        self, config: RepoConfig, layouts: Sequence[ViewLayout], services: Iterable[FeatureService] = ()
    ) -> tuple[Registry, int]:
        """Add views (and precomputed services) to the definitions served (a changed one replaces its old
        definition; a service a changed view no longer serves is let go)."""
        services = list(services)
        with self._lock:
            if (
                self._registry is None
                or any(self._layouts.get(lay.table.name) != lay for lay in layouts)
                or any(self._services.get(svc.name) != svc for svc in services)
            ):
                merged = dict(self._layouts)
                merged.update((lay.table.name, lay) for lay in layouts)
                wanted = dict(self._services)
                wanted.update((svc.name, svc) for svc in services)
                tables = registry_of(list(merged.values()), schema_of(config))
                kept = {name: svc for name, svc in wanted.items() if _serves(tables, svc)}
                registry = registry_of(list(merged.values()), schema_of(config), kept.values())
                self._layouts, self._services, self._registry = merged, kept, registry
                self._generation += 1
            return self._registry, self._generation

    def _layout(self, config: RepoConfig, view: Any) -> ViewLayout:
        return view_layout(view, config.online_store.text_key_length)

    def _sync_store(
        self, config: RepoConfig, layouts: Sequence[ViewLayout], services: Iterable[FeatureService] = ()
    ) -> FeatureStore:
        registry, generation = self._learn(config, layouts, services)
        store = self._sync
        if store is not None and self._sync_generation == generation:
            return store
        with self._lock:
            if self._sync is not None and self._sync_generation == generation:
                return self._sync
            new = FeatureStore(registry, **store_options(config.online_store))
            old, self._sync, self._sync_generation = self._sync, new, generation
        if old is not None:
            old.close()
        return new

    async def _async_store(
        self, config: RepoConfig, layouts: Sequence[ViewLayout], services: Iterable[FeatureService] = ()
    ) -> AsyncFeatureStore:
        registry, generation = self._learn(config, layouts, services)
        loop = asyncio.get_running_loop()
        if self._async is not None and self._async_loop is loop and self._async_generation == generation:
            return self._async
        if self._async_loop is not loop or self._async_lock is None:
            # A store's pools belong to the loop that opened them; a new loop gets its own store.
            self._async, self._async_loop, self._async_lock, self._async_generation = None, loop, asyncio.Lock(), -1
        async with self._async_lock:
            if self._async is not None and self._async_generation == generation:
                return self._async
            new = AsyncFeatureStore(registry, **store_options(config.online_store))
            await new.open()
            old, self._async, self._async_generation = self._async, new, generation
        if old is not None:
            await old.close()
        return new

    def _forget(self, names: Sequence[str]) -> None:
        with self._lock:
            for name in names:
                self._layouts.pop(name, None)
            self._services = {
                name: svc
                for name, svc in self._services.items()
                if not any(ref.partition(".")[0] in names for ref in svc.features)
            }
            self._registry = None
            self._generation += 1
            self._compiled.clear()

    # -- reads --------------------------------------------------------------------------------------

    def _fast_context(
        self, registry: Any, project: str, features: Any, full_feature_names: bool, include_metadata: bool
    ) -> tuple[Any, ...] | None:
        """Feast's resolution of the request when the one-statement fast path can answer it whole:
        plain feature views only (no on-demand views, request data, entityless views, versions,
        renamed join keys)."""
        if include_metadata:
            return None
        context = _request_context(registry, project, features, full_feature_names)
        if context is None:
            return None
        _, odfvs, _, _, _, grouped_refs, _, request_data, entityless = context
        if odfvs or request_data or entityless or not grouped_refs:
            return None
        for view, _ in grouped_refs:
            projection = view.projection
            if getattr(projection, "join_key_map", None) or getattr(projection, "version_tag", None) is not None:
                return None
        return context

    def _precomputed(self, features: Any) -> FeatureService | None:
        """The pgfeatures service a Feast service with ``precompute_online=True`` is read from (None: not one,
        or one pgfeatures cannot read as a service, which ``feast apply`` refused: read from its views)."""
        if not isinstance(features, FeastFeatureService) or not getattr(features, "precompute_online", False):
            return None
        try:
            return service_of(features, renamed_views=True)
        except DefinitionError as exc:
            if features.name not in self._warned:
                self._warned.add(features.name)
                logger.warning("pgfeatures: %s; it is read from its views' tables", exc)
            return None

    def _plan(
        self,
        config: RepoConfig,
        grouped_refs: Sequence[tuple[Any, Sequence[str]]],
        full_feature_names: bool,
        service: FeatureService | None = None,
    ) -> tuple[list[ViewLayout], Callable[[Any], RequestPlan]]:
        layouts = [self._layout(config, view) for view, _ in grouped_refs]
        by_name = {lay.table.name: lay for lay in layouts}

        def compile_for(store: Any) -> RequestPlan:
            plan = plan_request(grouped_refs, by_name, full_feature_names)
            # A precomputed service is read from its serving rows, in one statement: possible when the store
            # serves it (as defined now) and the request binds each of its entities once.
            served = (
                service is not None and len(plan.groups) == 1 and store.registry.services.get(service.name) == service
            )
            for group in plan.groups:
                if served:
                    assert service is not None
                    group.reader = store.readers.service_batch_reader(service.name, group.features)
                else:
                    group.reader = store.batch_reader([t.table for t in group.tables], group.features)
            plan.feature_types = OnlineStore._build_feature_types(list(grouped_refs))
            return plan

        return layouts, compile_for

    def _sync_plan(
        self, config: RepoConfig, key: Any, context: tuple[Any, ...], features: Any, full_feature_names: bool
    ) -> tuple[FeatureStore, RequestPlan]:
        """The sync store and the request plan for ``key`` (compiled once per context and store generation)."""
        store = self._sync
        plan = (
            self._cached(key, context, store)
            if store is not None and self._sync_generation == self._generation
            else None
        )
        if store is None or plan is None:
            service = self._precomputed(features)
            layouts, compile_for = self._plan(config, context[5], full_feature_names, service)
            store = self._sync_store(config, layouts, [service] if service else [])
            plan = compile_for(store)
            self._compiled[key] = _Compiled(context, store, plan)
        return store, plan

    async def _async_plan(
        self, config: RepoConfig, key: Any, context: tuple[Any, ...], features: Any, full_feature_names: bool
    ) -> tuple[AsyncFeatureStore, RequestPlan]:
        """``_sync_plan`` on the asyncio store (one per event loop)."""
        store = self._async
        current = (
            store is not None
            and self._async_generation == self._generation
            and self._async_loop is asyncio.get_running_loop()
        )
        plan = self._cached(key, context, store) if current else None
        if store is None or plan is None:
            service = self._precomputed(features)
            layouts, compile_for = self._plan(config, context[5], full_feature_names, service)
            store = await self._async_store(config, layouts, [service] if service else [])
            plan = compile_for(store)
            self._compiled[key] = _Compiled(context, store, plan)
        return store, plan

    def _cached(self, key: Any, context: tuple[Any, ...], store: Any) -> RequestPlan | None:
        compiled = self._compiled.get(key)
        if compiled is not None and compiled.context is context and compiled.store is store:
            return compiled.plan
        return None

    def _fast_request(
        self, context: tuple[Any, ...], plan: RequestPlan, entity_rows: Any
    ) -> tuple[list[Column], dict[str, list[Any]], int] | None:
        """The join-key columns (echoed as Feast echoes them) and the request's key values, or None
        when the request needs Feast's generic path (entity names for join keys, proto values,
        missing join keys: Feast's own checks and errors)."""
        name_to_join_key = context[2]
        columns = _columnar(entity_rows)
        request: dict[str, list[Any]] = {}
        echo: list[Column] = []
        n = -1
        for name, values in columns.items():
            if name in plan.join_keys:
                if not isinstance(values, Sequence) or isinstance(values, (str, bytes)):
                    return None
                values = list(values)
                if values and isinstance(values[0], ValueProto):
                    return None
                if n == -1:
                    n = len(values)
                elif len(values) != n:
                    raise ValueError("All entity rows must have the same columns.")
                kind = plan.join_keys[name]
                normal = [key_part(name, kind, v) for v in values]
                request[name] = normal
                echo.append(Column(name, kind, normal, [PRESENT] * n, [0] * n))
            elif name in name_to_join_key:
                return None
        if len(request) != len(plan.join_keys) or n <= 0:
            return None
        return echo, request, n

    def get_online_features(
        self,
        config: RepoConfig,
        features: Any,
        entity_rows: Any,
        registry: Any,
        project: str,
        full_feature_names: bool = False,
        include_feature_view_version_metadata: bool = False,
    ) -> OnlineResponse:
        """Every requested view for every entity row in one statement; a precomputed service from its serving
        rows (see the module docstring)."""
        self._feast_registry = registry
        context = self._fast_context(
            registry, project, features, full_feature_names, include_feature_view_version_metadata
        )
        if context is not None:
            key = (
                "sync",
                features.name if isinstance(features, FeastFeatureService) else tuple(features),
                project,
                full_feature_names,
            )
            store, plan = self._sync_plan(config, key, context, features, full_feature_names)
            request = self._fast_request(context, plan, entity_rows)
            if request is not None:
                echo, values, n = request
                found = self._execute(store, plan, values, n)
                return PgfeaturesOnlineResponse(echo + [found[name] for name in plan.order], plan.feature_types)
        service, features = self._generic(features)
        token = _SERVICE.set(service)
        try:
            return super().get_online_features(
                config,
                features,
                entity_rows,
                registry,
                project,
                full_feature_names,
                include_feature_view_version_metadata,
            )
        finally:
            _SERVICE.reset(token)

    def _generic(self, features: Any) -> tuple[FeatureService | None, Any]:
        """For Feast's generic path: the precomputed service to read (None: none), and what to pass Feast for
        ``features``: a precomputed service as a copy without ``precompute_online``, so that Feast reads it
        through ``_read_features_per_fv`` (here: its serving rows) and not as precomputed vectors, whose
        format cannot say which views are missing or expired (see precomputed.py)."""
        service = self._precomputed(features)
        if not getattr(features, "precompute_online", False):
            return service, features
        plain = copy.copy(features)
        plain.precompute_online = False
        return service, plain

    async def get_online_features_async(
        self,
        config: RepoConfig,
        features: Any,
        entity_rows: Any,
        registry: Any,
        project: str,
        full_feature_names: bool = False,
        include_feature_view_version_metadata: bool = False,
    ) -> OnlineResponse:
        """``get_online_features`` on the asyncio store: one statement, no thread."""
        self._feast_registry = registry
        context = self._fast_context(
            registry, project, features, full_feature_names, include_feature_view_version_metadata
        )
        if context is not None:
            key = (
                "async",
                features.name if isinstance(features, FeastFeatureService) else tuple(features),
                project,
                full_feature_names,
            )
            store, plan = await self._async_plan(config, key, context, features, full_feature_names)
            request = self._fast_request(context, plan, entity_rows)
            if request is not None:
                echo, values, n = request
                found = await self._execute_async(store, plan, values, n)
                return PgfeaturesOnlineResponse(echo + [found[name] for name in plan.order], plan.feature_types)
        service, features = self._generic(features)
        token = _SERVICE.set(service)
        try:
            return await super().get_online_features_async(
                config,
                features,
                entity_rows,
                registry,
                project,
                full_feature_names,
                include_feature_view_version_metadata,
            )
        finally:
            _SERVICE.reset(token)

    @staticmethod
    def _execute(
        store: FeatureStore, plan: RequestPlan, request: Mapping[str, Sequence[Any]], n: int
    ) -> dict[str, Column]:
        out: dict[str, Column] = {}
        for group in plan.groups:
            keys, rows = group.keys(request, n)
            assert group.reader is not None
            results = store.read_batch(group.reader, keys) if next(iter(keys.values())) else []
            out.update(group.columns(results, rows, n))
        return out

    @staticmethod
    async def _execute_async(
        store: AsyncFeatureStore, plan: RequestPlan, request: Mapping[str, Sequence[Any]], n: int
    ) -> dict[str, Column]:
        out: dict[str, Column] = {}
        for group in plan.groups:
            keys, rows = group.keys(request, n)
            assert group.reader is not None
            results = await store.read_batch(group.reader, keys) if next(iter(keys.values())) else []
            out.update(group.columns(results, rows, n))
        return out

    @staticmethod
    def _generic_request(
        plan: RequestPlan, join_key_values: Mapping[str, Sequence[Any]]
    ) -> tuple[dict[str, list[Any]], int]:
        request = {
            col: [proto_value(v) if isinstance(v, ValueProto) else v for v in join_key_values[col]]
            for col in plan.join_keys
        }
        n = len(next(iter(join_key_values.values()))) if join_key_values else 0
        return request, n

    @staticmethod
    def _fill(
        plan: RequestPlan,
        found: Mapping[str, Column],
        response: Any,
        grouped_refs: Sequence[Any],
        include_metadata: bool,
    ) -> None:
        append_columns(response, [found[name] for name in plan.order])
        if include_metadata:
            existing = {m.name for m in response.metadata.feature_view_metadata}
            for view, _ in grouped_refs:
                name = view.projection.name_alias or view.projection.name
                if name not in existing:
                    meta = response.metadata.feature_view_metadata.add()
                    meta.name = name
                    meta.version = getattr(view, "current_version_number", 0) or 0
                    existing.add(name)

    def _read_features_per_fv(
        self,
        config: RepoConfig,
        grouped_refs: list[Any],
        join_key_values: dict[str, Any],
        entity_name_to_join_key_map: dict[str, str],
        online_features_response: Any,
        full_feature_names: bool,
        include_feature_view_version_metadata: bool,
    ) -> None:
        """Feast's generic path (on-demand views, request data, ...): still one statement for all views, a
        precomputed service's from its serving rows."""
        service = _SERVICE.get()
        layouts, compile_for = self._plan(config, grouped_refs, full_feature_names, service)
        store = self._sync_store(config, layouts, [service] if service else [])
        plan = compile_for(store)
        request, n = self._generic_request(plan, join_key_values)
        found = self._execute(store, plan, request, n)
        self._fill(plan, found, online_features_response, grouped_refs, include_feature_view_version_metadata)

    async def _read_features_per_fv_async(
        self,
        config: RepoConfig,
        grouped_refs: list[Any],
        join_key_values: dict[str, Any],
        entity_name_to_join_key_map: dict[str, str],
        online_features_response: Any,
        full_feature_names: bool,
        include_feature_view_version_metadata: bool,
    ) -> None:
        service = _SERVICE.get()
        layouts, compile_for = self._plan(config, grouped_refs, full_feature_names, service)
        store = await self._async_store(config, layouts, [service] if service else [])
        plan = compile_for(store)
        request, n = self._generic_request(plan, join_key_values)
        found = await self._execute_async(store, plan, request, n)
        self._fill(plan, found, online_features_response, grouped_refs, include_feature_view_version_metadata)

    def _online_read_plan(
        self,
        config: RepoConfig,
        table: FeatureView,
        entity_keys: Sequence[EntityKeyProto],
        requested_features: Sequence[str] | None,
    ) -> tuple[ViewLayout, list[str], list[Any]]:
        layout = self._layout(config, table)
        names = list(requested_features) if requested_features else list(layout.table.feature_names)
        keys = [proto_key(layout.keys, k) for k in entity_keys]
        return layout, names, keys

    @staticmethod
    def _online_rows(
        layout: ViewLayout, names: Sequence[str], keys: Sequence[Any], results: Sequence[Any]
    ) -> list[tuple[datetime | None, dict[str, ValueProto] | None]]:
        fields = dict(layout.feature_types)
        found = iter(results)
        out: list[tuple[datetime | None, dict[str, ValueProto] | None]] = []
        t = layout.table.name
        for key in keys:
            res = None if key is None else next(found)
            values = None if res is None else res[t]
            if res is None or values is None or (layout.table.ttl is not None and res.status[t] == EXPIRED):
                out.append((None, None))
                continue
            seconds, nanos = event_time(values[UPDATED_AT])
            stamp = datetime.fromtimestamp(seconds, tz=UTC).replace(microsecond=nanos // 1000)
            out.append(
                (
                    stamp,
                    {n: ValueProto() if values[n] is None else feast_value(fields[n], values[n]) for n in names},
                )
            )
        return out

    def online_read(
        self,
        config: RepoConfig,
        table: FeatureView,
        entity_keys: list[EntityKeyProto],
        requested_features: list[str] | None = None,
    ) -> list[tuple[datetime | None, dict[str, ValueProto] | None]]:
        """One view's rows for some entity keys (an expired row reads as not found)."""
        layout, names, keys = self._online_read_plan(config, table, entity_keys, requested_features)
        store = self._sync_store(config, [layout])
        given = [k for k in keys if k is not None]
        results = (
            store.get_features_batch(
                {layout.keys.entity.name: given}, [layout.table.name], {layout.table.name: [*names, UPDATED_AT]}
            )
            if given
            else []
        )
        return self._online_rows(layout, names, keys, results)

    async def online_read_async(
        self,
        config: RepoConfig,
        table: FeatureView,
        entity_keys: list[EntityKeyProto],
        requested_features: list[str] | None = None,
    ) -> list[tuple[datetime | None, dict[str, ValueProto] | None]]:
        layout, names, keys = self._online_read_plan(config, table, entity_keys, requested_features)
        store = await self._async_store(config, [layout])
        given = [k for k in keys if k is not None]
        results = (
            await store.get_features_batch(
                {layout.keys.entity.name: given}, [layout.table.name], {layout.table.name: [*names, UPDATED_AT]}
            )
            if given
            else []
        )
        return self._online_rows(layout, names, keys, results)

    # -- writes -------------------------------------------------------------------------------------

    def online_write_batch(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]],
        progress: Callable[[int], Any] | None,
    ) -> None:
        """One bulk load (COPY, one transaction, newest event time wins) of Feast's batch."""
        layout = self._layout(config, table)
        batch = arrow_batch(layout, data)
        if batch.num_rows:
            self._sync_store(config, [layout]).write_features(layout.table.name, batch)
        if progress:
            progress(len(data))

    async def online_write_batch_async(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]],
        progress: Callable[[int], Any] | None,
    ) -> None:
        layout = self._layout(config, table)
        batch = arrow_batch(layout, data)
        if batch.num_rows:
            store = await self._async_store(config, [layout])
            await store.write_features(layout.table.name, batch)
        if progress:
            progress(len(data))

    def write_arrow(self, config: RepoConfig, table: FeatureView, data: Any) -> None:
        """Write the offline store's Arrow table of a view (its join keys, features and timestamp field)
        in one bulk load, with no protobuf per value: what PgfeaturesComputeEngine's materialization calls."""
        layout = self._layout(config, table)
        source = table.batch_source
        if source is None:
            raise DefinitionError(f"feature view {table.name!r} has no batch source to materialize from")
        batch = arrow_table(layout, data, source.timestamp_field)
        if batch.num_rows:
            self._sync_store(config, [layout]).write_features(layout.table.name, batch)

    # -- Feast's precomputed vectors ---------------------------------------------------------------

    def _vector_context(self, config: RepoConfig, name: str, project: str) -> tuple[tuple[Any, ...], Any]:
        """Feast's resolution of the service ``name`` (as a request with full feature names: the vectors'
        naming) and the service, from the latest registry a read passed, else one opened from ``config``."""
        registry = self._feast_registry
        if registry is None:
            from feast import FeatureStore as FeastStore

            with self._lock:
                if self._feast_registry is None:
                    repo = str(config.repo_path) if config.repo_path else None
                    self._feast_registry = FeastStore(repo_path=repo, config=config).registry
                registry = self._feast_registry
        service = registry.get_feature_service(name, project, allow_cache=True)
        context = _request_context(registry, project, service, True)
        if context is None:
            raise NotImplementedError("this Feast has no request resolution (utils._get_cached_request_context)")
        return context, service

    def read_precomputed_vectors(
        self, config: RepoConfig, feature_service_name: str, project: str, entity_keys: list[EntityKeyProto]
    ) -> list[bytes | None]:
        """Feast's precomputed vector of each entity key (serialized; None: no row in any of the service's
        views), built from the service's serving rows in one statement (see precomputed.py).

        Raises KeyFormatError naming the service when the keys lack join keys it reads (Feast passes the
        join keys of the service's first view only)."""
        context, feast_service = self._vector_context(config, feature_service_name, project)
        key = ("vectors", feature_service_name, project)
        store, plan = self._sync_plan(config, key, context, feast_service, True)
        request = key_columns(feature_service_name, plan, entity_keys)
        n = len(entity_keys)
        found = self._execute(store, plan, request, n) if n else {}
        return vectors(plan, found, n, _now(), feature_names(feast_service))

    async def read_precomputed_vectors_async(
        self, config: RepoConfig, feature_service_name: str, project: str, entity_keys: list[EntityKeyProto]
    ) -> list[bytes | None]:
        """``read_precomputed_vectors`` on the asyncio store."""
        context, feast_service = self._vector_context(config, feature_service_name, project)
        key = ("vectors async", feature_service_name, project)
        store, plan = await self._async_plan(config, key, context, feast_service, True)
        request = key_columns(feature_service_name, plan, entity_keys)
        n = len(entity_keys)
        found = await self._execute_async(store, plan, request, n) if n else {}
        return vectors(plan, found, n, _now(), feature_names(feast_service))

    def write_precomputed_vector(
        self,
        config: RepoConfig,
        feature_service_name: str,
        project: str,
        entity_key: EntityKeyProto,
        vector_bytes: bytes,
    ) -> None:
        """Writes nothing: a precomputed service's serving rows are kept in step with every write by
        pgfeatures itself, in the write's transaction, and every read of the service (vectors included) is
        answered from them. (Feast 0.67's own batch precompute does not reach this for a store it cannot
        scan, which is every store but Redis: it logs so and skips.)"""

    # -- definitions: feast apply / teardown --------------------------------------------------------

    def update(
        self,
        config: RepoConfig,
        tables_to_delete: Sequence[FeatureView],
        tables_to_keep: Sequence[FeatureView],
        entities_to_delete: Sequence[FeastEntity],
        entities_to_keep: Sequence[FeastEntity],
        partial: bool,
    ) -> None:
        """``feast apply``: in one transaction, create the tables of ``tables_to_keep`` (additive changes to
        existing ones made online), drop those of ``tables_to_delete``, build the services Feast applies with
        ``precompute_online=True`` as materialized services and drop the serving rows of those it applies
        without it or deletes (see infra.py). Every view and service is checked before anything is created:
        DefinitionError names the view or service and the field that pgfeatures cannot take; a destructive
        change to an existing table is refused (SchemaDriftError) and nothing changes."""
        keep = [self._layout(config, view) for view in tables_to_keep]
        dropped = [view.name for view in tables_to_delete]
        schema = schema_of(config)
        with self._lock:
            known = dict(self._layouts) if partial else {}
            services = dict(self._services) if partial else {}
        found = infra.changes(schema, keep, dropped, infra.apply_call(), lambda view: self._layout(config, view), known)
        served = {name: lay for name, lay in known.items() if name not in dropped}
        served.update(found.layouts)
        tables = registry_of(list(served.values()), schema)  # every view together: join keys typed alike
        for name in found.drop_services:
            services.pop(name, None)
        services.update(found.registry.services)
        self._close_stores()
        dsn = resolve_dsn(config.online_store.dsn)
        with _ddl_connection(config, dsn) as conn:
            infra.make_changes(conn, found, dsn)
        with self._lock:
            self._layouts = served
            self._services = {name: svc for name, svc in services.items() if _serves(tables, svc)}
            self._registry = None
            self._generation += 1
            self._compiled.clear()

    def teardown(self, config: RepoConfig, tables: Sequence[FeatureView], entities: Sequence[FeastEntity]) -> None:
        """``feast teardown``: drop the views' tables and every materialized service reading them, in one
        transaction."""
        names = [view.name for view in tables]
        self._close_stores()
        schema = schema_of(config)
        dsn = resolve_dsn(config.online_store.dsn)
        with _ddl_connection(config, dsn) as conn:
            infra.teardown(conn, schema, names, dsn)
        self._forget(names)

    def _close_stores(self) -> None:
        with self._lock:
            sync, self._sync, self._sync_generation = self._sync, None, -1
        if sync is not None:
            sync.close()
        # An async store is closed on its own loop (close()); here it is only let go.
        self._async, self._async_generation = None, -1

    async def close(self) -> None:
        """Close the pools (Feast's server calls this at shutdown)."""
        store, loop = self._async, self._async_loop
        self._async, self._async_generation, self._async_loop, self._async_lock = None, -1, None, None
        if store is not None and loop is asyncio.get_running_loop():  # a finished loop's pools went with it
            await store.close()
        self._close_stores()

    # -- what pgfeatures does not do ----------------------------------------------------------------

    def retrieve_online_documents(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            "pgfeatures answers Feast's document retrieval through retrieve_online_documents_v2 "
            "(FeatureStore.retrieve_online_documents_v2): one statement, the view's ttl applied"
        )

    def retrieve_online_documents_v2(
        self,
        config: RepoConfig,
        table: FeatureView,
        requested_features: list[str],
        embedding: list[float] | None,
        top_k: int,
        distance_metric: str | None = None,
        query_string: str | None = None,
        filters: Any = None,
        include_feature_view_version_metadata: bool = False,
    ) -> list[tuple[datetime | None, EntityKeyProto | None, dict[str, ValueProto] | None]]:
        """The ``top_k`` rows of ``table`` whose vector field (``vector_index=True``) is nearest ``embedding``,
        by ``store.nearest``: one statement, HNSW, the view's ttl applied (an expired row is no neighbour),
        each row's requested features and its ``distance`` (pgvector's, smaller is nearer). The metric is the
        field's ``vector_search_metric``. A view keyed by several join keys stores their hash: its rows come
        back without an entity key. Text search (``query_string``) and ``filters`` are not served."""
        if query_string is not None or filters is not None or embedding is None:
            raise NotImplementedError(
                "pgfeatures serves vector search only (an embedding, no query_string, no filters)"
            )
        layout = self._layout(config, table)
        vectors = [f.name for f in layout.table.features if f.type.kind == "embedding" and f.type.index]
        if len(vectors) != 1:
            raise DefinitionError(
                f"feature view {table.name!r} has {len(vectors)} vector fields (vector_index=True); "
                "document retrieval needs exactly one"
            )
        names = [n for n in requested_features if n != "distance"] or list(layout.table.feature_names)
        store = self._sync_store(config, [layout])
        found = store.nearest(layout.table.name, vectors[0], embedding, top_k, features=[*names, UPDATED_AT])
        fields = dict(layout.feature_types)
        rows: list[tuple[Any, tuple[datetime | None, EntityKeyProto | None, dict[str, ValueProto] | None]]] = []
        for n in found:
            values = n.features
            row = {f: ValueProto() if values[f] is None else feast_value(fields[f], values[f]) for f in names}
            row["distance"] = ValueProto(float_val=n.distance)
            rows.append((n.key, (values[UPDATED_AT], entity_key_proto(layout.keys, n.key), row)))
        # In key order: Feast places the i-th row returned at the place of the i-th smallest entity key
        # (utils._get_unique_entities_from_values sorts them), so rows in distance order would get another
        # row's features. The answer is in key order with each row's distance: sort by it for the ranking.
        rows.sort(key=lambda r: r[0])
        return [r for _, r in rows]
