"""Compiled readers, cached per request shape (pure, thread-safe)."""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, cast

from ..definitions import Registry
from ..definitions.layout import EntityLayout
from .compile import BatchReader, Reader, Strategy, compile_batch_reader, compile_reader
from .decode import FeatureResult
from .materialized import compile_materialized_batch_reader, compile_materialized_reader
from .nearest import NearestReader, NearestRequest, VectorFacts, compile_nearest
from .selection import FeaturesArg, select, select_service
from .vector import ServiceVector, vector_batch_reader, vector_reader

R = TypeVar("R", bound="Reader[Any] | BatchReader[Any] | NearestReader")


def request_shape(tables: Iterable[str] | None, features: FeaturesArg) -> Any:
    """A hashable key for a (tables, features) request, as the caller wrote it."""
    t = tables if tables is None or isinstance(tables, (str, tuple)) else tuple(tables)
    if features is None or isinstance(features, (str, tuple)):
        f: Any = features
    elif isinstance(features, Mapping):
        f = tuple((k, v if isinstance(v, (str, tuple)) else tuple(v)) for k, v in features.items())
    else:
        f = tuple(features)
    return t, f


class ReaderCache:
    """A bounded LRU of compiled readers, keyed by request shape and strategy. Thread-safe.

    Bounded because every statement of a cached reader is also a prepared statement on each
    pooled connection: the bound counts statements (a pipeline or sequential reader carries one
    per table), and the stores keep psycopg's ``prepared_max`` above it, so a cached reader's
    statements stay prepared. A reader evicted here is simply compiled again when asked for.
    """

    def __init__(self, registry: Registry, max_statements: int = 100):
        self.registry = registry
        self.max_statements = max_statements
        self._readers: OrderedDict[Any, Reader[Any] | BatchReader[Any] | NearestReader] = OrderedDict()
        self._statements = 0
        self._lock = threading.Lock()
        # Built materialized services and their serving tables: read from serving rows (set by the store).
        self.materialized: dict[str, tuple[EntityLayout, ...]] = {}
        # The flexible twins of materialized readers, compiled with them (see ``_twin``), by cache key.
        self._twins: dict[Any, Any] = {}
        # What the database has for each embedding searched so far, by (table, feature) (set by the store).
        self.vector_facts: dict[tuple[str, str], VectorFacts] = {}

    def reader(
        self, tables: Iterable[str] | None, features: FeaturesArg, strategy: Strategy | str
    ) -> Reader[FeatureResult]:
        return self._get(
            (request_shape(tables, features), strategy),
            lambda: compile_reader(select(self.registry, tables, features), strategy),
        )

    def batch_reader(self, tables: Iterable[str] | None, features: FeaturesArg) -> BatchReader[FeatureResult]:
        return self._get(
            (request_shape(tables, features), "batch"),
            lambda: compile_batch_reader(select(self.registry, tables, features)),
        )

    def nearest_reader(self, request: NearestRequest, facts: VectorFacts, exact_limit: int) -> NearestReader:
        """The nearest-neighbour statement for ``request``'s shape on a database with ``facts`` (cached)."""
        return self._get(
            ("nearest", request.shape, facts, exact_limit),
            lambda: compile_nearest(self.registry.schema, request, facts, exact_limit),
        )

    def service_reader(self, service: str, features: FeaturesArg, strategy: Strategy | str) -> Reader[FeatureResult]:
        """The reader of a feature service (or of a subset of its features): from its serving rows when
        it is materialized and built (``materialized``), else the flexible read. Raises UnknownServiceError."""
        shape = request_shape(None, features)[1]
        flexible = ("service", service, shape, strategy)
        layouts = self.materialized.get(service)
        if layouts is not None:

            def build() -> Reader[FeatureResult]:
                selection = select_service(self.registry, service, features)
                self._twin(flexible, lambda: compile_reader(selection, strategy))
                return dataclasses.replace(
                    compile_materialized_reader(selection, layouts),
                    fallback=lambda: self.service_reader(service, features, strategy),
                )

            return self._get(("materialized", service, shape), build)
        return self._get(
            flexible,
            lambda: self._twin_or(
                flexible, lambda: compile_reader(select_service(self.registry, service, features), strategy)
            ),
        )

    def service_vector_reader(
        self, service: str, features: FeaturesArg, strategy: Strategy | str
    ) -> Reader[ServiceVector]:
        """``service_reader`` decoding to a ServiceVector (the same statement)."""
        materialized = service in self.materialized
        return self._get(
            ("vector", service, request_shape(None, features)[1], strategy, materialized),
            lambda: self._falling_back(
                vector_reader(
                    self.service_reader(service, features, strategy), self._order(service), self._kept(service)
                ),
                materialized,
                lambda: self.service_vector_reader(service, features, strategy),
            ),
        )

    def service_vector_batch_reader(self, service: str, features: FeaturesArg) -> BatchReader[ServiceVector]:
        materialized = service in self.materialized
        return self._get(
            ("vector batch", service, request_shape(None, features)[1], materialized),
            lambda: self._falling_back(
                vector_batch_reader(
                    self.service_batch_reader(service, features), self._order(service), self._kept(service)
                ),
                materialized,
                lambda: self.service_vector_batch_reader(service, features),
            ),
        )

    @staticmethod
    def _falling_back(reader: R, materialized: bool, fallback: Callable[[], Any]) -> R:
        return cast(R, dataclasses.replace(cast(Any, reader), fallback=fallback)) if materialized else reader

    def demote(self, service: str) -> bool:
        """Stop reading ``service`` from its serving rows (they cannot be read: see ``Reader.fallback``):
        from now on its readers are the flexible ones. Returns whether it was read from them."""
        with self._lock:
            if service not in self.materialized:
                return False
            self.materialized = {name: layouts for name, layouts in self.materialized.items() if name != service}
            return True

    def _order(self, service: str) -> tuple[str, ...]:
        return self.registry.service(service).vector_order(self.registry)

    def _kept(self, service: str) -> tuple[str, ...]:
        """The inputs of the service's transforms its vector does not hold as they are (see ``ServiceVector.kept``)."""
        svc = self.registry.service(service)
        plain = set(svc.vector_order(self.registry))
        out: dict[str, None] = {}
        for transform in svc.transforms:
            for name in svc.transform_inputs(self.registry, transform):
                table, _, feature = name.partition(".")
                if name not in plain or self.registry.table(table).feature(feature).type.kind == "embedding":
                    out[name] = None
        return tuple(out)

    def service_batch_reader(self, service: str, features: FeaturesArg) -> BatchReader[FeatureResult]:
        shape = request_shape(None, features)[1]
        flexible = ("service", service, shape, "batch")
        layouts = self.materialized.get(service)
        if layouts is not None:

            def build() -> BatchReader[FeatureResult]:
                selection = select_service(self.registry, service, features)
                self._twin(flexible, lambda: compile_batch_reader(selection))
                return dataclasses.replace(
                    compile_materialized_batch_reader(selection, layouts),
                    fallback=lambda: self.service_batch_reader(service, features),
                )

            return self._get(("materialized batch", service, shape), build)
        return self._get(
            flexible,
            lambda: self._twin_or(
                flexible, lambda: compile_batch_reader(select_service(self.registry, service, features))
            ),
        )

    def _twin(self, key: Any, build: Callable[[], Any]) -> None:
        """Compile a materialized reader's flexible twin now, kept aside (not in the cache, so not prepared on
        connections) until the service is demoted: the read that finds its serving rows gone (a definition
        switch) has already waited for the switch and re-read the catalog; it should not compile as well."""
        try:
            known = key in self._twins
        except TypeError:  # an unhashable request shape: compiled if ever needed
            return
        if not known:
            self._twins[key] = build()

    def _twin_or(self, key: Any, build: Callable[[], R]) -> R:
        """The twin ``_twin`` compiled for ``key`` (taken out: the cache holds it from now on), else ``build()``."""
        try:
            twin = self._twins.pop(key, None)
        except TypeError:
            twin = None
        return cast(R, twin) if twin is not None else build()

    def _get(self, key: Any, build: Callable[[], R]) -> R:
        try:
            with self._lock:
                found = self._readers.get(key)
                if found is not None:
                    self._readers.move_to_end(key)
                    # every key names its kind ("batch", "vector", ...): what it holds, build made
                    return cast(R, found)
        except TypeError:  # an unhashable argument: compile without caching
            return build()
        reader = build()  # outside the lock: compiling is pure, a race only compiles twice
        with self._lock:
            if key not in self._readers:
                self._readers[key] = reader
                self._statements += _n_statements(reader)
                while self._statements > self.max_statements and len(self._readers) > 1:
                    _, evicted = self._readers.popitem(last=False)
                    self._statements -= _n_statements(evicted)
        return reader

    def __len__(self) -> int:
        return len(self._readers)

    @property
    def statements(self) -> int:
        """Statements of the readers cached now."""
        return self._statements


def _n_statements(reader: Reader[Any] | BatchReader[Any] | NearestReader) -> int:
    return len(reader.statements) if isinstance(reader, Reader) else 1
