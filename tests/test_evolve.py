"""Definitions that change under running readers: no reader ever decodes a layout it was not compiled for.

Every value the tests write encodes where it belongs (``key * 1000 + table * 100 + feature``), so a
value decoded from another feature's position is caught whatever the interleaving.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from pgfeatures import FeatureStore
from pgfeatures.definitions import Entity, FeatureService, FeatureTable, Registry
from pgfeatures.materialize.build import materialize
from pgfeatures.schema import apply_schema

USER = Entity("user", "bigint")


def value(key: int, table: int, feature: int) -> int:
    return key * 1000 + table * 100 + feature


def registry_of(schema: str, features: dict[str, list[str]], services: dict[str, list[str]]) -> Registry:
    tables = [FeatureTable.of(name, {f: "integer" for f in names}, entity=USER) for name, names in features.items()]
    return Registry.of(
        tables, schema, services=[FeatureService(n, tuple(refs), materialize=True) for n, refs in services.items()]
    )


def fill(conn: psycopg.Connection, schema: str, table: str, table_no: int, columns: list[str], keys: range) -> None:
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in ["user_id", *columns])
    for k in keys:
        conn.execute(
            sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (user_id) DO UPDATE SET {}").format(
                sql.Identifier(schema, table),
                cols,
                sql.SQL(", ").join(sql.Literal(v) for v in [k, *(value(k, table_no, int(c[1:])) for c in columns)]),
                sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in columns),
            )
        )


def check_answer(result, key: int, tables: dict[str, int]) -> None:
    """Every present value is the one the tables hold for this key, table and feature."""
    for table, values in result.items():
        if result.status[table] != "present":
            continue
        for name, v in values.items():
            assert v is None or v == value(key, tables[table], int(name[1:])), (table, name, v, key)


def test_a_reader_of_the_old_definition_never_decodes_the_new_layout(conn, schema, dsn):
    """The issue's first report: add a feature to a table of a materialized service, ALTER, rebuild:
    a store opened before the rebuild must not decode the new serving rows with the old positions."""
    old = registry_of(schema, {"t": ["f1", "f2"], "u": ["f1"]}, {"s": ["t.*", "u.*"]})
    apply_schema(conn, old)
    fill(conn, schema, "t", 1, ["f1", "f2"], range(1, 20))
    fill(conn, schema, "u", 2, ["f1"], range(1, 20))
    materialize(conn, old, "s")
    tables = {"t": 1, "u": 2}
    with FeatureStore(old, dsn, pool_size=1, write_pool_size=0) as reader:
        assert reader.readers.service_reader("s", None, "single").materialized
        check_answer(reader.get_service("s", 5), 5, tables)
        new = registry_of(schema, {"t": ["f0", "f1", "f2"], "u": ["f1"]}, {"s": ["t.*", "u.*"]})
        conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN f0 integer").format(sql.Identifier(schema, "t")))
        fill(conn, schema, "t", 1, ["f0", "f1", "f2"], range(1, 20))
        materialize(conn, new, "s")
        for key in range(1, 20):
            check_answer(reader.get_service("s", key), key, tables)
            vector = reader.get_service("s", key, output="list")
            assert vector.values == [value(key, 1, 1), value(key, 1, 2), value(key, 2, 1)]


def test_a_reader_of_a_rebuilt_service_logs_once_and_reports_table_by_table(conn, schema, dsn, caplog):
    old = registry_of(schema, {"t": ["f1"], "u": ["f1"]}, {"s": ["t.*", "u.*"]})
    apply_schema(conn, old)
    fill(conn, schema, "t", 1, ["f1"], range(1, 5))
    fill(conn, schema, "u", 2, ["f1"], range(1, 5))
    materialize(conn, old, "s")
    with FeatureStore(old, dsn, pool_size=1, write_pool_size=0) as reader:
        new = registry_of(schema, {"t": ["f1"], "u": ["f1"]}, {"s": ["u.*", "t.*"]})  # another order: another layout
        materialize(conn, new, "s")
        with caplog.at_level("WARNING", logger="pgfeatures"):
            for key in range(1, 5):
                assert reader.get_service("s", key, output="list").values == [value(key, 1, 1), value(key, 2, 1)]
                check_answer(reader.get_service_batch("s", [key])[0], key, {"t": 1, "u": 2})
        warnings = [r for r in caplog.records if "serving rows of service s cannot be read" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
        assert "s" not in reader.readers.materialized


# -- serving rows that cannot fall out of step unseen ------------------------------------------------


def two_table_service(conn: psycopg.Connection, schema: str, name: str = "t") -> Registry:
    registry = registry_of(schema, {name: ["f1", "f2"], "u": ["f1"]}, {"s": [f"{name}.*", "u.*"]})
    apply_schema(conn, registry)
    fill(conn, schema, name, 1, ["f1", "f2"], range(1, 40))
    fill(conn, schema, "u", 2, ["f1"], range(1, 40))
    return registry


def assert_in_step(store: FeatureStore, conn: psycopg.Connection, schema: str, registry: Registry, keys: range) -> None:
    """The serving rows (read directly) say what the tables say, for every key."""
    from pgfeatures.reader.materialized import compile_materialized_batch_reader
    from pgfeatures.reader.selection import select_service

    (layout,) = registry.layouts("s")
    served = store.read_batch(compile_materialized_batch_reader(select_service(registry, "s"), [layout]), list(keys))
    fresh = store.get_features_batch(list(keys), [t.name for t in layout.tables])
    for got, want in zip(served, fresh):
        assert dict(got) == dict(want) and got.status == want.status


@pytest.mark.parametrize("mode", ["rebuild", "replace"])
def test_a_swap_racing_the_first_materialize_keeps_the_new_triggers(conn, schema, dsn, mode):
    """The load read the table's (absent) triggers at its start; `materialize` committed while it copied;
    its swap must carry the new triggers over and refresh the rows, not swap them away."""
    import pyarrow as pa

    from pgfeatures.load import LoadProgress, load

    registry = two_table_service(conn, schema)
    built: list[bool] = []

    def progress(p: LoadProgress) -> None:
        if p.phase == "reading" and not built:
            with psycopg.connect(dsn, autocommit=True) as other:
                materialize(other, registry, "s")
            built.append(True)

    keys = list(range(1, 60))
    data = pa.table(
        {
            "user_id": pa.array(keys, pa.int64()),
            "f1": pa.array([value(k, 1, 1) for k in keys], pa.int32()),
            "f2": pa.array([value(k, 1, 2) for k in keys], pa.int32()),
        }
    )
    load(
        conn,
        registry,
        "t",
        data,
        mode="replace" if mode == "replace" else "merge",
        strategy="rebuild" if mode == "rebuild" else "auto",
        progress=progress,
    )
    assert built
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=1) as store:
        assert store.readers.service_reader("s", None, "single").materialized
        assert_in_step(store, conn, schema, registry, range(1, 60))
        store.update_features(7, "t", {"f1": value(7, 1, 1) + 1_000_000})  # later writes reach the rows too
        assert store.get_service("s", 7)["t"]["f1"] == value(7, 1, 1) + 1_000_000
        assert_in_step(store, conn, schema, registry, range(1, 60))


def test_a_table_of_a_materialized_service_cannot_be_dropped_unseen(conn, schema, dsn):
    from pgfeatures.errors import SchemaDriftError
    from pgfeatures.materialize.build import states

    registry = two_table_service(conn, schema)
    materialize(conn, registry, "s")
    t = sql.Identifier(schema, "t")
    with pytest.raises(psycopg.errors.DependentObjectsStillExist):  # a plain DROP is refused, naming the guard
        conn.execute(sql.SQL("DROP TABLE {}").format(t))
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=0, on_drift="isolate") as store:
        assert store.get_service("s", 3)["t"]["f1"] == value(3, 1, 1)
        conn.execute(sql.SQL("DROP TABLE {} CASCADE").format(t))
        # dropped while serving: never read from the serving rows as present; a typed error names it
        with pytest.raises(SchemaDriftError, match="t"):
            store.get_service("s", 3)
        assert store.get_service("s", 3, features=["u.f1"]) == {"u": {"f1": value(3, 2, 1)}}
    state = states(conn, registry)["s"]
    assert state.state == "stale" and "guard" in state.reason
    apply_schema(conn, registry)  # re-created empty, by hand or by init: still stale, never "built"
    fill(conn, schema, "t", 1, ["f1", "f2"], range(1, 3))
    assert states(conn, registry)["s"].state == "stale"
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=0) as store:
        assert not store.readers.service_reader("s", None, "single").materialized
        got = store.get_service("s", 5)
        assert got.status == {"t": "missing", "u": "present"}
    materialize(conn, registry, "s")
    assert states(conn, registry)["s"].state == "built"


def test_triggers_disabled_or_dropped_by_hand_make_the_service_stale(conn, schema):
    from pgfeatures.materialize.build import states

    registry = two_table_service(conn, schema)
    materialize(conn, registry, "s")
    u = sql.Identifier(schema, "u")
    conn.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER ALL").format(u))
    assert "disabled" in states(conn, registry)["s"].reason
    conn.execute(sql.SQL("ALTER TABLE {} ENABLE TRIGGER ALL").format(u))
    assert states(conn, registry)["s"].state == "built"
    (trigger,) = conn.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND tgname LIKE '%%_insert'", [u.as_string(conn)]
    ).fetchone()
    conn.execute(sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(trigger), u))
    state = states(conn, registry)["s"]
    assert state.state == "stale" and "lacks its maintenance triggers" in state.reason


def test_two_definition_files_in_one_schema_keep_each_others_triggers(conn, schema, dsn):
    """File A's service and file B's service both read table t; materializing B must not remove A's triggers."""
    a = registry_of(schema, {"t": ["f1", "f2"], "u": ["f1"]}, {"sa": ["t.*", "u.*"]})
    b = registry_of(schema, {"t": ["f1", "f2"]}, {"sb": ["t.f2"]})
    apply_schema(conn, a)
    fill(conn, schema, "t", 1, ["f1", "f2"], range(1, 10))
    fill(conn, schema, "u", 2, ["f1"], range(1, 10))
    materialize(conn, a, "sa")
    materialize(conn, b, "sb")
    from pgfeatures.materialize.build import status

    assert status(conn, a) == {"sa": "built"} and status(conn, b) == {"sb": "built"}
    fill(conn, schema, "t", 1, ["f1", "f2"], range(1, 20))  # writes reach both services' rows
    with (
        FeatureStore(a, dsn, pool_size=1, write_pool_size=0) as sa,
        FeatureStore(b, dsn, pool_size=1, write_pool_size=0) as sb,
    ):
        for key in range(1, 20):
            assert sa.get_service("sa", key, output="list").values == [
                value(key, 1, 1),
                value(key, 1, 2),
                value(key, 2, 1) if key < 10 else None,
            ]
            assert sb.get_service("sb", key, output="list").values == [value(key, 1, 2)]
    materialize(conn, a, "sa")  # and rebuilding A leaves B's alone
    assert status(conn, b) == {"sb": "built"}


