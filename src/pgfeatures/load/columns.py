"""Which source columns feed which table columns: names matched to the table definition, and
types checked against what each column type accepts, before any row is read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pyarrow as pa

from ..definitions import KEY_LENGTH, UPDATED_AT, Entity, Feature, FeatureTable
from ..definitions.types import EMBEDDING, LIST, SCALAR, STRING, FeatureType
from ..errors import LoadInputError
from .options import LoadOptions
from .sources import Source


def kind_of(t: pa.DataType) -> str:
    if pa.types.is_dictionary(t):
        return kind_of(t.value_type)
    for kind, test in (
        ("null", pa.types.is_null),
        ("boolean", pa.types.is_boolean),
        ("integer", pa.types.is_integer),
        ("floating", pa.types.is_floating),
        ("decimal", pa.types.is_decimal),
        ("timestamp", pa.types.is_timestamp),
        ("string", lambda x: pa.types.is_string(x) or pa.types.is_large_string(x)),
        ("fixed binary", pa.types.is_fixed_size_binary),
        ("binary", lambda x: pa.types.is_binary(x) or pa.types.is_large_binary(x)),
        ("list", lambda x: pa.types.is_list(x) or pa.types.is_large_list(x) or pa.types.is_fixed_size_list(x)),
    ):
        if test(t):
            return kind
    return "other"


_NUMERIC = {"null", "integer", "floating", "decimal"}
ACCEPTS = {
    "real": _NUMERIC,
    "double precision": _NUMERIC,
    "smallint": _NUMERIC,
    "integer": _NUMERIC,
    "bigint": _NUMERIC,
    "boolean": {"null", "boolean"},
}
# What an updated_at column (or a timestamp feature's) may hold: timestamps, ISO 8601 strings, epoch
# numbers (in event_time_unit).
EVENT_TIME_KINDS = {"null", "integer", "floating", "decimal", "string", "timestamp"}
# A list's (or an embedding's) elements: the kinds the element type takes. A list or an embedding may
# also come as text holding a JSON array (CSV; rich.py parses it).
ELEMENT_KINDS = {
    "integer": {"null", "integer", "floating", "decimal"},
    "bigint": {"null", "integer", "floating", "decimal"},
    "real": {"null", "integer", "floating", "decimal"},
    "double precision": {"null", "integer", "floating", "decimal"},
    "string": {"null", "string"},
    "embedding": {"null", "integer", "floating", "decimal"},
}
_CSV_TYPES = {
    "real": pa.float64(),
    "double precision": pa.float64(),
    "smallint": pa.int64(),
    "integer": pa.int64(),
    "bigint": pa.int64(),
    "boolean": pa.bool_(),
}


@dataclass(frozen=True)
class Columns:
    """Which source columns feed which table columns. Staging order: the entity's key column (named and
    typed as in the table), features, [updated_at], seq. ``key`` is the source's key column."""

    key: str
    features: tuple[Feature, ...]
    updated_at: bool
    entity: Entity
    # The live column type of each embedding feature (``vector(384)``, ``halfvec(384)``, ``real[]``, as
    # format_type prints it: qualified where pgvector's schema is not on the search path), read from the
    # catalog when the load starts: embeddings are staged and encoded in it (rich.py).
    embedding_types: Mapping[str, str] = field(default_factory=dict)

    def storage_of(self, feature: str) -> str:
        """How an embedding feature's values are encoded: ``vector``, ``halfvec`` or ``array`` (real[])."""
        live = self.embedding_types.get(feature, "real[]")
        return "halfvec" if "halfvec(" in live else "vector" if "vector(" in live else "array"

    @property
    def key_column(self) -> str:
        """The table's (and the stage's) key column."""
        return self.entity.column

    @property
    def source_columns(self) -> list[str]:
        return [self.key, *(f.name for f in self.features), *([UPDATED_AT] if self.updated_at else [])]

    @property
    def csv_types(self) -> dict[str, pa.DataType]:
        """How each CSV column is read: numbers and booleans parsed by pyarrow; keys, strings, timestamps
        (ISO 8601 or epoch digits: eventtime.py) and lists and embeddings (JSON arrays: rich.py) as text."""
        types = {self.key: pa.string(), **{f.name: _CSV_TYPES.get(f.type.name, pa.string()) for f in self.features}}
        return {**types, UPDATED_AT: pa.string()} if self.updated_at else types


def _element_spec(type_: FeatureType) -> str:
    if type_.kind == EMBEDDING:
        return "embedding"
    assert type_.element is not None
    return "string" if type_.element.kind == STRING else type_.element.name


def column_problem(source: str, column: str, t: pa.DataType, type_: FeatureType, options: LoadOptions) -> str | None:
    """Why a source column of Arrow type ``t`` cannot load into a feature of ``type_`` (None: it can)."""
    kind = kind_of(t)
    if type_.kind == SCALAR:
        if kind in ACCEPTS[type_.name]:
            return None
        accepted = ", ".join(sorted(ACCEPTS[type_.name]))
    elif type_.kind == STRING:
        if kind in ("null", "string"):
            return None
        accepted = "strings"
    elif type_.kind in (LIST, EMBEDDING):
        if kind in ("null", "string"):
            return None
        value = t.value_type if kind == "list" else None
        elements = ELEMENT_KINDS[_element_spec(type_)]
        if value is not None and kind_of(value) in elements:
            if type_.kind == EMBEDDING and pa.types.is_fixed_size_list(t) and t.list_size != type_.dim:
                return (
                    f"{source}: column {column!r} is {t}: fixed-size lists of {t.list_size} values; the embedding has "
                    f"dim {type_.dim}"
                )
            return None
        accepted = f"lists of {'numbers' if 'integer' in elements else 'strings'}, or text holding JSON arrays"
    else:
        return _event_time_problem(source, column, t, options, "timestamp")
    return f"{source}: column {column!r} is {t}, which cannot load into {type_.spec} (accepted: {accepted})"


