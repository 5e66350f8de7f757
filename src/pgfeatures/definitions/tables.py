"""Feature tables: one entity's features, their types and defaults, the table's freshness limit.

::

    [tables.user_stats]
    entity = "user"                 # default: the default entity (hashkey bytea)
    ttl = "7d"                      # rows older than this are not served (status "expired")
    covering_index = true           # optional: INCLUDE all features in a unique index
    [tables.user_stats.features]
    clicks_7d = "integer"
    ctr_7d = { type = "real", default = 0.0 }   # served when the row is missing, expired or NULL

Every table has its entity's key column (primary key) and ``updated_at timestamptz`` (event time:
when the row's values were true, or when they were written; see eventtime.py) besides its features.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import DefinitionError, UnknownFeatureError
from .entities import DEFAULT_ENTITY, Entity
from .names import STAGE_COLUMNS, check_not_reserved
from .types import EVENT_TIME, TYPE_OPTIONS, FeatureType, check_identifier, check_value, feature_type

UPDATED_AT = "updated_at"


@dataclass(frozen=True)
class Feature:
    """One feature column. ``default`` (checked against the type) is served in place of a missing,
    expired or NULL value; None means no default (the value stays None)."""

    name: str
    type: FeatureType
    default: Any = None

    def __post_init__(self) -> None:
        check_not_reserved("feature", check_identifier("feature", self.name))
        if self.name in STAGE_COLUMNS:
            raise DefinitionError(
                f"invalid feature name {self.name!r}: the loader's staging table uses a column of "
                "that name; rename the feature"
            )
        if self.default is not None and self.type.kind in ("list", "embedding"):
            raise DefinitionError(
                f"feature {self.name!r}: {'an' if self.type.spec[0] in 'aeiou' else 'a'} {self.type.spec} feature takes "
                "no default (a missing value is None)"
            )
        if self.default is not None:
            try:
                object.__setattr__(self, "default", check_value(f"default of {self.name}", self.type, self.default))
            except Exception as exc:
                raise DefinitionError(str(exc)) from None

    def to_spec(self) -> Any:
        """How a definition file declares it: the type's name, or a table of type, options and default."""
        options = self.type.options()
        if self.default is None and not options:
            return self.type.spec if self.type.kind != "scalar" else self.type.name
        spec: dict[str, Any] = {"type": self.type.spec if self.type.kind != "scalar" else self.type.name, **options}
        if self.default is not None:
            spec["default"] = self.default
        return spec


UPDATED_AT_FEATURE = Feature(UPDATED_AT, EVENT_TIME)


def _feature(name: str, spec: Any) -> Feature:
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"type", "default", *TYPE_OPTIONS}
        if unknown or "type" not in spec:
            raise DefinitionError(
                f'feature {name!r}: write it as "type" or {{ type = "...", default = ... }}'
                + (
                    f" (unknown key(s) {', '.join(sorted(unknown))}; valid: type, default, {', '.join(TYPE_OPTIONS)})"
                    if unknown
                    else ""
                )
            )
        options = {k: v for k, v in spec.items() if k in TYPE_OPTIONS}
        try:
            type_ = feature_type(spec["type"], **options)
        except DefinitionError as exc:
            raise DefinitionError(f"feature {name!r}: {exc}") from None
        return Feature(name, type_, spec.get("default"))
    if isinstance(spec, Feature):
        return spec
    try:
        type_ = feature_type(spec)
    except DefinitionError as exc:
        raise DefinitionError(f"feature {name!r}: {exc}") from None
    return Feature(name, type_)


@dataclass(frozen=True)
class FeatureTable:
    """One feature table. ``features`` keeps declaration order; ``ttl`` is in seconds (None: no limit)."""

    name: str
    features: tuple[Feature, ...]
    covering_index: bool = False
    entity: Entity = DEFAULT_ENTITY
    ttl: int | None = None
    _by_name: Mapping[str, Feature] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_not_reserved("table", check_identifier("table", self.name))
        if not self.features:
            raise DefinitionError(f"table {self.name!r} has no features")
        if self.ttl is not None and (not isinstance(self.ttl, int) or isinstance(self.ttl, bool) or self.ttl <= 0):
            raise DefinitionError(f"table {self.name!r}: ttl must be a positive number of seconds, got {self.ttl!r}")
        names = [f.name for f in self.features]
        reserved = {self.entity.column, UPDATED_AT}
        for name in names:
            if name in reserved:
                raise DefinitionError(
                    f"table {self.name!r}: {name!r} is reserved "
                    f"(every table has its key column {self.entity.column} and {UPDATED_AT})"
                )
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DefinitionError(f"table {self.name!r}: duplicate feature(s) {', '.join(dupes)}")
        by_name = {f.name: f for f in self.features}
        by_name[UPDATED_AT] = UPDATED_AT_FEATURE
        object.__setattr__(self, "_by_name", by_name)

    @classmethod
    def of(
        cls,
        name: str,
        features: Mapping[str, Any] | Iterable[tuple[str, Any]],
        covering_index: bool = False,
        *,
        entity: Entity = DEFAULT_ENTITY,
        ttl: int | None = None,
    ) -> FeatureTable:
        """Build from ``{feature: type name}`` (or ``{feature: {"type": ..., "default": ...}}``)."""
        items = features.items() if isinstance(features, Mapping) else features
        return cls(name, tuple(_feature(f, t) for f, t in items), covering_index, entity, ttl)

    @property
    def key_column(self) -> str:
        return self.entity.column

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def readable_names(self) -> tuple[str, ...]:
        """Every name ``features=`` accepts: the features plus updated_at."""
        return (*self.feature_names, UPDATED_AT)

    def feature(self, name: str) -> Feature:
        """The feature (or ``updated_at``) called ``name``. Raises UnknownFeatureError naming the valid ones."""
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownFeatureError(self.name, [name], self.readable_names) from None

    def select(self, names: Iterable[str] | None) -> tuple[Feature, ...]:
        """The features to read, in the order asked; None means all declared features.

        Raises UnknownFeatureError naming the valid features.
        """
        if names is None:
            return self.features
        if isinstance(names, str):
            names = [names]
        names = list(dict.fromkeys(names))
        unknown = [n for n in names if n not in self._by_name]
        if unknown:
            raise UnknownFeatureError(self.name, unknown, self.readable_names)
        if not names:
            raise DefinitionError(f"empty feature list for table {self.name!r}")
        return tuple(self._by_name[n] for n in names)

    def to_dict(self) -> dict[str, Any]:
        from .types import format_duration

        out: dict[str, Any] = {"covering_index": self.covering_index}
        if self.entity is not DEFAULT_ENTITY and self.entity != DEFAULT_ENTITY:
            out["entity"] = self.entity.name
        if self.ttl is not None:
            out["ttl"] = format_duration(self.ttl)
        out["features"] = {f.name: f.to_spec() for f in self.features}
        return out