@pytest.mark.parametrize("mode", ["rebuild", "replace"])
def test_a_table_with_a_63_byte_name_keeps_its_serving_rows_in_step_through_swaps(conn, schema, dsn, mode):
    import pyarrow as pa

    from pgfeatures.load import load

    name = "t" * 63
    registry = two_table_service(conn, schema, name)
    materialize(conn, registry, "s")
    keys = list(range(1, 50))
    data = pa.table(
        {
            "user_id": pa.array(keys, pa.int64()),
            "f1": pa.array([value(k, 1, 1) + 7 for k in keys], pa.int32()),
            "f2": pa.array([value(k, 1, 2) + 7 for k in keys], pa.int32()),
        }
    )
    load(
        conn,
        registry,
        name,
        data,
        mode="replace" if mode == "replace" else "merge",
        strategy="rebuild" if mode == "rebuild" else "auto",
    )
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=0) as store:
        assert store.readers.service_reader("s", None, "single").materialized
        assert store.get_service("s", 5)[name] == {"f1": value(5, 1, 1) + 7, "f2": value(5, 1, 2) + 7}
        assert_in_step(store, conn, schema, registry, range(1, 50))


def test_a_user_table_named_like_an_internal_one_is_never_dropped(conn, schema):
    from pgfeatures.errors import MaterializeError

    registry = two_table_service(conn, schema)
    (layout,) = registry.layouts("s")
    legacy = sql.Identifier(schema, "_pgf_svc_s__user")  # the name versions before 2 gave this serving table
    conn.execute(sql.SQL("CREATE TABLE {} (user_id int8, note text)").format(legacy))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'mine')").format(legacy))
    materialize(conn, registry, "s")
    assert conn.execute(sql.SQL("SELECT note FROM {}").format(legacy)).fetchall() == [("mine",)]
    # a table of exactly the serving table's name that pgfeatures did not build: refused, kept
    mine = sql.Identifier(schema, layout.table_name)
    conn.execute(sql.SQL("DROP TABLE {} CASCADE").format(mine))
    conn.execute(sql.SQL("CREATE TABLE {} (x int)").format(mine))
    with pytest.raises(MaterializeError, match="did not build"):
        materialize(conn, registry, "s")
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(mine)).fetchone() == (0,)


