"""Feast's write batches as Arrow tables for pgfeatures' bulk load (pure).

Feast hands ``online_write_batch`` a list of ``(EntityKeyProto, {feature: Value}, event time,
created time)``. ``arrow_batch`` turns it into one Arrow table of the view's pgfeatures table:
the key column (pgfeatures keys, see keys.py), a typed column per feature and ``updated_at`` (the
event time, a UTC timestamp in microseconds), sorted by event time so that of two rows of one key
the newest is the one kept. A value of another type than the view declares is refused, naming
the view, the entity and the feature; nothing of the batch is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from ..definitions import UPDATED_AT
from ..errors import FeatureValueError, KeyFormatError
from .keys import proto_key
from .mapping import FEAST_TYPE_NAMES, LIST_KINDS, PROTO_FIELDS, ViewLayout, composite_key_text

_ARROW_TYPES = {
    "FLOAT": pa.float32(),
    "DOUBLE": pa.float64(),
    "INT32": pa.int32(),
    "INT64": pa.int64(),
    "BOOL": pa.bool_(),
    "STRING": pa.string(),
    "UNIX_TIMESTAMP": pa.timestamp("s", tz="UTC"),  # Feast's unix_timestamp_val: whole epoch seconds
    "INT32_LIST": pa.list_(pa.int32()),
    "INT64_LIST": pa.list_(pa.int64()),
    "FLOAT_LIST": pa.list_(pa.float32()),
    "DOUBLE_LIST": pa.list_(pa.float64()),
    "STRING_LIST": pa.list_(pa.string()),
}
NULL_TIMESTAMP = -(2**63)  # Feast's NULL_TIMESTAMP_INT_VALUE (NaT as int64): a null unix_timestamp_val


def proto_python(kind: str, value: Any) -> Any:
    """The Python value of a Feast ``Value`` of type ``kind`` as the load takes it (a list's elements as
    a list, a timestamp as epoch seconds, None for Feast's null timestamp)."""
    field = value.WhichOneof("val")
    got = getattr(value, field)
    if kind in LIST_KINDS:
        return list(got.val)
    if kind == "UNIX_TIMESTAMP" and got == NULL_TIMESTAMP:
        return None
    return got


_KEY_TYPES = {"bigint": pa.int64(), "text": pa.string()}


def key_arrow_type(layout: ViewLayout) -> pa.DataType:
    """The Arrow type of the keys ``proto_key`` makes: int64 (bigint), string (text, and the
    canonical text of a composite key) or binary (a Bytes join key, hashed by the load)."""
    if layout.keys.composite:
        return pa.string()
    return _KEY_TYPES.get(layout.keys.entity.key_type, pa.binary())


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts


def event_time_column(stamps: Sequence[datetime]) -> pa.Array:
    """The event times as pgfeatures' ``updated_at`` (a timestamptz) takes them: UTC, in microseconds
    (a naive time is taken as UTC, as Feast does)."""
    return pa.array([_utc(t) for t in stamps], pa.timestamp("us", tz="UTC"))


def arrow_batch(layout: ViewLayout, data: Sequence[tuple[Any, dict[str, Any], datetime, datetime | None]]) -> pa.Table:
    """One Arrow table of Feast's write batch. Raises FeatureValueError / KeyFormatError naming the
    view, the entity and the feature."""
    view = layout.table.name
    rows = sorted(range(len(data)), key=lambda i: _utc(data[i][2]))
    keys: list[Any] = []
    for i in rows:
        try:
            keys.append(proto_key(layout.keys, data[i][0]))
        except KeyFormatError as exc:
            raise KeyFormatError(f"feature view {view!r}: {exc}") from None
    columns: dict[str, pa.Array] = {}
    key_column = layout.table.key_column
    if None in keys:
        raise KeyFormatError(
            f"feature view {view!r}: a row has no value for join key(s) {', '.join(layout.keys.names)}"
        )
    columns[key_column] = pa.array(keys, key_arrow_type(layout))
    for name, kind in layout.feature_types:
        expected = PROTO_FIELDS[kind]
        values: list[Any] = []
        for i, key in zip(rows, keys):
            value = data[i][1].get(name)
            field = None if value is None else value.WhichOneof("val")
            if field is None:
                values.append(None)
            elif field == expected:
                values.append(proto_python(kind, value))
            else:
                raise FeatureValueError(
                    f"feature view {view!r}, entity {key!r}, feature {name!r}: a {field} value where "
                    f"{FEAST_TYPE_NAMES[kind]} is declared"
                )
        columns[name] = pa.array(values, _ARROW_TYPES[kind])
    columns[UPDATED_AT] = event_time_column([data[i][2] for i in rows])
    return pa.table(columns)


def arrow_table(layout: ViewLayout, table: pa.Table, timestamp_field: str) -> pa.Table:
    """The offline store's Arrow table of a view (join keys, features, its timestamp field) as the
    view's pgfeatures table, sorted by event time (the newest of a key is the one kept). Raises
    FeatureValueError naming the view and the feature when a column cannot be the declared type
    without loss, KeyFormatError for a missing or null join key."""
    import pyarrow.compute as pc

    view = layout.table.name
    names = set(table.column_names)
    for needed in (*layout.keys.names, timestamp_field, *(n for n, _ in layout.feature_types)):
        if needed not in names:
            raise KeyFormatError(f"feature view {view!r}: the offline data has no column {needed!r}")
    order = pc.sort_indices(table, sort_keys=[(timestamp_field, "ascending")])
    table = table.take(order)
    columns: dict[str, pa.Array] = {}
    key_arrays = [table.column(n).combine_chunks() for n in layout.keys.names]
    for name, arr in zip(layout.keys.names, key_arrays):
        if arr.null_count:
            raise KeyFormatError(f"feature view {view!r}: join key {name!r} is null in {arr.null_count} row(s)")
    if layout.keys.composite:
        parts = [a.to_pylist() for a in key_arrays]
        keys: Any = pa.array([composite_key_text(row) for row in zip(*parts)], pa.string())
    else:
        try:
            keys = key_arrays[0].cast(key_arrow_type(layout))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise KeyFormatError(f"feature view {view!r}: join key {layout.keys.names[0]!r}: {exc}") from None
    columns[layout.table.key_column] = keys
    for name, kind in layout.feature_types:
        try:  # a timestamp to whole seconds, as Feast stores it (a naive one is UTC, as in Feast)
            columns[name] = table.column(name).cast(_ARROW_TYPES[kind], safe=kind != "UNIX_TIMESTAMP")
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise FeatureValueError(
                f"feature view {view!r}, feature {name!r}: {table.column(name).type} values where "
                f"{FEAST_TYPE_NAMES[kind]} is declared ({exc})"
            ) from None
    columns[UPDATED_AT] = table.column(timestamp_field).cast(pa.timestamp("us", tz="UTC"))
    return pa.table(columns)
