"""Feast's ``OnlineResponse`` built from columns of Python values.

Feast's stores hand back one protobuf ``Value`` per feature per entity, which ``to_dict`` then
converts back to Python one by one. pgfeatures decodes the statement's row into Python values
already, so ``PgfeaturesOnlineResponse`` keeps them as columns: ``to_dict`` (and ``to_df``,
``to_arrow``, ``to_tensor``, built on it) copies lists, and the protobuf form (``.proto``: what
``feast serve`` serializes) is built only when asked for, with the same names, values, statuses
and event timestamps Feast's own response would carry.
"""

from __future__ import annotations

from array import array
from datetime import UTC, datetime
from typing import Any

from feast.online_response import TIMESTAMP_POSTFIX, OnlineResponse
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus, GetOnlineFeaturesResponse
from feast.protos.feast.types.Value_pb2 import DoubleList, FloatList, Int32List, Int64List, StringList
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from .mapping import LIST_KINDS, PROTO_FIELDS

_LISTS = {
    "INT32_LIST": Int32List,
    "INT64_LIST": Int64List,
    "FLOAT_LIST": FloatList,
    "DOUBLE_LIST": DoubleList,
    "STRING_LIST": StringList,
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def feast_value(kind: str, value: Any) -> ValueProto:
    """A stored value (not None) as the Feast ``Value`` of type ``kind``: a list in its list message, a
    timestamp as whole epoch seconds (``unix_timestamp_val``, truncated as Feast's own conversion does)."""
    if kind in LIST_KINDS:
        return ValueProto(**{PROTO_FIELDS[kind]: _LISTS[kind](val=value)})
    if kind == "UNIX_TIMESTAMP":
        return ValueProto(unix_timestamp_val=int((value - _EPOCH).total_seconds()))
    return ValueProto(**{PROTO_FIELDS[kind]: value})


PRESENT = FieldStatus.PRESENT
NOT_FOUND = FieldStatus.NOT_FOUND
OUTSIDE_MAX_AGE = FieldStatus.OUTSIDE_MAX_AGE


class Column:
    """One column of the answer: its values, their Feast type, per-row statuses and event times
    (epoch seconds and nanoseconds; None for a row that has none)."""

    __slots__ = ("name", "kind", "values", "statuses", "seconds", "nanos")

    def __init__(
        self,
        name: str,
        kind: str,
        values: list[Any],
        statuses: list[Any],
        seconds: list[int],
        nanos: list[int] | None = None,
    ):
        self.name = name
        self.kind = kind
        self.values = values
        self.statuses = statuses
        self.seconds = seconds
        self.nanos = nanos

    def feature_vector(self) -> GetOnlineFeaturesResponse.FeatureVector:
        empty = ValueProto()
        kind = self.kind
        values = [empty if v is None else feast_value(kind, v) for v in self.values]
        stamps: dict[tuple[int, int], Timestamp] = {}
        nanos = self.nanos or [0] * len(self.seconds)
        timestamps = []
        for s, n in zip(self.seconds, nanos):
            ts = stamps.get((s, n))
            if ts is None:
                ts = stamps[(s, n)] = Timestamp(seconds=s, nanos=n)
            timestamps.append(ts)
        return GetOnlineFeaturesResponse.FeatureVector(
            values=values, statuses=self.statuses, event_timestamps=timestamps
        )


def append_columns(proto: GetOnlineFeaturesResponse, columns: list[Column]) -> None:
    """Append columns to a Feast response proto, as Feast's own stores fill it."""
    for column in columns:
        proto.metadata.feature_names.val.append(column.name)
        proto.results.append(column.feature_vector())


class PgfeaturesOnlineResponse(OnlineResponse):
    """An ``OnlineResponse`` whose values are held as Python columns; ``proto`` is built on first use."""

    def __init__(self, columns: list[Column], feature_types: dict[str, ValueType] | None = None):
        # OnlineResponse.__init__ takes a proto; this response builds it lazily instead.
        self._columns = columns
        self._feature_types = feature_types or {}
        self._proto: GetOnlineFeaturesResponse | None = None
        self._proto_given = False

    @property
    def proto(self) -> GetOnlineFeaturesResponse:
        if self._proto is None:
            proto = GetOnlineFeaturesResponse(results=[])
            append_columns(proto, self._columns)
            self._proto = proto
        return self._proto

    @proto.setter
    def proto(self, value: GetOnlineFeaturesResponse) -> None:
        self._proto = value
        self._proto_given = True

    def to_dict(self, include_event_timestamps: bool = False) -> dict[str, Any]:
        if self._proto_given:  # replaced through .proto: Feast's own conversion of it
            return super().to_dict(include_event_timestamps)
        out: dict[str, Any] = {}
        for column in self._columns:
            if column.kind in LIST_KINDS:  # an embedding reads back as array("f"); Feast's answer holds lists
                out[column.name] = [v.tolist() if isinstance(v, array) else v for v in column.values]
            else:
                out[column.name] = list(column.values)
            if include_event_timestamps:
                out[column.name + TIMESTAMP_POSTFIX] = list(column.seconds)
        return out