def test_internal_names_are_refused_at_definition_time():
    from pgfeatures.errors import DefinitionError

    with pytest.raises(DefinitionError, match="reserved"):
        FeatureTable.of("_pgf_svc_s__user", {"f": "real"})
    with pytest.raises(DefinitionError, match="reserved"):
        FeatureTable.of("t", {"_pgf_x": "real"})
    with pytest.raises(DefinitionError, match="seq"):
        FeatureTable.of("t", {"seq": "real"})
    with pytest.raises(DefinitionError, match="reserved"):
        FeatureService("_pgf_s", ("t.*",))
    keyed_ts = Entity("user", "bigint", "ts")
    table = FeatureTable.of("t", {"f": "real"}, entity=keyed_ts)
    Registry.of([table], "s")  # fine while no service is materialized
    with pytest.raises(DefinitionError, match="ts"):
        Registry.of([table], "s", services=[FeatureService("m", ("t.*",), materialize=True)])


def test_services_whose_names_join_alike_get_distinct_serving_tables():
    ab = Entity("c", "bigint", "cid")
    bc = Entity("b__c", "bigint", "bcid")
    tables = [FeatureTable.of("x", {"f": "real"}, entity=ab), FeatureTable.of("y", {"f": "real"}, entity=bc)]
    registry = Registry.of(
        tables,
        "s",
        services=[FeatureService("a__b", ("x.*",), materialize=True), FeatureService("a", ("y.*",), materialize=True)],
    )
    (first,), (second,) = registry.layouts("a__b"), registry.layouts("a")
    assert first.table_name != second.table_name
    assert all(len(n.encode()) <= 63 for n in (first.table_name, second.table_name))
    long = "s" * 63
    registry = Registry.of(tables, "s", services=[FeatureService(long, ("x.*",), materialize=True)])
    (layout,) = registry.layouts(long)
    assert len(layout.table_name.encode()) <= 63 and layout.table_name.endswith(layout.fingerprint[:12])