def plan_columns(source: Source, table: FeatureTable, options: LoadOptions) -> Columns:
    """Match a source's columns to the table. Raises LoadInputError for missing, extra, duplicate or mistyped columns."""
    name, names = source.name, source.names
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise LoadInputError(f"{name}: duplicate column name(s) {', '.join(dupes)}", source=name)
    key = options.key_column or table.key_column
    valid = [key, *table.feature_names, UPDATED_AT]
    if key not in names:
        raise LoadInputError(
            f"{name}: no key column {key!r} (columns: {', '.join(names) or 'none'}); "
            "name the key column with key_column= (--key-column)",
            source=name,
            column=key,
        )
    entity = table.entity
    if options.hash_keys and entity.key_type != "bytea32":
        raise LoadInputError(
            f"hash_keys=True (--hash-keys) hashes natural ids into 32-byte keys, but table {table.name} "
            f"is of entity {entity.name!r}, keyed by {entity.key_type}: its keys are {entity.accepts}"
        )
    features = tuple(f for f in table.features if f.name in names)
    missing = [f.name for f in table.features if f.name not in names]
    if missing and not options.partial:
        raise LoadInputError(
            f"{name}: missing column(s) {', '.join(missing)}; table {table.name} has "
            f"{', '.join(table.feature_names)} (partial=True / --partial merges only the columns present)",
            source=name,
            column=missing[0],
        )
    if not features and UPDATED_AT not in names:
        raise LoadInputError(
            f"{name}: no feature column of table {table.name} ({', '.join(table.feature_names)})", source=name
        )
    extra = [n for n in names if n not in valid]
    if extra and not options.ignore_extra:
        raise LoadInputError(
            f"{name}: unexpected column(s) {', '.join(extra)}; valid: {', '.join(valid)} "
            "(ignore_extra=True / --ignore-extra skips them)",
            source=name,
            column=extra[0],
        )
    if source.types is not None:
        _check_key_type(source, key, entity, options.hash_keys)
        for f in features:
            problem = column_problem(name, f.name, source.types[f.name], f.type, options)
            if problem is not None:
                raise LoadInputError(problem, source=name, column=f.name)
        if UPDATED_AT in names:
            check_event_time_type(name, source.types[UPDATED_AT], options)
    return Columns(key, features, UPDATED_AT in names, entity)


def check_event_time_type(source: str, t: pa.DataType, options: LoadOptions) -> None:
    """Raise LoadInputError unless an ``updated_at`` column of type ``t`` can be read as event time."""
    problem = _event_time_problem(source, UPDATED_AT, t, options, "event time")
    if problem is not None:
        raise LoadInputError(problem, source=source, column=UPDATED_AT)


def _event_time_problem(source: str, column: str, t: pa.DataType, options: LoadOptions, what: str) -> str | None:
    """Why a column of type ``t`` cannot be read by the event-time rules (``updated_at``, or a timestamp feature)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if kind_of(t) not in EVENT_TIME_KINDS:
        return (
            f"{source}: column {column!r} is {t}, which cannot load into {what}: a timestamp, an ISO 8601 "
            "string with a zone, or epoch numbers in event_time_unit (s, ms, us)"
        )
    if pa.types.is_timestamp(t) and t.tz is None and options.event_time_zone is None:
        return (
            f"{source}: column {column!r} is {t}, with no time zone: which zone its times are in "
            "is not known; name it with event_time_zone= (--event-time-zone, e.g. UTC)"
        )
    return None


# The source key kinds each key type takes (keys.py parses them): natural ids for hashed entities.
KEY_KINDS = {
    "hashed": {"string", "integer", "binary", "fixed binary"},
    "bytea32": {"string", "binary", "fixed binary"},
    "bigint": {"integer", "string"},
    "text": {"string", "integer"},
    "uuid": {"string", "binary", "fixed binary"},
}
_FIXED_WIDTH = {"bytea32": KEY_LENGTH, "uuid": 16}


def _check_key_type(source: Source, key: str, entity: Entity, hash_keys: bool) -> None:
    assert source.types is not None
    t = source.types[key]
    kind = kind_of(t)
    hashed = bool(entity.hash or hash_keys)
    kinds = KEY_KINDS["hashed" if hashed else entity.key_type]
    width = None if hashed else _FIXED_WIDTH.get(entity.key_type)
    if kind in kinds and not (kind == "fixed binary" and width is not None and t.byte_width != width):
        return
    if entity.key_type == "bytea32" and not entity.hash:
        what = (
            f"keys must be {KEY_LENGTH}-byte binary, {2 * KEY_LENGTH} hex characters, or natural ids (string, "
            "integer, binary) with hash_keys=True (--hash-keys)"
        )
    else:
        what = f"{entity.name} keys ({entity.key_type}{', hashed' if entity.hash else ''}) are {entity.accepts}"
    raise LoadInputError(f"{source.name}: key column {key!r} is {t}; {what}", source=source.name, column=key)
