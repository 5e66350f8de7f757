"""What a request reads: tables, their features, their entities and freshness limits, resolved
and validated against the registry before any I/O (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..definitions import Entity, Feature, FeatureService, FeatureTable, Registry
from ..errors import DefinitionError

FeaturesArg = Mapping[str, Sequence[str]] | Sequence[str] | None


@dataclass(frozen=True)
class Selection:
    """Which features of which tables a request reads. ``ttls``: the freshness limit (seconds) that
    applies to each item (the table's, or the service's), None for none; ``entities``: the distinct
    entities of the tables, in order of first appearance (one key parameter each)."""

    schema: str
    items: tuple[tuple[FeatureTable, tuple[Feature, ...]], ...]
    ttls: tuple[int | None, ...] = ()
    service: str | None = None
    known: tuple[str, ...] = ()  # every entity the registry defines (keys for others are errors)

    def __post_init__(self) -> None:
        if not self.ttls:
            object.__setattr__(self, "ttls", tuple(t.ttl for t, _ in self.items))
        if not self.known:
            object.__setattr__(self, "known", tuple(e.name for e in self.entities))

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(t.name for t, _ in self.items)

    @property
    def n_features(self) -> int:
        return sum(len(fs) for _, fs in self.items)

    @property
    def entities(self) -> tuple[Entity, ...]:
        return tuple(dict.fromkeys(t.entity for t, _ in self.items))

    def entity_index(self, table: FeatureTable) -> int:
        """The position of the table's entity among ``entities`` (its key parameter, from 0)."""
        return self.entities.index(table.entity)

    def needs(self) -> dict[str, list[str]]:
        """{entity: [tables that need its key]}."""
        out: dict[str, list[str]] = {}
        for t, _ in self.items:
            out.setdefault(t.entity.name, []).append(t.name)
        return out

    @property
    def has_ttl(self) -> bool:
        return any(t is not None for t in self.ttls)

    @property
    def has_defaults(self) -> bool:
        return any(f.default is not None for _, fs in self.items for f in fs)


def select(registry: Registry, tables: Iterable[str] | None = None, features: FeaturesArg = None) -> Selection:
    """Resolve ``tables`` and ``features`` against the registry.

    ``tables`` None means every table (or, when ``features`` is given, the tables it names).
    ``features`` is ``{table: [feature, ...]}`` or a list of ``"table.feature"``; tables not named
    in it read all their features. Raises UnknownTableError / UnknownFeatureError naming what is valid.
    """
    wanted = _features_by_table(features)
    if tables is None and wanted:
        tables = list(wanted)
    resolved = registry.resolve(tables)
    unasked = set(wanted) - {t.name for t in resolved}
    if unasked:
        registry.resolve(unasked)  # raises for unknown tables
        raise DefinitionError(f"features given for table(s) not requested: {', '.join(sorted(unasked))}")
    items = tuple((t, t.select(wanted.get(t.name))) for t in resolved)
    return Selection(registry.schema, items, (), None, tuple(registry.entities))


def select_service(registry: Registry, service: FeatureService | str, features: FeaturesArg = None) -> Selection:
    """The service's features (in the service's order), or the subset ``features`` of them, each
    table with the service's effective TTL for it (``FeatureService.effective_ttl``). Raises
    UnknownServiceError and the errors of ``select``."""
    svc = registry.service(service) if isinstance(service, str) else service
    items = svc.resolve(registry)
    if features is not None:
        wanted = _features_by_table(features)
        offered = {t.name: {f.name for f in fs} for t, fs in items}
        for table, names in wanted.items():
            if table not in offered:
                raise DefinitionError(
                    f"service {svc.name!r} has no features of table {table!r} (its tables: {', '.join(offered)})"
                )
            extra = [n for n in names if n not in offered[table]]
            if extra:
                raise DefinitionError(f"service {svc.name!r} does not serve {', '.join(f'{table}.{n}' for n in extra)}")
        items = tuple((t, tuple(f for f in fs if f.name in wanted[t.name])) for t, fs in items if t.name in wanted)
    ttls = tuple(svc.effective_ttl(t) for t, _ in items)
    return Selection(registry.schema, items, ttls, svc.name, tuple(registry.entities))


def _features_by_table(features: FeaturesArg) -> dict[str, list[str]]:
    if features is None:
        return {}
    if isinstance(features, Mapping):
        return {t: [fs] if isinstance(fs, str) else list(fs) for t, fs in features.items()}
    if isinstance(features, str):
        features = [features]
    out: dict[str, list[str]] = {}
    for item in features:
        table, dot, feature = item.partition(".")
        if not dot or not table or not feature:
            raise DefinitionError(
                f"feature {item!r} must be written 'table.feature' (or pass a {{table: [features]}} mapping)"
            )
        out.setdefault(table, []).append(feature)
    return out
