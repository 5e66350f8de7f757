"""Feature-table definitions: what tables exist, their features and types.

A definition is data: build it in Python or load it from TOML::

    schema = "features"

    [tables.user_stats]
    covering_index = true          # optional: INCLUDE all features in a unique index

    [tables.user_stats.features]
    clicks_7d = "integer"
    ctr_7d = "real"

Every table has the entity key ``hashkey bytea`` (32 bytes, primary key) and
``updated_at integer`` (epoch seconds) besides its features. Only narrow,
fixed-width types are accepted: hot feature rows must stay small so that one
index lookup touches one small heap tuple (or none, with a covering index).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DefinitionError, UnknownFeatureError, UnknownTableError

KEY_COLUMN = "hashkey"
KEY_LENGTH = 32
UPDATED_AT = "updated_at"
RESERVED = frozenset({KEY_COLUMN, UPDATED_AT})
DEFAULT_SCHEMA = "features"

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class FeatureType:
    """A supported column type and how values travel and come back."""

    name: str  # canonical PostgreSQL name, as format_type() prints it
    python: type
    exact_in_float8: bool  # can ride in a float8[] without loss

    def __str__(self) -> str:
        return self.name


TYPES: dict[str, FeatureType] = {
    "real": FeatureType("real", float, True),
    "double precision": FeatureType("double precision", float, True),
    "smallint": FeatureType("smallint", int, True),
    "integer": FeatureType("integer", int, True),
    "bigint": FeatureType("bigint", int, False),
    "boolean": FeatureType("boolean", bool, True),
}

ALIASES = {
    "float4": "real", "float": "double precision", "float8": "double precision", "double": "double precision",
    "int2": "smallint", "int": "integer", "int4": "integer", "int8": "bigint", "bool": "boolean",
}

# Wide types and why they do not belong in a hot table; the doctor reuses this advice.
WIDE_TYPES = {
    "text": "variable-length and TOAST-able; encode categories as smallint/integer codes",
    "varchar": "variable-length; encode categories as smallint/integer codes",
    "character varying": "variable-length; encode categories as smallint/integer codes",
    "json": "parsed on every read and variable-length; one column per feature, as real/integer",
    "jsonb": "variable-length, often TOASTed; one column per feature, as real/integer",
    "numeric": "variable-length arbitrary precision, slow to decode; use real or double precision",
    "timestamptz": "8 bytes and converted on every read; use updated_at-style integer epoch seconds",
    "timestamp with time zone": "8 bytes and converted on every read; use integer epoch seconds",
    "timestamp": "8 bytes and converted on every read; use integer epoch seconds",
    "bytea": "variable-length; only the entity key should be bytea",
}


def read_toml(path: str | Path, error: type[Exception], what: str) -> dict[str, Any]:
    """A TOML file's document; a missing file or bad TOML raises ``error`` naming the file."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: invalid TOML: {exc}") from None


def feature_type(name: str) -> FeatureType:
    """Resolve a type name (canonical or alias). Raises DefinitionError for wide or unknown types."""
    key = " ".join(name.strip().lower().split())
    key = ALIASES.get(key, key)
    if key in TYPES:
        return TYPES[key]
    valid = ", ".join(TYPES)
    if key in WIDE_TYPES:
        raise DefinitionError(f"type {name!r} is not allowed in a feature table: {WIDE_TYPES[key]} (valid: {valid})")
    raise DefinitionError(f"unknown type {name!r} (valid: {valid})")


