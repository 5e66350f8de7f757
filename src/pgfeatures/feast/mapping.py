"""Feast definitions as pgfeatures definitions (pure): entities, tables, services, keys.

- A Feast **feature view** is a pgfeatures table of the same name: one typed column per feature
  (Float32 -> real, Float64 -> double precision, Int32 -> integer, Int64 -> bigint, Bool ->
  boolean, String -> string (256 characters at most), UnixTimestamp -> timestamp, Array(Int32 |
  Int64 | Float32 | Float64 | String) -> list<integer | bigint | real | double | string>), the view's
  ``ttl`` as the table's ttl, the event time in ``updated_at``.
- The **join keys** of a view are one pgfeatures entity, named after them so that every view with
  the same join keys shares it (one key parameter per request, whatever the number of views):
  one Int64/Int32 join key -> a ``bigint`` key column of that name; one String join key -> a
  ``text`` key column; one Bytes join key -> ``bytea32``, the SHA-256 of the bytes; several join
  keys (and the join key Feast gives entityless views) -> ``bytea32``, the SHA-256 of their
  canonical text ``composite_key_text`` (the join keys sorted by name, their values as a compact
  JSON array, e.g. ``[1001,"sf"]``).
- A Feast **feature service** is a pgfeatures service of the same name listing its features; one
  with ``precompute_online=True`` is a materialized service (``materialize = true``) that also lists
  each view's ``updated_at``.

What cannot be stored raises DefinitionError naming the feature view (or service) and the field,
before anything is created.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ..definitions import UPDATED_AT, Entity, Feature, FeatureService, FeatureTable, Registry, feature_type
from ..errors import DefinitionError, KeyFormatError

# Feast value type name -> pgfeatures column type. Everything else is refused with this list.
FEATURE_TYPES = {
    "FLOAT": "real",
    "DOUBLE": "double precision",
    "INT32": "integer",
    "INT64": "bigint",
    "BOOL": "boolean",
    "STRING": "string",  # character varying(256): a longer value is refused, never truncated
    "UNIX_TIMESTAMP": "timestamp",  # Feast carries whole epoch seconds
    "INT32_LIST": "list<integer>",
    "INT64_LIST": "list<bigint>",
    "FLOAT_LIST": "list<real>",
    "DOUBLE_LIST": "list<double>",
    "STRING_LIST": "list<string>",
}
FEAST_TYPE_NAMES = {
    "FLOAT": "Float32",
    "DOUBLE": "Float64",
    "INT32": "Int32",
    "INT64": "Int64",
    "BOOL": "Bool",
    "STRING": "String",
    "BYTES": "Bytes",
    "UNIX_TIMESTAMP": "UnixTimestamp",
    "INT32_LIST": "Array(Int32)",
    "INT64_LIST": "Array(Int64)",
    "FLOAT_LIST": "Array(Float32)",
    "DOUBLE_LIST": "Array(Float64)",
    "STRING_LIST": "Array(String)",
}
# Feast join key value type -> pgfeatures key type of a single-key entity.
KEY_TYPES = {"INT64": "bigint", "INT32": "bigint", "STRING": "text", "BYTES": "bytea32"}
# The ValueProto field each storable type travels in (feature values and join keys).
PROTO_FIELDS = {
    "FLOAT": "float_val",
    "DOUBLE": "double_val",
    "INT32": "int32_val",
    "INT64": "int64_val",
    "BOOL": "bool_val",
    "STRING": "string_val",
    "BYTES": "bytes_val",
    "UNIX_TIMESTAMP": "unix_timestamp_val",
    "INT32_LIST": "int32_list_val",
    "INT64_LIST": "int64_list_val",
    "FLOAT_LIST": "float_list_val",
    "DOUBLE_LIST": "double_list_val",
    "STRING_LIST": "string_list_val",
}
LIST_KINDS = frozenset(k for k in FEATURE_TYPES if k.endswith("_LIST"))
MAX_IDENTIFIER = 63
# The join key Feast gives entityless views; its one value is "", which no text key may be, so it
# is keyed as a composite key is (the SHA-256 of '[""]').
DUMMY_JOIN_KEY = "__dummy_id"


def _valid_types(table: dict[str, str]) -> str:
    return ", ".join(FEAST_TYPE_NAMES.get(k, k) for k in table)


def _short(name: str) -> str:
    """``name`` if it fits PostgreSQL's 63 bytes, else a prefix and a hash of the whole."""
    if len(name.encode()) <= MAX_IDENTIFIER:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"{name[: MAX_IDENTIFIER - 13]}_{digest}"


