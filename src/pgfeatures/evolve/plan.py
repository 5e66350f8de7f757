"""What differs between the definitions and the database, as an ordered list of changes (pure).

``make_plan`` compares a Registry with what the database holds (``Live``: the schema's tables and
their columns, the serving rows of materialized services, the definitions last applied) and gives
the changes ``pgfeatures apply`` would make, each with its SQL and a sentence:

- **additive, online** (always applied): the schema, tables, feature columns and covering indexes
  that are missing; materialized services to build or rebuild (their rows built beside the old
  ones, switched at COMMIT); serving rows of services no longer materialized, dropped;
- **destructive** (only with ``allow_destructive``): columns that exist only in the database
  dropped, columns of another type altered, tables named in ``drop_tables`` dropped;
- **notes** (nothing to do in the database): a ttl, default or version that changed since the
  definitions were last applied (they take effect when servers reload), columns and tables that
  exist only in the database and are kept, serving rows of services of other definition files.

Every SQL statement is built with psycopg.sql from the definitions and catalog names.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from ..definitions import UPDATED_AT, FeatureTable, Registry
from ..materialize.state import BUILT, ServingCatalog
from ..schema import (
    LEGACY_EVENT_TIME,
    column_definitions,
    covering_index_name,
    covering_index_sql,
    expected_columns,
    freshness_index_name,
    freshness_index_sql,
    migrate_event_time_sql,
    qualified,
    table_ddl,
    vector_index_name,
    vector_index_sql,
)

ADDITIVE, DESTRUCTIVE, NOTE = "additive", "destructive", "note"


@dataclass(frozen=True)
class LiveTable:
    """A table of the schema as the catalog has it."""

    name: str
    columns: dict[str, str]  # name -> format_type, in column order
    primary_key: tuple[str, ...] = ()
    indexes: tuple[str, ...] = ()


@dataclass
class Live:
    """What the database holds for a registry's schema (see ``evolve/live_async.py``)."""

    schema_exists: bool = False
    tables: dict[str, LiveTable] = field(default_factory=dict)
    serving: ServingCatalog = field(default_factory=ServingCatalog)
    applied: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (kind, name) -> spec


@dataclass(frozen=True)
class Change:
    """One change: ``kind`` (additive, destructive, note), ``action`` (create table, add column, ...),
    the object it is about, what it does in words, and its SQL (empty for notes and for builds, which
    ``apply`` runs through materialize)."""

    kind: str
    action: str
    subject: str
    prose: str
    ddl: tuple[sql.Composed, ...] = ()

    @property
    def statements(self) -> tuple[str, ...]:
        return tuple(s.as_string(None) for s in self.ddl)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "action": self.action,
            "subject": self.subject,
            "prose": self.prose,
            "sql": list(self.statements),
        }


@dataclass
class Plan:
    """The changes, in the order ``apply`` makes them; ``build``: materialized services to (re)build;
    ``added``: (table, feature) columns added by this plan (NULL in every row when a build reads them);
    ``drop_serving``: services whose serving rows are dropped."""

    changes: list[Change] = field(default_factory=list)
    build: list[str] = field(default_factory=list)
    added: set[tuple[str, str]] = field(default_factory=set)
    drop_serving: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)  # destructive changes left out: pass allow_destructive

    @property
    def additive(self) -> list[Change]:
        return [c for c in self.changes if c.kind == ADDITIVE]

    @property
    def destructive(self) -> list[Change]:
        return [c for c in self.changes if c.kind == DESTRUCTIVE]

    @property
    def notes(self) -> list[Change]:
        return [c for c in self.changes if c.kind == NOTE]

    @property
    def empty(self) -> bool:
        """Nothing to change in the database."""
        return not any(c.kind != NOTE for c in self.changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "changes": [c.to_dict() for c in self.changes],
            "build": self.build,
            "drop_serving": self.drop_serving,
            "blocked": self.blocked,
            "empty": self.empty,
        }