def _check_identifier(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _IDENT.match(name):
        raise DefinitionError(
            f"invalid {kind} name {name!r}: use lowercase letters, digits and '_', not starting with a digit, at most 63 characters"
        )
    return name


@dataclass(frozen=True)
class Feature:
    name: str
    type: FeatureType

    def __post_init__(self) -> None:
        _check_identifier("feature", self.name)


UPDATED_AT_FEATURE = Feature(UPDATED_AT, TYPES["integer"])


@dataclass(frozen=True)
class FeatureTable:
    """One feature table. ``features`` keeps declaration order."""

    name: str
    features: tuple[Feature, ...]
    covering_index: bool = False
    _by_name: Mapping[str, Feature] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_identifier("table", self.name)
        if not self.features:
            raise DefinitionError(f"table {self.name!r} has no features")
        names = [f.name for f in self.features]
        for name in names:
            if name in RESERVED:
                raise DefinitionError(f"table {self.name!r}: {name!r} is reserved (every table has hashkey and updated_at)")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DefinitionError(f"table {self.name!r}: duplicate feature(s) {', '.join(dupes)}")
        by_name = {f.name: f for f in self.features}
        by_name[UPDATED_AT] = UPDATED_AT_FEATURE
        object.__setattr__(self, "_by_name", by_name)

    @classmethod
    def of(cls, name: str, features: Mapping[str, str] | Iterable[tuple[str, str]], covering_index: bool = False) -> "FeatureTable":
        """Build from ``{feature: type name}``."""
        items = features.items() if isinstance(features, Mapping) else features
        return cls(name, tuple(Feature(f, feature_type(t)) for f, t in items), covering_index)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def readable_names(self) -> tuple[str, ...]:
        """Every name ``features=`` accepts: the features plus updated_at."""
        return (*self.feature_names, UPDATED_AT)

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


@dataclass(frozen=True)
class Registry:
    """The set of feature tables served, in one PostgreSQL schema."""

    tables: Mapping[str, FeatureTable]
    schema: str = DEFAULT_SCHEMA
    source: str | None = field(default=None, compare=False)  # the TOML file it came from, for messages

    def __post_init__(self) -> None:
        _check_identifier("schema", self.schema)
        for name, table in self.tables.items():
            if name != table.name:
                raise DefinitionError(f"table registered as {name!r} is named {table.name!r}")

    @classmethod
    def of(cls, tables: Iterable[FeatureTable], schema: str = DEFAULT_SCHEMA, source: str | None = None) -> "Registry":
        tables = list(tables)
        names = [t.name for t in tables]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DefinitionError(f"duplicate table(s): {', '.join(dupes)}")
        return cls({t.name: t for t in tables}, schema, source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "definition") -> "Registry":
        """Build from the TOML document's structure. Errors name the source and the table."""
        if not isinstance(data, Mapping):
            raise DefinitionError(f"{source}: expected a table of settings")
        unknown = set(data) - {"schema", "tables"}
        if unknown:
            raise DefinitionError(f"{source}: unknown key(s) {', '.join(sorted(unknown))} (valid: schema, tables)")
        tables_data = data.get("tables")
        if not isinstance(tables_data, Mapping) or not tables_data:
            raise DefinitionError(f"{source}: no [tables.<name>] defined")
        tables = []
        for name, spec in tables_data.items():
            if not isinstance(spec, Mapping) or not isinstance(spec.get("features"), Mapping):
                raise DefinitionError(f"{source}: table {name!r} needs a [tables.{name}.features] table of name = \"type\"")
            extra = set(spec) - {"features", "covering_index"}
            if extra:
                raise DefinitionError(f"{source}: table {name!r}: unknown key(s) {', '.join(sorted(extra))} (valid: features, covering_index)")
            try:
                tables.append(FeatureTable.of(name, spec["features"], bool(spec.get("covering_index", False))))
            except DefinitionError as exc:
                raise DefinitionError(f"{source}: {exc}") from None
        return cls.of(tables, data.get("schema", DEFAULT_SCHEMA), source if source != "definition" else None)

    @classmethod
    def from_toml(cls, path: str | Path) -> "Registry":
        return cls.from_dict(read_toml(path, DefinitionError, "definition file"), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "tables": {
                t.name: {"covering_index": t.covering_index, "features": {f.name: f.type.name for f in t.features}}
                for t in self.tables.values()
            },
        }

    def table(self, name: str) -> FeatureTable:
        try:
            return self.tables[name]
        except KeyError:
            raise UnknownTableError([name], self.tables) from None

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


def demo_registry(n_tables: int = 30, n_features: int = 8, schema: str = "demo", covering_index: bool = False) -> Registry:
    """The demo's layout: ``t00..t29`` with ``f0..f7 real`` each."""
    return Registry.of(
        (FeatureTable.of(f"t{i:02d}", {f"f{j}": "real" for j in range(n_features)}, covering_index) for i in range(n_tables)),
        schema=schema,
    )
