"""A live table compared with its definition (schema.py: ``compare``, ``check_catalog_row``,
``drift_error``), and the plan that makes the database match the definitions (evolve/plan.py:
``make_plan``), from what the catalog says, without a database."""

from __future__ import annotations

import json

import pytest

from pgfeatures.definitions import Entity, FeatureService, FeatureTable, Registry
from pgfeatures.evolve.plan import (
    ADDITIVE,
    DESTRUCTIVE,
    NOTE,
    Live,
    LiveTable,
    describe,
    make_plan,
    spec_of,
    tables_written,
)
from pgfeatures.materialize import sql as m
from pgfeatures.materialize.state import ServingCatalog
from pgfeatures.schema import (
    LEGACY_EVENT_TIME,
    check_catalog,
    check_catalog_row,
    compare,
    covering_index_name,
    drift_error,
    expected_columns,
    freshness_index_name,
)

USER = Entity("user", "bigint", "uid")
STATS = FeatureTable.of("stats", {"clicks": "integer", "ctr": "real"}, entity=USER, covering_index=True)
PLAIN = FeatureTable.of("plain", {"x": "double precision"})
REG = Registry.of([STATS, PLAIN], schema="s")


def live_table(table: FeatureTable, drop: str | None = None, **changed: str) -> LiveTable:
    """The table as ``pgfeatures apply`` makes it, less ``drop``, with ``changed`` column types."""
    columns = {k: v for k, v in expected_columns(table).items() if k != drop}
    columns.update(changed)
    indexes = (freshness_index_name(table),) + ((covering_index_name(table),) if table.covering_index else ())
    return LiveTable(table.name, columns, (table.key_column,), indexes)


def live(*tables: LiveTable, **kw) -> Live:
    return Live(schema_exists=True, tables={t.name: t for t in tables}, **kw)


# -- compare --------------------------------------------------------------------------------------------


def test_a_table_as_created_matches():
    t = live_table(STATS)
    assert compare(STATS, t.columns, t.primary_key, t.indexes) == ([], [])


def test_what_breaks_reads_is_told_from_what_only_costs():
    t = live_table(STATS, drop="ctr", clicks="bigint", extra="text")
    breaking, other = compare(STATS, t.columns, None, ())
    assert breaking == ["column clicks is bigint, definition says integer", "column ctr (real) is missing"]
    assert other == [
        "column extra (text) is not in the definition",
        "primary key is missing, definition says (uid)",
        f"covering index {covering_index_name(STATS)} is missing",
    ]


def test_a_legacy_integer_event_time_is_breaking_and_named_as_legacy():
    t = live_table(PLAIN, updated_at=LEGACY_EVENT_TIME)
    breaking, _ = compare(PLAIN, t.columns, t.primary_key, t.indexes)
    assert len(breaking) == 1 and breaking[0].startswith("legacy event time: column updated_at is integer")


def catalog_row(t: LiveTable, exists: bool = True) -> tuple:
    return (t.name, exists, list(t.columns), list(t.columns.values()), list(t.primary_key), list(t.indexes))


def test_catalog_rows_become_checks_with_the_migration_a_legacy_table_needs():
    checks = check_catalog(
        REG, [catalog_row(live_table(STATS)), catalog_row(live_table(PLAIN, updated_at=LEGACY_EVENT_TIME))]
    )
    assert checks["stats"].breaking == () and checks["stats"].migrations == ()
    assert checks["plain"].breaking and any("TYPE timestamptz" in s for s in checks["plain"].migrations)
    gone = check_catalog_row("s", STATS, ("stats", False, None, None, None, None))
    assert gone.breaking == ("table s.stats does not exist",)


