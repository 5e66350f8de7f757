"""The registry: every entity, feature table and feature service served, in one PostgreSQL schema.

Build it in Python (``Registry.of``) or from TOML (``Registry.from_toml``)::

    schema = "features"

    [entities.user]                 # optional: without entities, one default entity keyed by
    key = "bigint"                  # hashkey bytea (32 bytes)
    [tables.user_stats]
    entity = "user"
    [tables.user_stats.features]
    clicks_7d = "integer"
    [services.fraud_v1]
    features = ["user_stats.*"]

Errors name the file, the entity, table or service, and what is valid.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DefinitionError, UnknownEntityError, UnknownServiceError, UnknownTableError
from .entities import DEFAULT_ENTITY, Entity
from .services import FeatureService, check_services
from .tables import FeatureTable
from .types import check_identifier, parse_duration

if TYPE_CHECKING:
    from .layout import EntityLayout

DEFAULT_SCHEMA = "features"


def read_toml(path: str | Path, error: type[Exception], what: str) -> dict[str, Any]:
    """A TOML file's document; a missing file or bad TOML raises ``error`` naming the file."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a directory, not a file") from None
    except UnicodeDecodeError:
        raise error(f"{what} {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: invalid TOML: {exc}") from None


@dataclass(frozen=True)
class Registry:
    """The entities, tables and services served, in one PostgreSQL schema."""

    tables: Mapping[str, FeatureTable]
    schema: str = DEFAULT_SCHEMA
    source: str | None = field(default=None, compare=False)  # the TOML file it came from, for messages
    entities: Mapping[str, Entity] = field(default_factory=dict)
    services: Mapping[str, FeatureService] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_identifier("schema", self.schema)
        entities = dict(self.entities)
        for name, table in self.tables.items():
            if name != table.name:
                raise DefinitionError(f"table registered as {name!r} is named {table.name!r}")
            known = entities.setdefault(table.entity.name, table.entity)
            if known != table.entity:
                raise DefinitionError(
                    f"table {name!r}: entity {table.entity.name!r} differs from the registry's entity of that name"
                )
        object.__setattr__(self, "entities", entities)
        for name, service in self.services.items():
            if name != service.name:
                raise DefinitionError(f"service registered as {name!r} is named {service.name!r}")
        check_services(self, self.services.values())
        _check_serving_keys(self)

    @classmethod
    def of(
        cls,
        tables: Iterable[FeatureTable],
        schema: str = DEFAULT_SCHEMA,
        source: str | None = None,
        *,
        entities: Iterable[Entity] = (),
        services: Iterable[FeatureService] = (),
    ) -> Registry:
        tables = list(tables)
        services = list(services)
        for kind, names in (("table", [t.name for t in tables]), ("service", [s.name for s in services])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise DefinitionError(f"duplicate {kind}(s): {', '.join(dupes)}")
        return cls(
            {t.name: t for t in tables}, schema, source, {e.name: e for e in entities}, {s.name: s for s in services}
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "definition") -> Registry:
        """Build from the TOML document's structure. Errors name the source and the table."""
        if not isinstance(data, Mapping):
            raise DefinitionError(f"{source}: expected a table of settings")
        valid = ("schema", "entities", "tables", "services")
        unknown = set(data) - set(valid)
        if unknown:
            raise DefinitionError(f"{source}: unknown key(s) {', '.join(sorted(unknown))} (valid: {', '.join(valid)})")
        try:
            entities = {name: Entity.from_dict(name, spec) for name, spec in _section(data, "entities").items()}
            tables_data = data.get("tables")
            if not isinstance(tables_data, Mapping) or not tables_data:
                raise DefinitionError("no [tables.<name>] defined")
            tables = [_table(name, spec, entities) for name, spec in tables_data.items()]
            services = [FeatureService.from_dict(name, spec) for name, spec in _section(data, "services").items()]
            return cls.of(
                tables,
                data.get("schema", DEFAULT_SCHEMA),
                source if source != "definition" else None,
                entities=entities.values(),
                services=services,
            )
        except (DefinitionError, UnknownTableError, UnknownEntityError) as exc:
            raise DefinitionError(f"{source}: {exc}") from None
        except KeyError as exc:  # UnknownFeatureError from a service's reference
            raise DefinitionError(f"{source}: {exc}") from None

    @classmethod
    def from_toml(cls, path: str | Path) -> Registry:
        return cls.from_dict(read_toml(path, DefinitionError, "definition file"), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema": self.schema}
        custom = {n: e for n, e in self.entities.items() if e != DEFAULT_ENTITY}
        if custom:
            out["entities"] = {n: e.to_dict() for n, e in custom.items()}
        out["tables"] = {t.name: t.to_dict() for t in self.tables.values()}
        if self.services:
            out["services"] = {s.name: s.to_dict() for s in self.services.values()}
        return out

    @property
    def fingerprint(self) -> str:
        """A hash of everything the definitions say (``to_dict``), to tell which definitions a running
        store or service serves (``/v1/services``, ``/metrics``, ``pgfeatures plan``)."""
        found = self.__dict__.get("_fingerprint")
        if found is None:
            text = json.dumps(self.to_dict(), sort_keys=True, default=str)
            found = hashlib.sha256(text.encode()).hexdigest()[:16]
            object.__setattr__(self, "_fingerprint", found)
        return str(found)

    def table(self, name: str) -> FeatureTable:
        try:
            return self.tables[name]
        except KeyError:
            raise UnknownTableError([name], self.tables) from None

    def entity(self, name: str) -> Entity:
        try:
            return self.entities[name]
        except KeyError:
            raise UnknownEntityError([name], self.entities) from None

    def service(self, name: str) -> FeatureService:
        try:
            return self.services[name]
        except (KeyError, TypeError):
            raise UnknownServiceError([str(name)], self.services) from None

    def layouts(self, service: str) -> tuple[EntityLayout, ...]:
        """The serving tables of a materialized service (one per entity it reads; see layout.py)."""
        from .layout import service_layouts

        svc = self.service(service)
        return service_layouts(svc, svc.resolve(self))

    def resolve(self, tables: Iterable[str] | None) -> tuple[FeatureTable, ...]:
        """Tables in the order asked (duplicates dropped); None means all. Raises UnknownTableError."""
        if tables is None:
            return tuple(self.tables.values())
        if isinstance(tables, str):
            tables = [tables]
        names = list(dict.fromkeys(tables))
        unknown = [n for n in names if n not in self.tables]
        if unknown:
            raise UnknownTableError(unknown, self.tables)
        if not names:
            raise DefinitionError("empty table list: pass None for all tables")
        return tuple(self.tables[n] for n in names)


def _check_serving_keys(registry: Registry) -> None:
    """A materialized service's serving table holds the key column beside its arrays: the key column
    may not take an array's name."""
    from .layout import SERVING_COLUMNS

    for service in registry.services.values():
        if not service.materialize:
            continue
        for table, features in service.resolve(registry):
            unserved = [
                f"{table.name}.{f.name} ({f.type.spec})" for f in features if f.type.kind in ("list", "embedding")
            ]
            if unserved:
                raise DefinitionError(
                    f"service {service.name!r} is materialized, and {', '.join(unserved)} cannot be held in its "
                    "serving rows yet (they hold numbers, strings and timestamps): serve those features from a "
                    "service that is not materialized (one round-trip all the same), or leave them out of this one"
                )
            if table.key_column in SERVING_COLUMNS:
                raise DefinitionError(
                    f"service {service.name!r} is materialized, and entity {table.entity.name!r} is keyed by column "
                    f"{table.key_column!r}, a name its serving rows use for their own columns "
                    f"({', '.join(sorted(SERVING_COLUMNS))}): rename the key column (key_column) or do not materialize"
                )


def _section(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    section = data.get(name, {})
    if not isinstance(section, Mapping):
        raise DefinitionError(f"[{name}] must be a table of [{name}.<name>] tables")
    return section


def _table(name: str, spec: Any, entities: Mapping[str, Entity]) -> FeatureTable:
    if not isinstance(spec, Mapping) or not isinstance(spec.get("features"), Mapping):
        raise DefinitionError(f'table {name!r} needs a [tables.{name}.features] table of name = "type"')
    valid = {"features", "covering_index", "entity", "ttl"}
    extra = set(spec) - valid
    if extra:
        raise DefinitionError(
            f"table {name!r}: unknown key(s) {', '.join(sorted(extra))} (valid: {', '.join(sorted(valid))})"
        )
    entity = DEFAULT_ENTITY
    if "entity" in spec:
        if spec["entity"] not in entities:
            raise DefinitionError(
                f"table {name!r}: unknown entity {spec['entity']!r} "
                f"(defined: {', '.join(entities) or 'none: add [entities.<name>]'})"
            )
        entity = entities[spec["entity"]]
    ttl = parse_duration(spec["ttl"], f"table {name!r}: ttl") if "ttl" in spec else None
    try:
        return FeatureTable.of(name, spec["features"], bool(spec.get("covering_index", False)), entity=entity, ttl=ttl)
    except DefinitionError as exc:
        message = str(exc)
        raise DefinitionError(message if name in message else f"table {name!r}: {message}") from None


def demo_registry(
    n_tables: int = 30, n_features: int = 8, schema: str = "demo", covering_index: bool = False
) -> Registry:
    """The demo's layout: ``t00..t29`` with ``f0..f7 real`` each, keyed by the default entity."""
    return Registry.of(
        (
            FeatureTable.of(f"t{i:02d}", {f"f{j}": "real" for j in range(n_features)}, covering_index)
            for i in range(n_tables)
        ),
        schema=schema,
    )