def spec_of(registry: Registry) -> dict[tuple[str, str], dict[str, Any]]:
    """What ``apply`` records of the definitions: each table's and service's TOML form."""
    out: dict[tuple[str, str], dict[str, Any]] = {("table", t.name): t.to_dict() for t in registry.tables.values()}
    out.update({("service", s.name): s.to_dict() for s in registry.services.values()})
    return out


def make_plan(
    registry: Registry,
    live: Live,
    *,
    allow_destructive: bool = False,
    drop_tables: Collection[str] = (),
    drop_services: Collection[str] = (),
) -> Plan:
    """The changes that make the database match ``registry`` (see the module docstring)."""
    plan = Plan()
    schema = registry.schema
    add = plan.changes.append
    if not live.schema_exists:
        add(
            Change(
                ADDITIVE,
                "create schema",
                schema,
                f"create schema {schema}",
                ((sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))),),
            )
        )
    for table in registry.tables.values():
        found = live.tables.get(table.name)
        if found is None:
            add(
                Change(
                    ADDITIVE,
                    "create table",
                    table.name,
                    f"create table {table.name} ({len(table.features)} feature(s), key {table.key_column})",
                    tuple(table_ddl(schema, table)),
                )
            )
            continue
        _table_changes(plan, schema, table, found, allow_destructive)
    for name in sorted(set(live.tables) - set(registry.tables)):
        if name in drop_tables:
            change = Change(
                DESTRUCTIVE,
                "drop table",
                name,
                f"drop table {name} (not in the definitions)",
                ((sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, name))),),
            )
            _destructive(plan, change, allow_destructive)
        else:
            add(
                Change(
                    NOTE,
                    "table kept",
                    name,
                    f"table {name} is in schema {schema} but not in the definitions: kept "
                    "(drop it with --drop-table, which needs --allow-destructive)",
                )
            )
    unknown = sorted(set(drop_tables) - set(live.tables) - set(registry.tables))
    for name in unknown:
        add(Change(NOTE, "no such table", name, f"--drop-table {name}: there is no such table in schema {schema}"))
    for name in sorted(set(drop_tables) & set(registry.tables)):
        add(Change(NOTE, "table defined", name, f"--drop-table {name}: the definitions still declare it; not dropped"))
    _service_changes(plan, registry, live, drop_services)
    _spec_notes(plan, registry, live)
    return plan


def _destructive(plan: Plan, change: Change, allowed: bool) -> None:
    if allowed:
        plan.changes.append(change)
    else:
        plan.blocked.append(change.prose)
        plan.changes.append(
            Change(
                NOTE,
                change.action + " (needs --allow-destructive)",
                change.subject,
                f"{change.prose}: left out; pass --allow-destructive to make it",
                change.ddl,
            )
        )