# -- running readers follow the definitions ----------------------------------------------------------


def test_reload_serves_the_new_definitions_and_keeps_the_old_on_error(conn, schema, dsn, tmp_path):
    from pgfeatures.errors import ConfigError, DefinitionError, SchemaDriftError

    old = two_table_service(conn, schema)
    materialize(conn, old, "s")
    with FeatureStore(old, dsn, pool_size=2, write_pool_size=0) as store:
        before = store.fingerprint
        assert store.get_service("s", 4, output="list").values == [value(4, 1, 1), value(4, 1, 2), value(4, 2, 1)]
        # a definition naming a column the table does not have: refused, the old one serves on
        drifted = registry_of(schema, {"t": ["f0", "f1", "f2"], "u": ["f1"]}, {"s": ["t.*", "u.*"]})
        with pytest.raises(SchemaDriftError, match="f0"):
            store.reload(drifted)
        bad = tmp_path / "bad.toml"
        bad.write_text("[tables.t\n")
        with pytest.raises(DefinitionError, match="bad.toml"):
            store.reload(bad)
        with pytest.raises(ConfigError, match="unknown on_drift 'ignore'; valid: raise, isolate"):
            store.reload(old, on_drift="ignore")  # a setting, as the constructor's: ConfigError
        assert store.fingerprint == before
        assert store.get_service("s", 4, output="list").values == [value(4, 1, 1), value(4, 1, 2), value(4, 2, 1)]
        # the change made (column added, service rebuilt), then reloaded: the new layout, from its serving rows
        conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN f0 integer").format(sql.Identifier(schema, "t")))
        fill(conn, schema, "t", 1, ["f0", "f1", "f2"], range(1, 40))
        materialize(conn, drifted, "s")
        assert store.reload(drifted) == drifted.fingerprint != before
        assert store.readers.service_reader("s", None, "single").materialized
        assert store.get_service("s", 4, output="list").values == [
            value(4, 1, 0),
            value(4, 1, 1),
            value(4, 1, 2),
            value(4, 2, 1),
        ]