@dataclass(frozen=True)
class JoinKeys:
    """The join keys of a feature view (sorted by name) with their Feast value types, and the
    pgfeatures entity that keys them."""

    names: tuple[str, ...]
    types: tuple[str, ...]  # ValueType names, e.g. "INT64"
    entity: Entity

    @property
    def composite(self) -> bool:
        """Keyed by the SHA-256 of ``composite_key_text`` (several join keys, or Feast's entityless key)."""
        return len(self.names) > 1 or self.names == (DUMMY_JOIN_KEY,)


def join_keys(view_name: str, columns: Iterable[tuple[str, str]], max_length: int = 256) -> JoinKeys:
    """The entity of a view whose join keys are ``columns`` ((name, ValueType name) pairs).

    Raises DefinitionError naming the view and the join key when a key type cannot be keyed on.
    """
    pairs = sorted(columns)
    if not pairs:
        raise DefinitionError(
            f"feature view {view_name!r} has no join key columns: declare each entity's join key in the view's schema"
        )
    for name, kind in pairs:
        if kind not in KEY_TYPES:
            raise DefinitionError(
                f"feature view {view_name!r}: join key {name!r} is of Feast type {FEAST_TYPE_NAMES.get(kind, kind)}, "
                f"which pgfeatures cannot key on (valid: {_valid_types(KEY_TYPES)})"
            )
    names = tuple(n for n, _ in pairs)
    types = tuple(t for _, t in pairs)
    try:
        if len(pairs) == 1 and names != (DUMMY_JOIN_KEY,):
            name, kind = pairs[0]
            key_type = KEY_TYPES[kind]
            entity = Entity(
                _short(name), key_type, _short(name), max_length, "sha256" if key_type == "bytea32" else None
            )
        else:
            joined = _short("__".join(names))
            entity = Entity(joined, "bytea32", joined, hash="sha256")
    except DefinitionError as exc:
        raise DefinitionError(f"feature view {view_name!r}: join keys {', '.join(names)}: {exc}") from None
    return JoinKeys(names, types, entity)


def ttl_seconds(view_name: str, ttl: timedelta | None) -> int | None:
    """A Feast ttl in whole seconds (None or 0: no limit). Raises DefinitionError for a fraction."""
    if ttl is None:
        return None
    total = ttl.total_seconds()
    if total == 0:
        return None
    if total < 0 or total != int(total):
        raise DefinitionError(
            f"feature view {view_name!r}: ttl {ttl} must be a whole, positive number of seconds "
            f"(pgfeatures compares ages in seconds)"
        )
    return int(total)


# Feast's vector_search_metric -> pgfeatures' embedding metric (Feast's Postgres store's names, any case).
VECTOR_METRICS = {"l2": "l2", "cosine": "cosine", "inner_product": "ip"}


def feature_of(view_name: str, name: str, kind: str, field: Any = None) -> Feature:
    """The pgfeatures feature of a Feast field: a vector field (``vector_index=True``, ``vector_length``,
    an Array(Float32 | Float64)) is an indexed ``embedding``. Raises DefinitionError naming the view and field."""
    if kind not in FEATURE_TYPES:
        raise DefinitionError(
            f"feature view {view_name!r}: field {name!r} is of Feast type {FEAST_TYPE_NAMES.get(kind, kind)}, "
            f"which pgfeatures cannot store (valid: {_valid_types(FEATURE_TYPES)})"
        )
    try:
        if field is not None and getattr(field, "vector_index", False):
            return Feature(name, _embedding(kind, field))
        return Feature(name, feature_type(FEATURE_TYPES[kind]))
    except DefinitionError as exc:
        raise DefinitionError(f"feature view {view_name!r}: field {name!r}: {exc}") from None


def _embedding(kind: str, field: Any) -> Any:
    if kind not in ("FLOAT_LIST", "DOUBLE_LIST"):
        raise DefinitionError(f"a vector index needs an Array(Float32) or Array(Float64), not {FEAST_TYPE_NAMES[kind]}")
    if not field.vector_length:
        raise DefinitionError("a vector index needs its vector_length (the embedding's dimension)")
    given = (field.vector_search_metric or "L2").lower()
    if given not in VECTOR_METRICS:
        raise DefinitionError(
            f"vector_search_metric {field.vector_search_metric!r} is not one pgvector's HNSW index serves here "
            f"(valid: L2, cosine, inner_product)"
        )
    return feature_type("embedding", dim=field.vector_length, index="hnsw", metric=VECTOR_METRICS[given])