def _table_changes(plan: Plan, schema: str, table: FeatureTable, found: LiveTable, allow_destructive: bool) -> None:
    expected = expected_columns(table)
    definitions = column_definitions(table)
    accepted = {f.name: f.type.sql_names() for f in table.features}
    strings = {f.name for f in table.features if f.type.kind == "string"}
    ident = qualified(schema, table)

    def indexed(column: str) -> tuple[sql.Composed, ...]:
        """A new embedding column's nearest-neighbour index, made with it (instant: no row has a value yet)."""
        feature = table.feature(column) if column != UPDATED_AT else None
        return (vector_index_sql(schema, table, feature),) if feature and feature.type.index else ()

    for column, type_name in expected.items():
        if column == table.key_column:
            if column not in found.columns:
                plan.changes.append(
                    Change(
                        NOTE,
                        "key column missing",
                        table.name,
                        f"table {table.name} has no key column {column}: point the entity's "
                        "key_column at the table's key, or recreate the table",
                    )
                )
            continue
        if column not in found.columns:
            plan.changes.append(
                Change(
                    ADDITIVE,
                    "add column",
                    f"{table.name}.{column}",
                    f"add column {column} ({type_name}) to {table.name} (no rewrite: existing rows "
                    "read it as NULL, or its default)"
                    if column != UPDATED_AT
                    else f"add column {UPDATED_AT} to {table.name}",
                    (sql.SQL("ALTER TABLE {} ADD COLUMN {}").format(ident, definitions[column]), *indexed(column)),
                )
            )
            plan.added.add((table.name, column))
        elif column == UPDATED_AT and found.columns[column] == LEGACY_EVENT_TIME:
            plan.changes.append(
                Change(
                    ADDITIVE,
                    "migrate event time",
                    f"{table.name}.{column}",
                    f"migrate {table.name}.{UPDATED_AT} from integer epoch seconds to timestamptz, "
                    "values kept (rewrites the table under an exclusive lock: its readers and writers "
                    "wait for it, and the materialized services reading it are rebuilt)",
                    tuple(migrate_event_time_sql(schema, table)),
                )
            )
        elif found.columns[column] not in accepted.get(column, (type_name,)):
            # A string is retyped without a cast: the column's assignment refuses a longer value (the
            # statement fails, nothing changes) where an explicit cast to varchar(n) would truncate it.
            using = (
                sql.SQL("")
                if column in strings
                else sql.SQL(" USING {}::{}").format(sql.Identifier(column), sql.SQL(type_name))
            )
            change = Change(
                DESTRUCTIVE,
                "retype column",
                f"{table.name}.{column}",
                f"column {table.name}.{column} is {found.columns[column]}, the definition says {type_name}: "
                "alter its type (rewrites the table under an exclusive lock; "
                + (
                    "no cast: a value longer than the new bound fails the apply, nothing changes)"
                    if column in strings
                    else "values converted by a cast)"
                ),
                (
                    (
                        sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {}{}").format(
                            ident, sql.Identifier(column), sql.SQL(type_name), using
                        )
                    ),
                ),
            )
            _destructive(plan, change, allow_destructive)
    for column in found.columns:
        if column in expected:
            continue
        change = Change(
            DESTRUCTIVE,
            "drop column",
            f"{table.name}.{column}",
            f"column {table.name}.{column} ({found.columns[column]}) is not in the definitions: drop it",
            ((sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(ident, sql.Identifier(column))),),
        )
        _destructive(plan, change, allow_destructive)
    migrating = found.columns.get(UPDATED_AT) == LEGACY_EVENT_TIME  # the migration creates the index itself
    if freshness_index_name(table) not in found.indexes and UPDATED_AT in found.columns and not migrating:
        plan.changes.append(
            Change(
                ADDITIVE,
                "create index",
                freshness_index_name(table),
                f"create the index on {table.name}.{UPDATED_AT} (the age of the newest row without a "
                "scan; writers of the table wait while it builds, readers do not)",
                (freshness_index_sql(schema, table),),
            )
        )
    for feature in table.features:
        if feature.name not in found.columns:  # built with its column (indexed)
            continue
        if feature.type.index is not None and vector_index_name(table, feature) not in found.indexes:
            plan.changes.append(
                Change(
                    ADDITIVE,
                    "create index",
                    vector_index_name(table, feature),
                    f"create the {feature.type.index} index of {table.name}.{feature.name} ({feature.type.metric}; "
                    "writers of the table wait while it builds, readers do not)",
                    (vector_index_sql(schema, table, feature),),
                )
            )
    if table.covering_index and covering_index_name(table) not in found.indexes:
        plan.changes.append(
            Change(
                ADDITIVE,
                "create index",
                covering_index_name(table),
                f"create the covering index of {table.name} (writers of the table wait while it "
                "builds; readers do not)",
                ((covering_index_sql(schema, table)),),
            )
        )


