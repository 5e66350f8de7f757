"""``feast apply`` and ``feast teardown`` as ``pgfeatures apply``: the database made to match what Feast
applies, in one transaction, by ``pgfeatures.evolve.apply.apply``.

- ``feast apply`` (``OnlineStore.update``): the kept views become pgfeatures tables (mapping.py) and
  every feature service with ``precompute_online=True`` a materialized pgfeatures service over them
  (``service_of``, as ``import-feast`` maps it), built in the transaction that creates the tables; a
  service Feast applies without ``precompute_online`` or deletes loses its serving rows, as does one
  reading a view Feast deletes. Additive changes are made online (a table, a feature column, an
  index, the event-time migration, a service rebuilt because a table it reads changed); a destructive
  one (a feature removed or retyped) is refused with pgfeatures' sentence for it and nothing changes.
- ``feast teardown``: the views' tables dropped with every service reading them.

**Where the services come from.** Feast's ``OnlineStore.update`` receives the feature views and
entities, not the feature services, and ``FeatureStore.apply`` commits its registry (with the
services it applies) only after ``update`` returns: the store can neither be given the services nor
read them. So ``apply_call`` takes them from the ``FeatureStore.apply`` call that is calling
``update``, found on the call stack (its ``services_to_update`` and, for ``partial=False``,
``services_to_delete``). Where there is no such call (another caller, a Feast that applies
otherwise), no service is built or dropped: a precomputed service is then read table by table
(the same answers) until an apply that has it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ..connections import database_error
from ..definitions import FeatureService, Registry
from ..errors import DefinitionError, SchemaDriftError
from ..evolve import make_plan
from ..evolve.apply import apply, read_live
from .mapping import ViewLayout, registry_of, service_of

NEEDS_DESTRUCTIVE = "(needs --allow-destructive)"


@dataclass(frozen=True)
class ApplyCall:
    """The feature services a ``FeatureStore.apply`` call applies and deletes, and a lookup of the views
    of the registry it is applying (committed or not yet)."""

    services: tuple[Any, ...] = ()
    deleted: tuple[str, ...] = ()
    view: Callable[[str], Any] | None = None


def apply_call() -> ApplyCall | None:
    """The ``FeatureStore.apply`` call on the call stack, or None (see the module docstring)."""
    try:
        from feast.feature_store import FeatureStore as FeastStore
    except ImportError:  # pragma: no cover - the plugin is only loaded by Feast
        return None
    code = FeastStore.apply.__code__
    frame = inspect.currentframe()
    try:
        while frame is not None and frame.f_code is not code:
            frame = frame.f_back
        if frame is None:
            return None
        found = frame.f_locals
        store = found.get("self")
        services = tuple(found.get("services_to_update") or ())
        deleted = tuple(s.name for s in found.get("services_to_delete") or ())
    finally:
        del frame
    view = None
    if store is not None:
        project = store.project

        def view(name: str) -> Any:
            # allow_cache: the registry as this apply left it (not yet committed), as Feast's own
            # FeatureService.prepare_for_apply reads it during the same apply.
            return store.registry.get_any_feature_view(name, project, allow_cache=True)

    return ApplyCall(services, deleted, view)


@dataclass
class Changes:
    """What one ``feast apply`` makes: ``registry`` (the kept views, the views the precomputed services read,
    those services), the tables of deleted views to drop, the services whose serving rows go."""

    registry: Registry
    dropped: list[str] = field(default_factory=list)
    drop_services: list[str] = field(default_factory=list)
    services: dict[str, Any] = field(default_factory=dict)  # Feast FeatureService of each precomputed one
    layouts: dict[str, ViewLayout] = field(default_factory=dict)  # every view of ``registry``


def _one_binding(service: Any, layouts: Mapping[str, ViewLayout]) -> None:
    """A precomputed service is read by one statement keyed once per entity: refuse one whose views read
    an entity's join keys from different request columns (``with_join_key_map``)."""
    seen: dict[str, tuple[str, tuple[str, ...]]] = {}
    for projection in service.feature_view_projections:
        keys = layouts[projection.name].keys
        mapping = getattr(projection, "join_key_map", None) or {}
        columns = tuple(mapping.get(k, k) for k in keys.names)
        first = seen.setdefault(keys.entity.name, (projection.name_to_use(), columns))
        if first[1] != columns:
            raise DefinitionError(
                f"feature service {service.name!r}: views {first[0]!r} and {projection.name_to_use()!r} read the "
                f"same entity from different join key columns ({', '.join(first[1])} / {', '.join(columns)}), "
                "which one read of a pgfeatures materialized service cannot do: drop precompute_online or the "
                "join key map"
            )


