"""A Feast online request compiled against pgfeatures tables (pure: no I/O).

Feast groups a request by feature view (``grouped_refs``: each view with the features asked of
it). ``plan_request`` turns that into the pgfeatures reads that answer it: normally one batch
reader over every view (one statement, one round-trip for every view and every entity row).
Views whose join keys are read from different request columns (a projection's
``join_key_map``) for the same pgfeatures entity need their own key array, so they go to a
second reader. ``ReadGroup.keys`` binds the request's columns to pgfeatures keys, and
``ReadGroup.columns`` turns the decoded rows into the answer's columns with Feast's statuses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..definitions import UPDATED_AT
from ..reader import EXPIRED, PRESENT, BatchReader, FeatureResult
from .keys import entity_key, key_part
from .mapping import JoinKeys, ViewLayout
from .response import NOT_FOUND, OUTSIDE_MAX_AGE, Column
from .response import PRESENT as FEAST_PRESENT

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def event_time(value: datetime) -> tuple[int, int]:
    """(epoch seconds, nanoseconds) of a stored ``updated_at`` (a timestamptz), exactly."""
    delta = value - _EPOCH
    return delta.days * 86400 + delta.seconds, delta.microseconds * 1000


@dataclass
class Output:
    """One answer column: a feature of a view, under the name Feast gives it."""

    name: str
    feature: str
    kind: str  # Feast ValueType name
    view: str = ""  # the view's name in the answer (its projection's alias, if any)


@dataclass
class TableRead:
    """One view read: its table, whether it has a ttl, its answer columns."""

    table: str
    has_ttl: bool
    outputs: list[Output]


@dataclass
class EntityBinding:
    """A pgfeatures entity of a read and the request columns its join keys come from."""

    entity: str
    keys: JoinKeys
    columns: tuple[str, ...]  # request column per join key (keys.names order)


@dataclass
class ReadGroup:
    """Views read by one statement, and how the request binds to it."""

    tables: list[TableRead] = field(default_factory=list)
    entities: dict[str, EntityBinding] = field(default_factory=dict)
    reader: BatchReader[FeatureResult] | None = None

    @property
    def features(self) -> dict[str, list[str]]:
        """``{table: [features..., updated_at]}``: what the batch reader reads."""
        return {t.table: [*dict.fromkeys(o.feature for o in t.outputs), UPDATED_AT] for t in self.tables}

    def keys(self, request: Mapping[str, Sequence[Any]], n: int) -> tuple[dict[str, list[Any]], list[int] | None]:
        """``{entity: [key per row]}`` for the rows whose keys are all given, and those rows' indices
        (None: every row). A row with a None key part matches nothing, as in Feast's stores.
        Raises KeyFormatError naming a join key given a value of the wrong type."""
        per_entity: dict[str, list[Any]] = {}
        for binding in self.entities.values():
            parts = [
                [key_part(name, kind, v) for v in request[col]]
                for name, kind, col in zip(binding.keys.names, binding.keys.types, binding.columns)
            ]
            if len(parts) == 1 and not binding.keys.composite:
                per_entity[binding.entity] = parts[0]
            else:
                per_entity[binding.entity] = [entity_key(binding.keys, row) for row in zip(*parts)]
        if not any(None in keys for keys in per_entity.values()):
            return per_entity, None
        rows = [i for i in range(n) if all(keys[i] is not None for keys in per_entity.values())]
        return {e: [keys[i] for i in rows] for e, keys in per_entity.items()}, rows

    def columns(self, results: Sequence[FeatureResult], rows: list[int] | None, n: int) -> dict[str, Column]:
        """The answer's columns from the decoded rows (``rows``: the request rows they belong to)."""
        if rows is not None:  # rows without a full key were not read: not found
            scattered: list[FeatureResult | None] = [None] * n
            for i, res in zip(rows, results):
                scattered[i] = res
            full: Sequence[FeatureResult | None] = scattered
        else:
            full = results
        out: dict[str, Column] = {}
        for read in self.tables:
            t = read.table
            values = [None if res is None else res[t] for res in full]
            if read.has_ttl:
                statuses = [NOT_FOUND if res is None else _STATUS[res.status[t]] for res in full]
            else:
                statuses = [NOT_FOUND if v is None else FEAST_PRESENT for v in values]
            times = [(0, 0) if v is None else event_time(v[UPDATED_AT]) for v in values]
            seconds = [s for s, _ in times]
            nanos = [ns for _, ns in times] if any(ns for _, ns in times) else None
            for o in read.outputs:
                f = o.feature
                out[o.name] = Column(
                    o.name, o.kind, [None if v is None else v[f] for v in values], statuses, seconds, nanos
                )
        return out


_STATUS = {PRESENT: FEAST_PRESENT, EXPIRED: OUTSIDE_MAX_AGE, "missing": NOT_FOUND}


@dataclass
class RequestPlan:
    """Every read a request needs, the answer's columns in Feast's order, and their types."""

    groups: list[ReadGroup]
    order: list[str]  # feature columns, as Feast orders them (views in request order, features as asked)
    join_keys: dict[str, str]  # request column -> Feast ValueType name, for every join key read
    feature_types: dict[str, Any] = field(default_factory=dict)


def plan_request(
    grouped_refs: Sequence[tuple[Any, Sequence[str]]], layouts: Mapping[str, ViewLayout], full_feature_names: bool
) -> RequestPlan:
    """The reads of a request. ``layouts``: the ViewLayout of every view in ``grouped_refs``, by name."""
    groups: list[ReadGroup] = []
    order: list[str] = []
    join_keys: dict[str, str] = {}
    for view, requested in grouped_refs:
        layout = layouts[view.name]
        prefix = view.projection.name_to_use()
        types = dict(layout.feature_types)
        outputs = [Output(f"{prefix}__{f}" if full_feature_names else f, f, types[f], prefix) for f in requested]
        order.extend(o.name for o in outputs)
        mapping = getattr(view.projection, "join_key_map", None) or {}
        columns = tuple(mapping.get(k, k) for k in layout.keys.names)
        for col, kind in zip(columns, layout.keys.types):
            join_keys.setdefault(col, kind)
        binding = EntityBinding(layout.keys.entity.name, layout.keys, columns)
        group = next((g for g in groups if g.entities.get(binding.entity, binding).columns == columns), None)
        if group is None:
            group = ReadGroup()
            groups.append(group)
        group.entities[binding.entity] = binding
        existing = next((t for t in group.tables if t.table == layout.table.name), None)
        if existing is not None:  # the same view twice (two projections): one read, more columns
            existing.outputs.extend(outputs)
        else:
            group.tables.append(TableRead(layout.table.name, layout.table.ttl is not None, outputs))
    return RequestPlan(groups, order, join_keys)