def test_the_drift_error_names_every_problem_and_the_commands_that_fix_it():
    checks = check_catalog(
        REG,
        [catalog_row(live_table(STATS, drop="uid", clicks="bigint")), catalog_row(live_table(PLAIN, drop="x"))],
    )
    err = drift_error(REG, checks, "defs.toml")
    text = str(err)
    assert text.startswith("the database does not match the definitions (schema 's'): stats: ")
    assert "column uid (bigint) is missing" in text and "plain: column x (double precision) is missing" in text
    assert "`pgfeatures plan -d defs.toml` shows the change and `pgfeatures apply -d defs.toml` makes it" in text
    assert "stats lack(s) the entity's key column" in text
    assert "`pgfeatures apply --allow-destructive`" in text  # clicks: another type
    assert err.problems == {name: list(c.breaking) for name, c in checks.items()}


# -- make_plan ------------------------------------------------------------------------------------------


def actions(plan) -> list[tuple[str, str, str]]:
    return [(c.kind, c.action, c.subject) for c in plan.changes]


def test_an_empty_database_gets_the_schema_and_every_table():
    plan = make_plan(REG, Live())
    assert actions(plan) == [
        (ADDITIVE, "create schema", "s"),
        (ADDITIVE, "create table", "stats"),
        (ADDITIVE, "create table", "plain"),
    ]
    statements = [s for c in plan.changes for s in c.statements]
    assert statements[0] == 'CREATE SCHEMA IF NOT EXISTS "s"'
    assert any(s.startswith('CREATE TABLE IF NOT EXISTS "s"."stats"') for s in statements)
    assert any("INCLUDE" in s for s in statements)  # the covering index, asked for
    assert not plan.empty and plan.build == [] and plan.blocked == []


def test_a_database_that_matches_needs_nothing():
    plan = make_plan(REG, live(live_table(STATS), live_table(PLAIN)))
    assert plan.changes == [] and plan.empty
    assert list(describe(plan)) == ["nothing to change: the database matches the definitions"]


def test_missing_columns_and_indexes_are_added_online():
    stats = live_table(STATS, drop="ctr")
    stats = LiveTable(stats.name, stats.columns, stats.primary_key, ())  # no index at all
    plan = make_plan(REG, live(stats, live_table(PLAIN)))
    assert actions(plan) == [
        (ADDITIVE, "add column", "stats.ctr"),
        (ADDITIVE, "create index", freshness_index_name(STATS)),
        (ADDITIVE, "create index", covering_index_name(STATS)),
    ]
    assert plan.changes[0].statements == ('ALTER TABLE "s"."stats" ADD COLUMN "ctr" real',)
    assert plan.added == {("stats", "ctr")} and tables_written(plan) == ["stats"]


def test_destructive_changes_are_left_out_unless_allowed():
    drifted = live(live_table(STATS, clicks="bigint", gone="real"), live_table(PLAIN))
    held = make_plan(REG, drifted)
    assert [(k, a) for k, a, _ in actions(held)] == [
        (NOTE, "retype column (needs --allow-destructive)"),
        (NOTE, "drop column (needs --allow-destructive)"),
    ]
    assert held.empty and len(held.blocked) == 2 and tables_written(held) == []
    made = make_plan(REG, drifted, allow_destructive=True)
    assert actions(made) == [(DESTRUCTIVE, "retype column", "stats.clicks"), (DESTRUCTIVE, "drop column", "stats.gone")]
    assert made.changes[0].statements == (
        'ALTER TABLE "s"."stats" ALTER COLUMN "clicks" TYPE integer USING "clicks"::integer',
    )
    assert tables_written(made) == ["stats"]


def test_tables_only_in_the_database_are_kept_unless_named_and_allowed():
    extra = LiveTable("old", {"hashkey": "bytea"})
    db = live(live_table(STATS), live_table(PLAIN), extra)
    assert actions(make_plan(REG, db)) == [(NOTE, "table kept", "old")]
    assert actions(make_plan(REG, db, drop_tables=["old"])) == [(NOTE, "drop table (needs --allow-destructive)", "old")]
    dropped = make_plan(REG, db, drop_tables=["old", "nope", "plain"], allow_destructive=True)
    assert actions(dropped) == [
        (DESTRUCTIVE, "drop table", "old"),
        (NOTE, "no such table", "nope"),
        (NOTE, "table defined", "plain"),
    ]