def _service_changes(plan: Plan, registry: Registry, live: Live, drop_services: Collection[str]) -> None:
    for name, service in registry.services.items():
        layouts = registry.layouts(name) if service.materialize else ()
        owned = live.serving.owned(
            name, [layout.entity.name for layout in layouts] or [t.entity.name for t, _ in service.resolve(registry)]
        )
        if not service.materialize:
            if owned:
                plan.drop_serving.append(name)
                plan.changes.append(
                    Change(
                        ADDITIVE,
                        "drop serving rows",
                        name,
                        f"service {name} is no longer materialized: drop its serving rows "
                        f"({', '.join(t.name for t in owned)}) and their triggers",
                    )
                )
            continue
        states = [live.serving.state(layout) for layout in layouts]
        changed = any(
            c.subject.partition(".")[0] in {t.name for layout in layouts for t in layout.tables}
            for c in plan.changes
            if c.action in ("add column", "retype column", "drop column", "create table", "migrate event time")
        )
        if all(s.state == BUILT for s in states) and not changed:
            continue
        reasons = sorted({s.reason for s in states if s.state != BUILT})
        action = "rebuild service" if owned else "build service"
        why = "; ".join(reasons) or "a table it reads changes"
        plan.build.append(name)
        plan.changes.append(
            Change(
                ADDITIVE,
                action,
                name,
                f"{action.split()[0]} the serving rows of {name} ({why}): "
                "built beside the current ones, switched at COMMIT (readers never wait; writers of "
                "its tables wait while it builds)",
            )
        )
    own = set(registry.services)
    others = sorted(
        {
            t.record.get("service", "?")
            for t in live.serving.tables.values()
            if not t.legacy and t.record.get("service") not in own
        }
    )
    for name in others:
        if name in drop_services:
            plan.drop_serving.append(name)
            plan.changes.append(
                Change(
                    ADDITIVE,
                    "drop serving rows",
                    name,
                    f"drop the serving rows of service {name} "
                    "(not in these definitions; named with --drop-service) and their triggers",
                )
            )
        else:
            plan.changes.append(
                Change(
                    NOTE,
                    "other service",
                    name,
                    f"serving rows of service {name}, not in these "
                    "definitions (another definition file's?): kept (--drop-service drops them)",
                )
            )
    for name in sorted(set(drop_services) - set(others)):
        plan.changes.append(
            Change(
                NOTE,
                "no such service",
                name,
                f"--drop-service {name}: no serving rows of a service of that name outside these definitions",
            )
        )


def _spec_notes(plan: Plan, registry: Registry, live: Live) -> None:
    if not live.applied:
        return
    for (kind, name), spec in spec_of(registry).items():
        before = live.applied.get((kind, name))
        if before is None:
            continue
        for key in sorted(set(spec) | set(before)):
            if key == "features" and kind == "table":
                old, new = before.get(key) or {}, spec.get(key) or {}
                for feature in sorted(set(old) & set(new)):
                    if _default(old[feature]) != _default(new[feature]):
                        plan.changes.append(
                            Change(
                                NOTE,
                                "default changed",
                                f"{name}.{feature}",
                                f"default of {name}.{feature}: {_default(old[feature])!r} -> "
                                f"{_default(new[feature])!r} (served once servers reload)",
                            )
                        )
                continue
            if key in ("ttl", "version", "ttl_override", "description") and before.get(key) != spec.get(key):
                plan.changes.append(
                    Change(
                        NOTE,
                        f"{key} changed",
                        name,
                        f"{kind} {name}: {key} {before.get(key)!r} -> {spec.get(key)!r} (served once servers reload)",
                    )
                )


def _default(spec: Any) -> Any:
    return spec.get("default") if isinstance(spec, Mapping) else None


def applied_rows(registry: Registry) -> list[tuple[str, str, str]]:
    """(kind, name, spec as JSON) of every table and service: what ``apply`` records."""
    return [
        (kind, name, json.dumps(spec, sort_keys=True, default=str)) for (kind, name), spec in spec_of(registry).items()
    ]


def describe(plan: Plan, statements: bool = True) -> Iterable[str]:
    """The plan as lines for people: each change's sentence, then its SQL."""
    if plan.empty and not plan.notes:
        yield "nothing to change: the database matches the definitions"
        return
    for change in plan.changes:
        mark = {"additive": "+", "destructive": "-", "note": "="}[change.kind]
        yield f"{mark} {change.prose}"
        if statements:
            for statement in change.statements:
                yield f"    {statement};"


def tables_written(plan: Plan) -> list[str]:
    """Feature tables whose shape the plan changes (an exclusive lock each, at the end)."""
    tables = {
        c.subject.partition(".")[0]
        for c in plan.changes
        if c.kind != NOTE and c.action in ("add column", "retype column", "drop column", "migrate event time")
    }
    return sorted(tables)
