"""``pgfeatures import-feast PATH``: a Feast feature repository's definitions as pgfeatures definitions.

Reads the repository's ``feature_store.yaml`` and its registry (what ``feast apply`` stored) and
maps every feature view, entity and feature service as the online store does (mapping.py), so
``pgfeatures serve`` or the library reads the tables the plugin wrote, without Feast's
per-request work; a service with ``precompute_online=True`` is written as the materialized service
the plugin builds (same definition, so the same serving rows). What does not translate is listed with the reason, never dropped silently:
on-demand feature views (Feast computes them per request), services that use them or rename a
view, views with a type pgfeatures cannot store, stream sources (the plugin stores what Feast
pushes; pgfeatures reads no stream).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..definitions import Registry, check_identifier
from ..errors import DefinitionError
from .mapping import ViewLayout, registry_of, service_of, view_layout

STORE_TYPE = "pgfeatures.feast.PgfeaturesOnlineStore"


@dataclass
class FeastImport:
    """The pgfeatures registry of a Feast repository and what did not translate (one line each)."""

    registry: Registry
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def toml(self) -> str:
        """The registry as a pgfeatures definitions file, what was left out in comments at the top."""
        head = ["# pgfeatures definitions imported from a Feast feature repository (pgfeatures import-feast)."]
        head += [f"# not imported: {line}" for line in self.skipped]
        head += [f"# note: {line}" for line in self.notes]
        return "\n".join(head) + "\n\n" + to_toml(self.registry.to_dict())


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def _toml_key(key: str) -> str:
    return key if key.replace("_", "a").isalnum() and key.isascii() else json.dumps(key)


def to_toml(document: Mapping[str, Any], prefix: str = "") -> str:
    """A document of tables, scalars and lists (``Registry.to_dict``) as TOML text."""
    scalars = [(k, v) for k, v in document.items() if not isinstance(v, Mapping)]
    tables = [(k, v) for k, v in document.items() if isinstance(v, Mapping)]
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in scalars]
    out = []
    if lines or not prefix:
        out.append(("" if not prefix else f"[{prefix}]\n") + "\n".join(lines))
    for key, table in tables:
        name = f"{prefix}.{_toml_key(key)}" if prefix else _toml_key(key)
        out.append(to_toml(table, name))
    return "\n\n".join(part for part in out if part.strip()) + ("\n" if not prefix else "")


def _schema(config: Any) -> str:
    online = config.online_store
    name = getattr(online, "db_schema", None) if getattr(online, "type", None) == STORE_TYPE else None
    try:
        return check_identifier("schema", name or config.project)
    except DefinitionError as exc:
        raise DefinitionError(f"feature_store.yaml: {exc} (set online_store.db_schema)") from None


def import_repo(path: str | Path) -> FeastImport:
    """The pgfeatures definitions of the Feast repository at ``path`` (its feature_store.yaml and registry).

    Raises DefinitionError when nothing can be imported or the repository cannot be read.
    """
    try:
        from feast import FeatureStore
    except ImportError:
        raise DefinitionError("import-feast needs Feast: pip install 'pgfeatures[feast]'") from None
    root = Path(path)
    if root.is_file():
        root = root.parent
    if not (root / "feature_store.yaml").is_file():
        raise DefinitionError(f"{root}: no feature_store.yaml (give the path of a Feast feature repository)")
    try:
        store = FeatureStore(repo_path=str(root))
        config = store.config
        registry = store.registry
        project = store.project
        views = [*registry.list_feature_views(project), *registry.list_stream_feature_views(project)]
        on_demand = registry.list_on_demand_feature_views(project)
        services = registry.list_feature_services(project)
    except DefinitionError:
        raise
    except Exception as exc:  # Feast's own errors: a bad yaml, an unreadable registry
        raise DefinitionError(f"{root}: Feast could not read the repository: {exc}") from None
    result_skipped: list[str] = []
    notes: list[str] = []
    layouts: list[ViewLayout] = []
    for view in sorted(views, key=lambda v: v.name):
        try:
            layouts.append(view_layout(view))
        except DefinitionError as exc:
            result_skipped.append(str(exc))
            continue
        stream = getattr(view, "stream_source", None)
        if stream is not None:
            notes.append(
                f"feature view {view.name!r} reads the stream source {stream.name!r}: pgfeatures serves what "
                "Feast writes to the online store, it reads no stream itself"
            )
    for odfv in sorted(on_demand, key=lambda v: v.name):
        result_skipped.append(
            f"on-demand feature view {odfv.name!r}: Feast computes it at request time; pgfeatures "
            "serves stored features only"
        )
    imported = {lay.table.name for lay in layouts}
    odfv_names = {v.name for v in on_demand}
    pg_services = []
    for service in sorted(services, key=lambda s: s.name):
        uses = [p.name for p in service.feature_view_projections]
        missing = [n for n in uses if n not in imported]
        if missing:
            why = ", ".join(f"{n} ({'on-demand' if n in odfv_names else 'not imported'})" for n in missing)
            result_skipped.append(f"feature service {service.name!r}: uses {why}")
            continue
        try:
            pg_services.append(service_of(service))
        except DefinitionError as exc:
            result_skipped.append(str(exc))
    if not layouts:
        raise DefinitionError(
            f"{root}: no feature view of project {project!r} can be served by pgfeatures"
            + (f" ({'; '.join(result_skipped)})" if result_skipped else "")
        )
    pg_registry = registry_of(layouts, _schema(config), pg_services)
    return FeastImport(pg_registry, result_skipped, notes)