def test_a_legacy_event_time_is_migrated_and_its_index_comes_with_the_migration():
    plan = make_plan(REG, live(live_table(STATS), LiveTable("plain", live_table(PLAIN, updated_at="integer").columns)))
    assert actions(plan) == [(ADDITIVE, "migrate event time", "plain.updated_at")]
    assert any("to_timestamp" in s for s in plan.changes[0].statements)


def test_materialized_services_are_built_when_missing_and_dropped_when_no_longer_materialized():
    svc = FeatureService("fraud", ("stats.*",), materialize=True)
    reg = Registry.of([STATS, PLAIN], schema="s", services=[svc])
    tables = (live_table(STATS), live_table(PLAIN))
    plan = make_plan(reg, live(*tables))
    assert actions(plan) == [(ADDITIVE, "build service", "fraud")] and plan.build == ["fraud"]
    assert "not built" in plan.changes[0].prose
    # built and in step: nothing to do; a column added to a table it reads: rebuilt
    layout = reg.layouts("fraud")[0]
    serving = ServingCatalog.from_row(
        (
            [f"{layout.table_name} {m.COMMENT_PREFIX}{json.dumps(m.describe(layout))}"],
            [m.guard_name(layout)],
            [f"stats {m.trigger_name(layout, 'stats')}_{e.lower()} O" for e in m.EVENTS],
        )
    )
    assert make_plan(reg, live(*tables, serving=serving)).changes == []
    grown = make_plan(reg, live(live_table(STATS, drop="ctr"), live_table(PLAIN), serving=serving))
    assert actions(grown) == [(ADDITIVE, "add column", "stats.ctr"), (ADDITIVE, "rebuild service", "fraud")]
    assert "a table it reads changes" in grown.changes[1].prose
    # no longer materialized: its rows dropped; another definition file's service: kept unless named
    unmaterialized = Registry.of([STATS, PLAIN], schema="s", services=[FeatureService("fraud", ("stats.*",))])
    dropping = make_plan(unmaterialized, live(*tables, serving=serving))
    assert actions(dropping) == [(ADDITIVE, "drop serving rows", "fraud")] and dropping.drop_serving == ["fraud"]
    assert actions(make_plan(REG, live(*tables, serving=serving))) == [(NOTE, "other service", "fraud")]
    named = make_plan(REG, live(*tables, serving=serving), drop_services=["fraud", "ghost"])
    assert actions(named) == [(ADDITIVE, "drop serving rows", "fraud"), (NOTE, "no such service", "ghost")]


def test_settings_that_changed_since_the_last_apply_are_notes():
    before = spec_of(REG)
    changed = Registry.of(
        [
            FeatureTable.of(
                "stats",
                {"clicks": {"type": "integer", "default": 0}, "ctr": "real"},
                entity=USER,
                covering_index=True,
                ttl=3600,
            ),
            PLAIN,
        ],
        schema="s",
    )
    plan = make_plan(changed, live(live_table(STATS), live_table(PLAIN), applied=before))
    assert actions(plan) == [(NOTE, "default changed", "stats.clicks"), (NOTE, "ttl changed", "stats")]
    assert plan.empty
    assert [line for line in describe(plan)] == [
        "= default of stats.clicks: None -> 0 (served once servers reload)",
        "= table stats: ttl None -> '1h' (served once servers reload)",
    ]


@pytest.mark.parametrize("exists", [False, True])
def test_the_plan_serialises_for_json(exists):
    plan = make_plan(REG, Live(schema_exists=exists))
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["empty"] is False and data["changes"][0]["kind"] == ADDITIVE
    assert all(isinstance(s, str) for c in data["changes"] for s in c["sql"])
