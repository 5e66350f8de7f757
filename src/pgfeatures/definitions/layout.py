"""The serving rows of a materialized feature service: which column holds which feature (pure).

A service declared ``materialize = true`` keeps, per entity it reads, one serving row per key::

    "<schema>"."_pgf_svc_<service>__<entity>" (
        <key column> <key type> PRIMARY KEY,
        r  real[],               -- every real feature of the entity's tables, in the service's order
        d  double precision[],   -- double, smallint, integer, boolean (exact in a double)
        i  bigint[],             -- bigint (exact only in an int8), timestamps (epoch microseconds)
        s  text[],               -- strings
        x0, x1, ...              -- one column per list or embedding (an array each: real[] for an embedding)
        ts bigint[]              -- per table: its row's updated_at in epoch microseconds, NULL where the key has no row
    )

so a read is one primary-key lookup per entity, and the row says, per table, whether the key was
present (and how old its row is: expiry is decided against the server's clock in the same
statement), missing or NULL, exactly as the flexible read does. Arrays that would always be empty
are left out.

**A layout is named by its fingerprint.** The fingerprint hashes everything a decoder depends on
(the service, the entity and its key, every feature's array and position, the tables' order, the
layout format), and the serving table's name ends with it: ``_pgf_svc_<service>__<entity>_<fp12>``.
A reader compiled for a layout reads the table of that name and nothing else, so a definition
change (a new layout, a new table) can never make a running reader decode rows it was not compiled
for: the old table is dropped when the new one is built, and the old reader's statement fails
(and falls back to the flexible read) instead of reading the new rows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from .entities import Entity
from .services import FeatureService
from .tables import Feature, FeatureTable

# Serving array per feature type: (column, element type of the array)
GROUPS = {
    "real": ("r", "real"),
    "double precision": ("d", "double precision"),
    "smallint": ("d", "double precision"),
    "integer": ("d", "double precision"),
    "boolean": ("d", "double precision"),
    "bigint": ("i", "bigint"),
    "timestamp with time zone": ("i", "bigint"),
}  # event time, as epoch microseconds
GROUP_ORDER = ("r", "d", "i", "s", "x")
COLUMNS = "x"  # not one array: a column per slot (x0, x1, ...), read back as one ROW()
ELEMENT_TYPES = {"r": "real", "d": "double precision", "i": "bigint", "s": "text"}
TS = "ts"
PREFIX = "_pgf_svc_"
# The serving row's format, beyond the slots: part of every fingerprint (and so of the serving table's
# name), so rows built by a version that lays them out otherwise are never read by this one (they are
# rebuilt: ``pgfeatures apply``). 1: tables named by service and entity, ts in epoch seconds; 2: named by
# fingerprint; 3: ts in epoch microseconds (event time is a timestamptz).
LAYOUT_VERSION = 3
SERVING_COLUMNS = frozenset({*GROUP_ORDER, TS})  # a key column may not take these names (nor x<n>)
MAX_IDENTIFIER = 63  # bytes: PostgreSQL truncates longer names silently


def group_of(feature: Feature) -> str:
    """The serving array a feature's values are kept in: ``x`` (a column of its own) for lists and embeddings."""
    if feature.type.kind == "string":
        return "s"
    if feature.type.kind in ("list", "embedding"):
        return COLUMNS
    return GROUPS[feature.type.name][0]


def column_type(feature: Feature) -> str:
    """The SQL type of a list's or an embedding's own serving column: the array it is read as."""
    type_ = feature.type
    if type_.kind == "embedding":
        return "real[]"
    assert type_.element is not None
    return "text[]" if type_.element.kind == "string" else f"{type_.element.name}[]"


@dataclass(frozen=True)
class Slot:
    """Where one feature lives in a serving row: array ``group`` (r, d, i), 0-based ``index``."""

    table: str
    feature: Feature
    group: str
    index: int


@dataclass(frozen=True)
class EntityLayout:
    """One entity's serving table: its tables (in the service's order, ``ts`` positions), every
    feature's slot, the arrays it has."""

    service: str
    entity: Entity
    table_name: str
    tables: tuple[FeatureTable, ...]
    slots: tuple[Slot, ...]
    groups: tuple[str, ...]  # the arrays present, in GROUP_ORDER
    fingerprint: str

    def element_type(self, group: str) -> str:
        return ELEMENT_TYPES[group]

    def size(self, group: str) -> int:
        return sum(1 for s in self.slots if s.group == group)

    def columns(self) -> tuple[tuple[str, str], ...]:
        """Every value column of the serving row (not the key, not ``ts``): ``(name, SQL type)``, the arrays
        then the lists' and embeddings' own columns (``x<slot>``)."""
        out = [(g, f"{ELEMENT_TYPES[g]}[]") for g in self.groups if g != COLUMNS]
        out += [(f"{COLUMNS}{s.index}", column_type(s.feature)) for s in self.slots if s.group == COLUMNS]
        return tuple(out)

    def table_slots(self, table: str) -> tuple[Slot, ...]:
        return tuple(s for s in self.slots if s.table == table)

    def ts_index(self, table: str) -> int:
        return next(i for i, t in enumerate(self.tables) if t.name == table)


def serving_table_name(service: str, entity: str, fingerprint: str) -> str:
    """``_pgf_svc_<service>__<entity>_<first 12 of the fingerprint>``, the readable part shortened so
    the whole fits PostgreSQL's 63 bytes (the fingerprint, which covers service and entity, keeps
    names of different layouts apart: services ``a__b``/``c`` and ``a``/``b__c`` get two tables)."""
    suffix = f"_{fingerprint[:12]}"
    room = MAX_IDENTIFIER - len(PREFIX) - len(suffix)
    return f"{PREFIX}{f'{service}__{entity}'[:room]}{suffix}"


def legacy_serving_table_name(service: str, entity: str) -> str:
    """The name versions before LAYOUT_VERSION 2 gave a serving table (found and dropped on rebuild)."""
    name = f"{PREFIX}{service}__{entity}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[:52]}_{digest}"


def service_layouts(
    service: FeatureService, items: tuple[tuple[FeatureTable, tuple[Feature, ...]], ...]
) -> tuple[EntityLayout, ...]:
    """The serving tables of ``service`` given its resolved ``items`` (``FeatureService.resolve``)."""
    by_entity: dict[str, list[tuple[FeatureTable, tuple[Feature, ...]]]] = {}
    entities: dict[str, Entity] = {}
    for table, features in items:
        by_entity.setdefault(table.entity.name, []).append((table, features))
        entities[table.entity.name] = table.entity
    out = []
    for name, parts in by_entity.items():
        counters = {g: 0 for g in GROUP_ORDER}
        slots = []
        for table, features in parts:
            for f in features:
                group = group_of(f)
                slots.append(Slot(table.name, f, group, counters[group]))
                counters[group] += 1
        groups = tuple(g for g in GROUP_ORDER if counters[g])
        entity = entities[name]
        shape = {
            "version": LAYOUT_VERSION,
            "service": service.name,
            "entity": [entity.name, entity.key_type, entity.column],
            "tables": [t.name for t, _ in parts],
            "slots": [[s.table, s.feature.name, s.feature.type.name, s.group, s.index] for s in slots],
        }
        fingerprint = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]
        out.append(
            EntityLayout(
                service.name,
                entity,
                serving_table_name(service.name, name, fingerprint),
                tuple(t for t, _ in parts),
                tuple(slots),
                groups,
                fingerprint,
            )
        )
    return tuple(out)