def changes(
    schema: str,
    keep: Sequence[ViewLayout],
    dropped: Sequence[str],
    call: ApplyCall | None,
    layout_of: Callable[[Any], ViewLayout],
    known: Mapping[str, ViewLayout] = {},
) -> Changes:
    """What ``feast apply`` makes (pure but for looking up views through ``call``). ``keep``: the views
    Feast keeps; ``known``: views seen before (a partial apply's other views); ``layout_of``: a Feast view's
    ViewLayout. Raises DefinitionError naming the service or view pgfeatures cannot take."""
    layouts = {lay.table.name: lay for lay in keep}
    services: dict[str, FeatureService] = {}
    feast_services: dict[str, Any] = {}
    drop_services = list(call.deleted) if call else []
    for service in call.services if call else ():
        if not getattr(service, "precompute_online", False):
            drop_services.append(service.name)  # serving rows of an earlier precomputed definition, if any
            continue
        for projection in service.feature_view_projections:
            name = projection.name
            if name in layouts:
                continue
            if name in dropped:
                raise DefinitionError(f"feature service {service.name!r} reads view {name!r}, which this apply deletes")
            found = known.get(name)
            if found is None and call is not None and call.view is not None:
                try:
                    found = layout_of(call.view(name))
                except DefinitionError:
                    raise
                except Exception as exc:  # Feast's own lookup errors: not a view of the repository
                    raise DefinitionError(
                        f"feature service {service.name!r}: view {name!r} is not in the registry ({exc})"
                    ) from None
            if found is None:
                raise DefinitionError(f"feature service {service.name!r}: view {name!r} is unknown")
            layouts[name] = found
        _one_binding(service, layouts)
        services[service.name] = service_of(service, renamed_views=True)
        feast_services[service.name] = service
    registry = registry_of(list(layouts.values()), schema, services.values())
    for name in services:
        try:
            registry.layouts(name)  # serving tables' names and slots: what the build makes
        except DefinitionError as exc:
            raise DefinitionError(f"feature service {name!r}: {exc}") from None
    return Changes(registry, list(dropped), sorted(set(drop_services) - set(services)), feast_services, dict(layouts))


def _readers_of(live: Any, tables: Iterable[str]) -> set[str]:
    """Services whose serving rows read any of ``tables``."""
    names = set(tables)
    return {str(t.record.get("service")) for t in live.serving.tables.values() if names & set(t.tables)}


def make_changes(conn: psycopg.Connection, found: Changes, dsn: str, lock_timeout: float = 5.0) -> None:
    """Make ``found`` in one transaction (``pgfeatures.evolve.apply.apply``). Raises SchemaDriftError naming
    a destructive change the views need (nothing changed), ChangeBlockedError, MaterializeError,
    DatabaseUnavailableError / DatabaseError."""
    registry = found.registry
    try:
        live = read_live(conn, registry)
        drop_services = sorted(set(found.drop_services) | (_readers_of(live, found.dropped) - set(registry.services)))
        plan = make_plan(registry, live, drop_tables=found.dropped, drop_services=drop_services)
        refused = [
            c
            for c in plan.changes
            if c.action.endswith(NEEDS_DESTRUCTIVE)
            and not (c.action.startswith("drop table") and c.subject in found.dropped)
        ]
        if refused:
            problems: dict[str, list[str]] = {}
            for change in refused:
                problems.setdefault(change.subject.partition(".")[0], []).append(change.prose)
            raise SchemaDriftError(
                "feast apply makes additive changes only (views, features, indexes, serving rows), and this "
                "one needs destructive ones: "
                + "; ".join(c.prose.replace(": left out; pass --allow-destructive to make it", "") for c in refused)
                + ". Nothing was changed. To make it, apply the repository without the view (its table is "
                "dropped), then with it again, and materialize it",
                problems=problems,
            )
        apply(
            conn,
            registry,
            allow_destructive=any(name in live.tables for name in found.dropped),
            drop_tables=found.dropped,
            drop_services=drop_services,
            lock_timeout=lock_timeout,
        )
    except psycopg.Error as exc:
        raise database_error(exc, dsn) from exc


def teardown(conn: psycopg.Connection, schema: str, tables: Sequence[str], dsn: str, lock_timeout: float = 5.0) -> None:
    """Drop ``tables`` of ``schema`` and every materialized service reading them, in one transaction."""
    registry = Registry.of([], schema)
    try:
        live = read_live(conn, registry)
        if not live.schema_exists:
            return
        present = [name for name in tables if name in live.tables]
        readers = sorted(_readers_of(live, tables))
        if present or readers:
            apply(
                conn,
                registry,
                allow_destructive=True,
                drop_tables=present,
                drop_services=readers,
                lock_timeout=lock_timeout,
            )
    except psycopg.Error as exc:
        raise database_error(exc, dsn) from exc
