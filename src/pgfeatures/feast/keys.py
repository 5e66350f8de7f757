"""Feast join-key values as pgfeatures keys, and Feast values as Python values (pure).

Feast hands keys to a store two ways: as the caller's Python values (``get_online_features``'s
entity rows) and as protobuf ``Value``s (``EntityKeyProto`` on writes, ``online_read``). Both
become the same pgfeatures key: an int for a bigint entity, a str for a text entity, the bytes
of a Bytes key or the canonical text of a composite key (both hashed by pgfeatures with SHA-256).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

from ..errors import KeyFormatError
from .mapping import PROTO_FIELDS, JoinKeys, composite_key_text

_ACCEPTS = {"INT64": "an integer", "INT32": "an integer", "STRING": "a string", "BYTES": "bytes"}


def key_part(join_key: str, kind: str, value: Any) -> Any:
    """One join key's value as Python (int, str or bytes); None stays None (a key that matches nothing).

    Raises KeyFormatError naming the join key and what it takes.
    """
    if value is None:
        return None
    if kind in ("INT64", "INT32"):
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and type(value).__name__ != "bool_":
            return int(value)
    elif kind == "STRING":
        if isinstance(value, str):
            return value
    elif kind == "BYTES":
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
    raise KeyFormatError(f"join key {join_key!r} takes {_ACCEPTS.get(kind, kind)}, got {value!r}")


def entity_key(keys: JoinKeys, parts: Sequence[Any]) -> Any:
    """The pgfeatures key of one row from its join keys' Python values (in ``keys.names`` order),
    or None when a part is None (such a row matches nothing, as in Feast's stores)."""
    if any(p is None for p in parts):
        return None
    if keys.composite:
        return composite_key_text(parts)
    return parts[0]


def proto_value(value: Any) -> Any:
    """The Python value of a protobuf ``Value`` of a storable type (None when unset)."""
    field = value.WhichOneof("val")
    return None if field is None else getattr(value, field)


def proto_key(keys: JoinKeys, entity_key_proto: Any) -> Any:
    """The pgfeatures key of a Feast ``EntityKeyProto``. Raises KeyFormatError naming a missing or
    mistyped join key."""
    given = dict(zip(entity_key_proto.join_keys, entity_key_proto.entity_values))
    parts = []
    for name, kind in zip(keys.names, keys.types):
        if name not in given:
            raise KeyFormatError(
                f"entity key has join keys {', '.join(given) or '(none)'}; {', '.join(keys.names)} expected"
            )
        value = given[name]
        field = value.WhichOneof("val")
        if field is not None and field != PROTO_FIELDS[kind]:
            # Feast sends Int32 join keys as int32_val and Int64 as int64_val: both are integers.
            if not (kind in ("INT64", "INT32") and field in ("int64_val", "int32_val")):
                raise KeyFormatError(f"join key {name!r} takes {_ACCEPTS.get(kind, kind)}, got a {field}")
        parts.append(None if field is None else getattr(value, field))
    return entity_key(keys, parts)


def entity_key_proto(keys: JoinKeys, key: Any) -> Any:
    """The Feast ``EntityKeyProto`` of a stored key of a view with one join key (a row found by a search);
    None for a view keyed by the hash of several (the hash cannot be turned back into its join keys)."""
    if keys.composite:
        return None
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    kind = keys.types[0]
    return EntityKey(join_keys=[keys.names[0]], entity_values=[Value(**{PROTO_FIELDS[kind]: key})])