def test_requests_running_through_a_reload_are_all_answered_right(conn, schema, dsn):
    import asyncio

    old = two_table_service(conn, schema)
    materialize(conn, old, "s")
    new = registry_of(schema, {"t": ["f1", "f2"], "u": ["f1"]}, {"s": ["u.*", "t.f2"]})
    answers = asyncio.run(asyncio.wait_for(_read_through_reloads(old, new, dsn), 60))
    assert len(answers) >= 50
    for key, result in answers:
        check_answer(result, key, {"t": 1, "u": 2})
        assert set(result) == {"t", "u"} and all(result.status[t] == "present" for t in result)


async def _read_through_reloads(old: Registry, new: Registry, dsn: str) -> list[tuple[int, object]]:
    import asyncio

    from pgfeatures import AsyncFeatureStore

    async with AsyncFeatureStore(old, dsn, pool_size=3, write_pool_size=0) as store:
        answers: list[tuple[int, object]] = []
        stop = asyncio.Event()

        async def read(i: int) -> None:
            while not stop.is_set():
                key = 1 + (i * 7 + len(answers)) % 38
                answers.append((key, await store.get_service("s", key)))

        async def answered(more: int) -> None:
            """Until the readers have answered ``more`` requests more: reloads happen while they read."""
            target = len(answers) + more
            async with asyncio.timeout(30):
                while len(answers) < target:
                    await asyncio.sleep(0.01)

        readers = [asyncio.create_task(read(i)) for i in range(6)]
        await answered(20)
        for _ in range(3):
            with psycopg.connect(dsn, autocommit=True) as other:  # rebuilt for the new definition under the readers
                materialize(other, new, "s")
            await store.reload(new)
            await answered(5)
            with psycopg.connect(dsn, autocommit=True) as other:
                materialize(other, old, "s")
            await store.reload(old)
            await answered(5)
        stop.set()
        await asyncio.gather(*readers)
    return answers
