"""What the database holds of materialized services, and whether each layout's rows can be read (pure).

One catalog query (``sql.SERVING_STATE``) gives the schema's serving tables (with the record each
keeps in its comment), guard views and maintenance triggers; ``ServingCatalog`` answers from it:

- ``state(layout)``: ``built`` (its table, guard view and every trigger on every table it reads are
  there and enabled: its rows are in step and may be read), ``missing`` (never built for this
  layout) or ``stale`` (built, but something keeps its rows from following the tables: a table
  dropped and re-created, triggers dropped or disabled), with the reason;
- ``owned(service)``: every serving table built for a service, of any layout or version: what a
  rebuild replaces and what ``apply`` drops when a service stops being materialized. Objects of
  other services are never touched, so definition files that share a schema coexist.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..definitions.layout import EntityLayout, legacy_serving_table_name
from . import sql as m

BUILT, MISSING, STALE = "built", "missing", "stale"


@dataclass(frozen=True)
class LayoutState:
    """One layout's state and, when it is not built, why."""

    state: str
    reason: str = ""


@dataclass(frozen=True)
class ServingTable:
    """A serving table found in the catalog: its name and record (``sql.describe``; ``legacy``: built
    by a version before LAYOUT_VERSION 2)."""

    name: str
    record: dict[str, Any]

    @property
    def legacy(self) -> bool:
        return "legacy" in self.record

    @property
    def fingerprint(self) -> str:
        return str(self.record.get("fingerprint") or self.record.get("legacy") or "")

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(self.record.get("tables") or ())


@dataclass
class ServingCatalog:
    """The schema's serving tables, guard views and maintenance triggers (see the module docstring)."""

    tables: dict[str, ServingTable] = field(default_factory=dict)
    foreign: set[str] = field(default_factory=set)  # named like serving tables, not built by pgfeatures
    guards: set[str] = field(default_factory=set)
    triggers: dict[str, dict[str, str]] = field(default_factory=dict)  # table -> {trigger: tgenabled}

    @classmethod
    def from_row(cls, row: Sequence[Any] | None) -> ServingCatalog:
        out = cls()
        if row is None:
            return out
        tables, guards, triggers = row
        for entry in tables or ():
            name, _, comment = entry.partition(" ")
            record = m.parse_comment(comment or None)
            if record is None:
                out.foreign.add(name)
            else:
                out.tables[name] = ServingTable(name, record)
        out.guards = set(guards or ())
        for entry in triggers or ():
            table, trigger, enabled = entry.split(" ")
            out.triggers.setdefault(table, {})[trigger] = enabled
        return out

    def state(self, layout: EntityLayout) -> LayoutState:
        found = self.tables.get(layout.table_name)
        if found is None or found.fingerprint != layout.fingerprint:
            if layout.table_name in self.foreign:
                return LayoutState(STALE, f"a table named {layout.table_name} exists that pgfeatures did not build")
            if any(
                t.record.get("entity", layout.entity.name) == layout.entity.name
                for t in self.owned(layout.service, [layout.entity.name])
            ):
                return LayoutState(STALE, "built for another definition of the service")
            return LayoutState(MISSING, "not built")
        if m.guard_name(layout) not in self.guards:
            return LayoutState(
                STALE,
                f"its guard view {m.guard_name(layout)} is gone (a table or column it reads was "
                "dropped, or the table re-created)",
            )
        for table in layout.tables:
            have = self.triggers.get(table.name, {})
            expected = [f"{m.trigger_name(layout, table)}_{e.lower()}" for e in m.EVENTS]
            if not all(t in have for t in expected):
                return LayoutState(
                    STALE, f"table {table.name} lacks its maintenance triggers (dropped and re-created?)"
                )
            if any(have[t] == "D" for t in expected):
                return LayoutState(STALE, f"the maintenance triggers of table {table.name} are disabled")
        return LayoutState(BUILT)

    def owned(self, service: str, entities: Iterable[str] = ()) -> list[ServingTable]:
        """Every serving table built for ``service`` (legacy ones: by their name, for ``entities``)."""
        legacy = {legacy_serving_table_name(service, e) for e in entities}
        return [
            t for t in self.tables.values() if t.record.get("service") == service or (t.legacy and t.name in legacy)
        ]

    def triggers_of(self, serving: ServingTable) -> list[tuple[str, str]]:
        """(table, trigger) of every maintenance trigger writing ``serving``'s rows."""
        out = []
        for table, names in self.triggers.items():
            if serving.tables and table not in serving.tables:
                continue
            prefix = m.trigger_name_for(serving.name, table)
            out += [(table, name) for name in names if name.startswith(prefix)]
        return out


def service_state(states: Iterable[LayoutState]) -> LayoutState:
    """A service's state from its layouts': the worst of them, with its reason."""
    worst = LayoutState(BUILT)
    for s in states:
        if s.state == MISSING or (s.state == STALE and worst.state == BUILT):
            worst = s
    return worst
