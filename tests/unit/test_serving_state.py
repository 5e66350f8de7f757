"""What the catalog holds of materialized services, and whether a layout's rows may be read
(materialize/state.py): built, missing or stale, with the reason; which serving tables a service owns.

The catalog row is given as ``materialize.sql.SERVING_STATE`` returns it: serving tables as
``name comment``, guard views, triggers as ``table trigger enabled``.
"""

from __future__ import annotations

import json

import pytest

from pgfeatures.definitions import Entity, FeatureService, FeatureTable, Registry
from pgfeatures.definitions.layout import EntityLayout, legacy_serving_table_name
from pgfeatures.materialize import sql as m
from pgfeatures.materialize.state import BUILT, MISSING, STALE, LayoutState, ServingCatalog, service_state

USER = Entity("user", "bigint")
REG = Registry.of(
    [
        FeatureTable.of("a", {"x": "real"}, entity=USER),
        FeatureTable.of("b", {"y": "integer"}, entity=USER),
    ],
    schema="s",
    services=[
        FeatureService("svc", ("a.*", "b.*"), materialize=True),
        FeatureService("other", ("a.*",), materialize=True),
    ],
)
LAYOUT = REG.layouts("svc")[0]


def comment(layout: EntityLayout) -> str:
    return m.COMMENT_PREFIX + json.dumps(m.describe(layout))


def triggers(layout: EntityLayout, enabled: str = "O", skip: tuple[str, str] | None = None) -> list[str]:
    out = []
    for table in layout.tables:
        for event in m.EVENTS:
            name = f"{m.trigger_name(layout, table)}_{event.lower()}"
            if (table.name, event) != skip:
                out.append(f"{table.name} {name} {enabled}")
    return out


def built(layout: EntityLayout = LAYOUT, **changes) -> tuple[list[str], list[str], list[str]]:
    row = {
        "tables": [f"{layout.table_name} {comment(layout)}"],
        "guards": [m.guard_name(layout)],
        "triggers": triggers(layout),
    }
    row.update(changes)
    return row["tables"], row["guards"], row["triggers"]


def test_a_layout_with_its_table_guard_and_every_trigger_is_built():
    catalog = ServingCatalog.from_row(built())
    assert catalog.state(LAYOUT) == LayoutState(BUILT)
    assert [t.name for t in catalog.owned("svc")] == [LAYOUT.table_name]
    assert catalog.owned("other") == []


def test_an_empty_schema_or_none_at_all_has_nothing_built():
    for row in (None, ([], [], [])):
        catalog = ServingCatalog.from_row(row)
        assert catalog.state(LAYOUT) == LayoutState(MISSING, "not built")


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"guards": []}, f"its guard view {m.guard_name(LAYOUT)} is gone"),
        ({"triggers": triggers(LAYOUT, skip=("b", "TRUNCATE"))}, "table b lacks its maintenance triggers"),
        ({"triggers": triggers(LAYOUT, enabled="D")}, "the maintenance triggers of table a are disabled"),
    ],
)
def test_what_keeps_the_rows_from_following_the_tables_makes_them_stale(changes, reason):
    state = ServingCatalog.from_row(built(**changes)).state(LAYOUT)
    assert state.state == STALE and reason in state.reason


def test_rows_of_another_definition_of_the_service_are_stale_not_missing():
    changed = Registry.of(
        list(REG.tables.values()), schema="s", services=[FeatureService("svc", ("b.*", "a.*"), materialize=True)]
    ).layouts("svc")[0]
    assert changed.fingerprint != LAYOUT.fingerprint
    catalog = ServingCatalog.from_row(built())
    assert catalog.state(changed) == LayoutState(STALE, "built for another definition of the service")


def test_a_table_of_that_name_pgfeatures_did_not_build_is_stale_and_never_owned():
    catalog = ServingCatalog.from_row(([f"{LAYOUT.table_name} made by hand", f"{LAYOUT.table_name}x "], [], []))
    assert catalog.foreign == {LAYOUT.table_name, f"{LAYOUT.table_name}x"}
    state = catalog.state(LAYOUT)
    assert state.state == STALE and "pgfeatures did not build" in state.reason
    assert catalog.owned("svc") == []


def test_legacy_tables_are_owned_by_their_old_name_and_never_read():
    legacy = legacy_serving_table_name("svc", "user")
    catalog = ServingCatalog.from_row(([f"{legacy} {m.LEGACY_COMMENT_PREFIX}abc123"], [], []))
    (table,) = catalog.tables.values()
    assert table.legacy and table.fingerprint == "abc123"
    assert catalog.owned("svc", ["user"]) == [table] and catalog.owned("svc") == []
    assert catalog.state(LAYOUT).state == STALE  # an old build of the service: rebuilt, not read


def test_the_triggers_of_a_serving_table_are_found_by_their_names():
    other = REG.layouts("other")[0]
    t, g, tr = built()
    catalog = ServingCatalog.from_row((t + [f"{other.table_name} {comment(other)}"], g, tr + triggers(other)))
    mine = catalog.triggers_of(catalog.tables[LAYOUT.table_name])
    assert len(mine) == len(m.EVENTS) * 2 and all(
        name.startswith(m.trigger_name(LAYOUT, table)) for table, name in mine
    )
    theirs = catalog.triggers_of(catalog.tables[other.table_name])
    assert {table for table, _ in theirs} == {"a"} and not set(mine) & set(theirs)


def test_comments_that_are_not_records_are_not_serving_tables():
    assert m.parse_comment(None) is None and m.parse_comment("") is None
    assert m.parse_comment(m.COMMENT_PREFIX + "{not json") is None
    assert m.parse_comment(m.COMMENT_PREFIX + '{"service": "svc"}') is None  # no fingerprint
    assert m.parse_comment(comment(LAYOUT))["fingerprint"] == LAYOUT.fingerprint


def test_a_services_state_is_the_worst_of_its_layouts():
    built_, stale, missing = LayoutState(BUILT), LayoutState(STALE, "s"), LayoutState(MISSING, "m")
    assert service_state([]) == built_
    assert service_state([built_, stale]) == stale
    assert service_state([stale, missing, built_]) == missing
    assert service_state([missing, stale]) == missing