@dataclass(frozen=True)
class ViewLayout:
    """How one Feast feature view is stored: its pgfeatures table and its join keys."""

    table: FeatureTable
    keys: JoinKeys
    feature_types: tuple[tuple[str, str], ...]  # (feature, ValueType name), the view's order


def view_layout(view: Any, max_length: int = 256) -> ViewLayout:
    """The pgfeatures table of a Feast FeatureView (or BatchFeatureView / StreamFeatureView).

    Raises DefinitionError naming the view and the field that does not fit.
    """
    name = view.name
    columns = [(c.name, c.dtype.to_value_type().name) for c in view.entity_columns]
    keys = join_keys(name, columns, max_length)
    features = tuple(feature_of(name, f.name, f.dtype.to_value_type().name, f) for f in view.features)
    try:
        table = FeatureTable(name, features, entity=keys.entity, ttl=ttl_seconds(name, view.ttl))
    except DefinitionError as exc:
        message = str(exc)
        raise DefinitionError(message if repr(name) in message else f"feature view {name!r}: {message}") from None
    return ViewLayout(table, keys, tuple((f.name, f.dtype.to_value_type().name) for f in view.features))


def service_of(service: Any, *, renamed_views: bool = False) -> FeatureService:
    """The pgfeatures service of a Feast FeatureService of plain feature views: its features, in its
    order. A service with ``precompute_online=True`` is a materialized pgfeatures service (serving rows
    kept in step by pgfeatures) that also lists each view's ``updated_at`` after the view's features:
    a Feast answer carries every view's event time, so the serving rows hold it too.

    ``renamed_views``: accept projections renamed with an alias (the Feast plugin names the answer's
    columns itself); ``import-feast`` refuses them, pgfeatures naming a service's features by table.
    Raises DefinitionError naming the service when it cannot be one (an on-demand view, a renamed
    projection, a name pgfeatures does not take).
    """
    refs: list[str] = []
    precompute = bool(getattr(service, "precompute_online", False))
    for projection in service.feature_view_projections:
        if projection.name_alias and not renamed_views:
            raise DefinitionError(
                f"feature service {service.name!r}: view {projection.name!r} is renamed "
                f"({projection.name_alias!r}), which pgfeatures services do not do"
            )
        refs.extend(f"{projection.name}.{f.name}" for f in projection.features)
        if precompute:
            refs.append(f"{projection.name}.{UPDATED_AT}")
    try:
        return FeatureService(
            service.name,
            tuple(dict.fromkeys(refs)),  # a view projected twice: its features once
            materialize=precompute,
            description=getattr(service, "description", None) or None,
        )
    except DefinitionError as exc:
        raise DefinitionError(f"feature service {service.name!r}: {exc}") from None


def registry_of(layouts: Sequence[ViewLayout], schema: str, services: Iterable[FeatureService] = ()) -> Registry:
    """The pgfeatures registry of some views (and services). Raises DefinitionError (e.g. two views
    keyed by the same join key of different types)."""
    entities: dict[str, Entity] = {}
    for layout in layouts:
        entity = layout.keys.entity
        known = entities.setdefault(entity.name, entity)
        if known != entity:
            raise DefinitionError(
                f"feature view {layout.table.name!r}: join keys {', '.join(layout.keys.names)} "
                f"are typed differently in another view ({known.key_type} vs {entity.key_type})"
            )
    return Registry.of([lay.table for lay in layouts], schema, entities=entities.values(), services=services)


def composite_key_text(values: Sequence[Any]) -> str:
    """The canonical text of a composite key: its values (join keys sorted by name) as a compact
    JSON array, integers as integers, strings as strings, bytes as hex. What a pgfeatures client
    passes as the natural id of a composite entity (pgfeatures hashes it with SHA-256)."""
    out: list[Any] = []
    for v in values:
        if isinstance(v, (bytes, bytearray)):
            out.append(bytes(v).hex())
        elif isinstance(v, bool) or not isinstance(v, (int, str)):
            raise KeyFormatError(f"a composite key part must be an integer, a string or bytes, got {v!r}")
        else:
            out.append(v)
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False)
