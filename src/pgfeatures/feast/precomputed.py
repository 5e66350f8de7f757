"""Feast's precomputed feature vectors, built from a pgfeatures materialized service's serving rows (pure).

Feast 0.67 serves a feature service with ``precompute_online=True`` from one serialized
``PrecomputedFeatureVector`` per entity, written by ``write_precomputed_vector`` when Feast recomputes
them in batch (after a materialization or a push) and read back by ``read_precomputed_vectors``. On
pgfeatures the service is a materialized service whose serving rows pgfeatures' triggers keep in step
with every write, in the write's own transaction: there is nothing to recompute and nothing to write.
``read_precomputed_vectors`` answers Feast's vectors from those rows (one statement for every key), and
the plugin's ``get_online_features`` reads them directly, without vectors.

What the vector cannot carry, and so why the plugin's own read does not go through it: Feast's
format has no per-view status. A view with no row for the entity, or an expired one, is an empty
value without an event time there, which Feast's reader of vectors (``_try_precomputed_fast_path``)
then reports ``PRESENT``; an entity with no row in any view has no vector (``None``), which that
reader turns into an error for the whole request; and every feature gets the vector's time
(``precomputed_at``), not its view's event time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from feast.protos.feast.core.PrecomputedFeatureVector_pb2 import FeatureViewTimestamp, PrecomputedFeatureVector
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from google.protobuf.timestamp_pb2 import Timestamp

from ..errors import KeyFormatError
from .keys import proto_value
from .plan import RequestPlan
from .response import NOT_FOUND, PRESENT, Column, feast_value


def key_columns(service: str, plan: RequestPlan, entity_keys: Sequence[Any]) -> dict[str, list[Any]]:
    """The request columns (join key -> values) of Feast's ``EntityKeyProto`` per entity. Raises
    KeyFormatError naming the service when the keys lack a join key it reads: Feast's hook passes the
    join keys of the service's first view only, so a service over several entities cannot be read."""
    columns: dict[str, list[Any]] = {name: [] for name in plan.join_keys}
    for key in entity_keys:
        given = dict(zip(key.join_keys, key.entity_values))
        missing = [name for name in plan.join_keys if name not in given]
        if missing:
            raise KeyFormatError(
                f"feature service {service!r} reads join keys {', '.join(plan.join_keys)}; Feast's precomputed-vector "
                f"read gives one entity key per row, of its first view's join keys ({', '.join(given) or 'none'}), "
                f"without {', '.join(missing)}: read the service with get_online_features"
            )
        for name in plan.join_keys:
            columns[name].append(proto_value(given[name]))
    return columns


def feature_names(service: Any) -> list[str]:
    """A Feast service's features as its vectors name them (``view__feature``), in the service's order (Feast's
    own precompute writes them so; the order of a request's columns can differ between processes)."""
    return [f"{p.name_to_use()}__{f.name}" for p in service.feature_view_projections for f in p.features]


def vectors(
    plan: RequestPlan, found: Mapping[str, Column], n: int, now: Timestamp, names: Sequence[str]
) -> list[bytes | None]:
    """One serialized ``PrecomputedFeatureVector`` per request row (``found``: the answer's columns, named
    ``view__feature``; ``names``: their order in the vector), None for a row with no row in any view."""
    by_name = {o.name: o for group in plan.groups for table in group.tables for o in table.outputs}
    outputs = [by_name[name] for name in dict.fromkeys(names)]
    out: list[bytes | None] = []
    empty = ValueProto()
    for i in range(n):
        if all(found[o.name].statuses[i] == NOT_FOUND for o in outputs):
            out.append(None)
            continue
        values = []
        stamps: dict[str, FeatureViewTimestamp] = {}
        for o in outputs:
            column = found[o.name]
            value = column.values[i]
            values.append(empty if value is None else feast_value(o.kind, value))
            if column.statuses[i] == PRESENT and o.view not in stamps:
                nanos = column.nanos[i] if column.nanos else 0
                stamps[o.view] = FeatureViewTimestamp(
                    feature_view_name=o.view, event_timestamp=Timestamp(seconds=column.seconds[i], nanos=nanos)
                )
        vector = PrecomputedFeatureVector(
            feature_names=[o.name for o in outputs], values=values, fv_timestamps=stamps.values(), precomputed_at=now
        )
        out.append(vector.SerializeToString())
    return out
