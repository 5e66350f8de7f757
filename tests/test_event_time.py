"""Event time (``updated_at``): stored as ``timestamptz`` with microseconds, read back as a
timezone-aware datetime, written from datetimes, ISO 8601 strings with a zone, Arrow timestamps and
epoch numbers in a declared unit; rows without one stamped with the database server's clock; event
times too far in the future refused, naming the row; duplicate keys of one load or batch resolved
newest-wins; tables made by older versions (``integer`` epoch seconds) reported with their migration.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from pgfeatures import FeatureStore
from pgfeatures.definitions import Entity, FeatureService, FeatureTable, Registry
from pgfeatures.errors import DatabaseError, FeatureValueError, LoadInputError, SchemaDriftError
from pgfeatures.load import load
from pgfeatures.schema import CATALOG_QUERY, apply_schema, check_catalog

UTC = dt.UTC
USER = Entity("user", "bigint", "uid")


def registry_for(schema: str, ttl: int | None = None) -> Registry:
    return Registry.of([FeatureTable.of("t", {"a": "real", "n": "integer"}, entity=USER, ttl=ttl)], schema=schema)


@pytest.fixture()
def reg(conn, schema) -> Registry:
    registry = registry_for(schema)
    apply_schema(conn, registry)
    return registry


def stamps(conn: psycopg.Connection, reg: Registry, table: str = "t") -> dict[int, dt.datetime]:
    query = sql.SQL("SELECT uid, updated_at FROM {}").format(sql.Identifier(reg.schema, table))
    return {k: v.astimezone(UTC) for k, v in conn.execute(query).fetchall()}


def values(conn: psycopg.Connection, reg: Registry) -> dict[int, tuple[float, int]]:
    query = sql.SQL("SELECT uid, a, n FROM {}").format(sql.Identifier(reg.schema, "t"))
    return {k: (a, n) for k, a, n in conn.execute(query).fetchall()}


def server_now(conn: psycopg.Connection) -> dt.datetime:
    return conn.execute("SELECT now()").fetchone()[0].astimezone(UTC)


# -- storage and reads ----------------------------------------------------------------------------


def test_updated_at_is_a_timestamptz_kept_to_the_microsecond_and_read_back_as_an_aware_datetime(conn, reg, dsn):
    columns = dict(
        conn.execute(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attname = 'updated_at'",
            [f"{reg.schema}.t"],
        ).fetchall()
    )
    assert columns == {"updated_at": "timestamp with time zone"}
    at = dt.datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    with FeatureStore(reg, dsn, pool_size=1, write_pool_size=1) as store:
        assert store.update_features(1, "t", {"a": 1.5, "updated_at": at}) == 1
        for strategy in ("single", "union", "join", "pipeline", "sequential"):
            got = store.get_features(1, ["t"], {"t": ["a", "updated_at"]}, strategy=strategy)
            assert got == {"t": {"a": 1.5, "updated_at": at}}, strategy
            assert got["t"]["updated_at"].utcoffset() == dt.timedelta(0)
        (batch,) = store.get_features_batch([1], ["t"], {"t": ["updated_at", "n"]})
        assert batch == {"t": {"updated_at": at, "n": None}}
    assert stamps(conn, reg) == {1: at}


def test_live_updates_take_datetimes_iso_strings_with_a_zone_and_epoch_seconds(conn, reg, dsn):
    paris = dt.timezone(dt.timedelta(hours=2))
    with FeatureStore(reg, dsn, pool_size=1, write_pool_size=1) as store:
        store.update_features_batch(
            "t",
            [
                (1, {"a": 1.0, "updated_at": dt.datetime(2026, 5, 1, 14, 0, tzinfo=paris)}),
                (2, {"a": 2.0, "updated_at": "2026-05-01T12:00:00.5Z"}),
                (3, {"a": 3.0, "updated_at": "2026-05-01T14:00:00+02:00"}),
                (4, {"a": 4.0, "updated_at": 1_500_000_000}),  # epoch seconds
                (5, {"a": 5.0, "updated_at": 1_777_636_800.25}),
            ],
        )
        for bad, why in (
            ("2026-05-01T12:00:00", "no time zone"),
            (dt.datetime(2026, 5, 1), "no time zone"),
            ("yesterday", "ISO 8601"),
            (True, "not"),
            (-1.7976931348623155e308, "out of range"),
            (10**20, "out of range"),
            (float("nan"), "finite"),
        ):
            with pytest.raises(FeatureValueError, match=why) as err:
                store.update_features(9, "t", {"a": 1.0, "updated_at": bad})
            assert "t.updated_at" in str(err.value) and "key 9" in str(err.value)
    assert stamps(conn, reg) == {
        1: dt.datetime(2026, 5, 1, 12, 0, tzinfo=UTC),
        2: dt.datetime(2026, 5, 1, 12, 0, 0, 500000, tzinfo=UTC),
        3: dt.datetime(2026, 5, 1, 12, 0, tzinfo=UTC),
        4: dt.datetime(2017, 7, 14, 2, 40, tzinfo=UTC),
        5: dt.datetime(2026, 5, 1, 12, 0, 0, 250000, tzinfo=UTC),
    }


# -- loads ----------------------------------------------------------------------------------------


def test_epoch_milliseconds_and_times_past_2038_load_when_declared(conn, reg):
    ms = [1_777_636_800_123, 1_777_636_800_124]
    load(
        conn,
        reg,
        "t",
        pa.table(
            {
                "uid": [1, 2],
                "a": pa.array([1.0, 2.0], pa.float32()),
                "n": [1, 2],
                "updated_at": pa.array(ms, pa.int64()),
            }
        ),
        event_time_unit="ms",
    )
    assert stamps(conn, reg) == {
        1: dt.datetime(2026, 5, 1, 12, 0, 0, 123000, tzinfo=UTC),
        2: dt.datetime(2026, 5, 1, 12, 0, 0, 124000, tzinfo=UTC),
    }
    # 2040 in seconds: beyond a 32-bit integer, and in the future, so allowed only with a wider skew
    load(
        conn,
        reg,
        "t",
        pa.table(
            {
                "uid": [3],
                "a": pa.array([3.0], pa.float32()),
                "n": [3],
                "updated_at": pa.array([2_208_988_800], pa.int64()),
            }
        ),
        max_future_skew=20 * 365 * 86400,
    )
    assert stamps(conn, reg)[3] == dt.datetime(2040, 1, 1, tzinfo=UTC)
    with pytest.raises(LoadInputError, match="event_time_unit"):
        load(conn, reg, "t", pa.table({"uid": [4], "a": [1.0], "n": [1], "updated_at": [1]}), event_time_unit="minutes")


def test_arrow_and_parquet_timestamp_columns_load(conn, reg, tmp_path):
    at = [dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), dt.datetime(2025, 12, 31, 23, 0, tzinfo=UTC)]
    path = tmp_path / "t.parquet"
    pq.write_table(
        pa.table(
            {
                "uid": [1, 2],
                "a": pa.array([1.0, 2.0], pa.float32()),
                "n": [1, 2],
                "updated_at": pa.array(at, pa.timestamp("us", tz="UTC")),
            }
        ),
        path,
    )
    load(conn, reg, "t", path)
    assert stamps(conn, reg) == {1: at[0], 2: at[1]}
    nanos = pa.array([1_767_225_600_000_000_999], pa.timestamp("ns", tz="Europe/Paris"))  # 2026-01-01 UTC, + 999 ns
    load(conn, reg, "t", pa.table({"uid": [3], "a": [3.0], "n": [3], "updated_at": nanos}))
    # timestamptz keeps microseconds: 999 ns round to 1 µs, as PostgreSQL rounds '...00.000000999Z'
    assert stamps(conn, reg)[3] == dt.datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC)
    naive = pa.table(
        {"uid": [4], "a": [4.0], "n": [4], "updated_at": pa.array([dt.datetime(2026, 1, 1, 12)], pa.timestamp("s"))}
    )
    with pytest.raises(LoadInputError, match="no time zone.*event_time_zone") as err:
        load(conn, reg, "t", naive)
    assert err.value.column == "updated_at"
    load(conn, reg, "t", naive, event_time_zone="America/New_York")
    assert stamps(conn, reg)[4] == dt.datetime(2026, 1, 1, 17, tzinfo=UTC)


def test_iso_8601_strings_in_csv_load_and_a_string_without_a_zone_is_refused_naming_the_row(conn, reg, tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text(
        "uid,a,n,updated_at\n1,1.5,1,2026-05-01T12:00:00Z\n2,2.5,2,2026-05-01T14:00:00.25+02:00\n3,3.5,3,1777636800\n"
    )
    load(conn, reg, "t", csv)
    assert stamps(conn, reg) == {
        1: dt.datetime(2026, 5, 1, 12, tzinfo=UTC),
        2: dt.datetime(2026, 5, 1, 12, 0, 0, 250000, tzinfo=UTC),
        3: dt.datetime(2026, 5, 1, 12, tzinfo=UTC),
    }
    csv.write_text("uid,a,n,updated_at\n4,1.5,1,2026-05-01T12:00:00Z\n5,2.5,2,2026-05-01 12:00:00\n")
    with pytest.raises(LoadInputError, match=r"row 2, column 'updated_at'.*no time zone") as err:
        load(conn, reg, "t", csv)
    assert err.value.row == 2 and 4 not in stamps(conn, reg)


def test_rows_without_event_time_take_the_database_servers_clock_not_the_clients(conn, schema, dsn, monkeypatch):
    registry = registry_for(schema, ttl=3600)
    apply_schema(conn, registry)
    before = server_now(conn)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 7200)  # this client's clock runs 2 h behind
    load(conn, registry, "t", pa.table({"uid": [1, 2], "a": pa.array([1.0, 2.0], pa.float32()), "n": [1, 2]}))
    monkeypatch.setattr(time, "time", real)
    after = server_now(conn)
    got = stamps(conn, registry)
    assert len(set(got.values())) == 1 and before <= got[1] <= after  # the load's transaction time, on the server
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=0) as store:
        assert store.get_features(1, ["t"]).status == {"t": "present"}


def test_an_event_time_too_far_in_the_future_fails_the_load_naming_the_row(conn, reg, tmp_path):
    load(conn, reg, "t", pa.table({"uid": [1], "a": [1.0], "n": [1], "updated_at": [1_700_000_000]}))
    ahead = int(server_now(conn).timestamp()) + 3600
    csv = tmp_path / "t.csv"
    csv.write_text(f"uid,a,n,updated_at\n1,9.5,9,{ahead - 7200}\n2,2.5,2,{ahead}\n")
    with pytest.raises(
        LoadInputError, match=r"t.csv: row 2, column 'updated_at'.*in the future.*max_future_skew"
    ) as err:
        load(conn, reg, "t", csv)
    assert err.value.row == 2 and values(conn, reg) == {1: (1.0, 1)}  # nothing loaded
    summary = load(conn, reg, "t", csv, on_invalid="skip")
    assert summary.rejected == 1 and values(conn, reg) == {1: (9.5, 9)}
    summary = load(conn, reg, "t", csv, max_future_skew=7200)
    assert values(conn, reg) == {1: (9.5, 9), 2: (2.5, 2)}
    with pytest.raises(LoadInputError, match="updated_at=.*in the future"):
        load(conn, reg, "t", pa.table({"uid": [5], "a": [1.0], "n": [1]}), updated_at=ahead)


def test_an_event_time_too_far_in_the_future_fails_a_live_batch_naming_the_key_and_writes_nothing(conn, reg, dsn):
    ahead = server_now(conn) + dt.timedelta(days=365)
    with FeatureStore(reg, dsn, pool_size=1, write_pool_size=1) as store:
        store.update_features(1, "t", {"a": 1.0, "updated_at": server_now(conn) - dt.timedelta(hours=1)})
        for rows in (
            [(1, {"a": 9.0, "updated_at": ahead})],
            [(2, {"n": 2}), (3, {"a": 3.0, "updated_at": server_now(conn)}), (1, {"a": 9.0, "updated_at": ahead})],
        ):
            with pytest.raises(FeatureValueError, match=r"t.updated_at.*key 1.*in the future.*max_future_skew"):
                store.update_features_batch("t", rows)
            assert values(conn, reg) == {1: (1.0, None)}  # every column set of the batch: nothing written
        # a later write of the key is not blocked: the far-future row never got in
        assert store.update_features(1, "t", {"a": 2.0, "updated_at": server_now(conn)}) == 1
    with FeatureStore(reg, dsn, pool_size=1, write_pool_size=1, max_future_skew=400 * 86400) as store:
        assert store.update_features(1, "t", {"a": 5.0, "updated_at": ahead}) == 1


def test_duplicate_keys_of_one_file_resolve_newest_wins_and_are_counted(conn, reg, tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text(
        "uid,a,n,updated_at\n1,1.5,1,2026-05-01T12:00:00Z\n1,2.5,2,2026-05-01T11:00:00Z\n"
        "2,1.5,1,2026-05-01T11:00:00Z\n2,2.5,2,2026-05-01T12:00:00Z\n3,1.5,1,2026-05-01T12:00:00Z\n"
        "3,2.5,2,2026-05-01T12:00:00Z\n"
    )
    summary = load(conn, reg, "t", csv)
    assert summary.superseded == 3 and "duplicates superseded 3" in summary.describe()
    assert values(conn, reg) == {1: (1.5, 1), 2: (2.5, 2), 3: (2.5, 2)}  # newest; equal times: the later row
    summary = load(conn, reg, "t", csv, on_duplicate="last")  # the last row whatever its time...
    assert summary.skipped_newer == 1 and values(conn, reg)[1] == (1.5, 1)  # ...older than the stored row: kept out
    load(conn, reg, "t", csv, on_duplicate="last", overwrite_newer=True)
    assert values(conn, reg) == {1: (2.5, 2), 2: (2.5, 2), 3: (2.5, 2)}


def test_duplicate_keys_of_one_live_batch_resolve_newest_wins(conn, reg, dsn):
    t = dt.datetime(2026, 5, 1, tzinfo=UTC)
    with FeatureStore(reg, dsn, pool_size=1, write_pool_size=1) as store:
        written = store.update_features_batch(
            "t",
            [
                (1, {"a": 1.0, "updated_at": t + dt.timedelta(seconds=2)}),
                (1, {"a": 2.0, "n": 7, "updated_at": t}),
                (2, {"a": 1.0, "updated_at": t}),
                (2, {"a": 2.0, "updated_at": t + dt.timedelta(seconds=1)}),
            ],
        )
        assert written == 2
    # each key as if its writes were applied in event-time order: the newest value of every column
    assert values(conn, reg) == {1: (1.0, 7), 2: (2.0, None)}
    assert stamps(conn, reg) == {1: t + dt.timedelta(seconds=2), 2: t + dt.timedelta(seconds=1)}


# -- over HTTP and the CLI ------------------------------------------------------------------------


def test_http_push_takes_rfc3339_and_reads_answer_rfc3339(dsn, reg, tmp_path):
    from pgfeatures.server import ServerConfig
    from support.inprocess import running_app

    defs = tmp_path / "defs.toml"
    defs.write_text(
        f'schema = "{reg.schema}"\n[entities.user]\nkey = "bigint"\ncolumn = "uid"\n'
        '[tables.t]\nentity = "user"\nfeatures = { a = "real", n = "integer" }\n'
    )
    with running_app(ServerConfig(dsn=dsn, definitions=str(defs), prewarm=False, pool_size=1)) as client:
        r = client.post(
            "/v1/push/t",
            json={
                "rows": [
                    {"key": 1, "features": {"a": 1.5, "updated_at": "2026-05-01T12:00:00.25Z"}},
                    {"key": 2, "features": {"a": 2.5, "updated_at": 1777636800}},
                ]
            },
        )
        assert r.json() == {"written": 2, "skipped": 0}, r.text
        body = client.post("/v1/features", json={"key": 1, "features": {"t": ["a", "updated_at"]}}).json()
        assert body["features"]["t"] == {"a": 1.5, "updated_at": "2026-05-01T12:00:00.250000Z"}
        bad = client.post("/v1/push/t", json={"key": 3, "features": {"updated_at": "2026-05-01T12:00:00"}})
        assert bad.status_code == 400 and "no time zone" in bad.json()["error"]["message"]


def test_cli_load_declares_the_unit_and_get_prints_rfc3339(conn, reg, dsn, tmp_path, capsys):
    from pgfeatures.cli import main as cli_main

    defs = tmp_path / "defs.toml"
    defs.write_text(
        f'schema = "{reg.schema}"\n[entities.user]\nkey = "bigint"\ncolumn = "uid"\n'
        '[tables.t]\nentity = "user"\nfeatures = { a = "real", n = "integer" }\n'
    )
    csv = tmp_path / "t.csv"
    csv.write_text("uid,a,n,updated_at\n1,1.5,1,1777636800250\n")
    assert cli_main(["load", "t", str(csv), "--dsn", dsn, "-d", str(defs), "-q", "--event-time-unit", "ms"]) == 0
    capsys.readouterr()
    assert cli_main(["get", "--dsn", dsn, "-d", str(defs), "-f", "t.updated_at", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["features"]["t"]["updated_at"] == "2026-05-01T12:00:00.250000Z"


# -- what older versions made ---------------------------------------------------------------------


def test_a_table_with_integer_updated_at_is_reported_as_legacy_event_time_and_apply_migrates_it(conn, schema, dsn):
    from pgfeatures.evolve.apply import apply, plan_changes
    from pgfeatures.schema import migrate_event_time_sql

    registry = registry_for(schema)
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (uid bigint PRIMARY KEY, a real, n integer, "
            "updated_at integer NOT NULL DEFAULT (extract(epoch from now()))::integer)"
        ).format(sql.Identifier(schema, "t"))
    )
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 1.5, 1, 1777636800)").format(sql.Identifier(schema, "t")))
    cur = psycopg.RawCursor(conn)
    rows = cur.execute(CATALOG_QUERY, [schema, ["t"]]).fetchall()
    check = check_catalog(registry, rows)["t"]
    assert any("legacy event time" in p for p in check.breaking), check
    migration = [s.as_string(conn) for s in migrate_event_time_sql(schema, registry.table("t"))]
    assert any("to_timestamp" in s for s in migration)
    from pgfeatures.errors import SchemaDriftError

    with pytest.raises(SchemaDriftError, match="legacy event time") as err:
        FeatureStore(registry, dsn, pool_size=1, write_pool_size=0)
    assert "legacy event time (integer updated_at) is migrated to timestamptz by the same apply" in str(err.value)
    plan = plan_changes(conn, registry)
    assert [(c.action, c.statements) for c in plan.changes] == [("migrate event time", tuple(migration))]
    apply(conn, registry)
    assert apply_schema(conn, registry).ok and plan_changes(conn, registry).empty
    assert stamps(conn, registry) == {1: dt.datetime(2026, 5, 1, 12, tzinfo=UTC)}
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=1) as store:
        store.update_features(2, "t", {"a": 2.0})  # the default stamps the server's time again
        assert store.get_features(2, ["t"], {"t": ["updated_at"]})["t"]["updated_at"] >= dt.datetime(
            2026, 1, 1, tzinfo=UTC
        )


def test_serving_tables_built_by_an_older_layout_format_are_stale(conn, schema, dsn):
    from pgfeatures.definitions.layout import LAYOUT_VERSION
    from pgfeatures.materialize.build import materialize, status

    registry = Registry.of(
        [FeatureTable.of("t", {"a": "real"}, entity=USER)],
        schema=schema,
        services=[FeatureService("s", ("t.*",), materialize=True)],
    )
    apply_schema(conn, registry)
    materialize(conn, registry, "s")
    assert status(conn, registry)["s"] == "built"
    (layout,) = registry.layouts("s")
    entity = layout.entity  # the shape as older versions hashed it (their ts held epoch seconds)
    old = {
        "service": "s",
        "entity": [entity.name, entity.key_type, entity.column],
        "tables": ["t"],
        "slots": [[s.table, s.feature.name, s.feature.type.name, s.group, s.index] for s in layout.slots],
    }
    old_fingerprint = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    # As an older version left it: named by service and entity, its fingerprint in its comment.
    from pgfeatures.definitions.layout import legacy_serving_table_name
    from pgfeatures.evolve.apply import apply

    legacy = legacy_serving_table_name("s", entity.name)
    conn.execute(sql.SQL("DROP VIEW {}").format(sql.Identifier(schema, f"_pgf_guard_{layout.fingerprint}")))
    conn.execute(
        sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(schema, layout.table_name), sql.Identifier(legacy))
    )
    conn.execute(
        sql.SQL("COMMENT ON TABLE {} IS {}").format(
            sql.Identifier(schema, legacy), sql.Literal("pgfeatures serving rows, layout " + old_fingerprint)
        )
    )
    assert LAYOUT_VERSION >= 3 and status(conn, registry)["s"] == "stale"
    result = apply(conn, registry)  # rebuilt, and the old rows dropped
    assert result.rows == {layout.table_name: 0} and status(conn, registry)["s"] == "built"
    assert conn.execute("SELECT to_regclass(%s)", [f"{schema}.{legacy}"]).fetchone() == (None,)


def test_a_service_serves_updated_at_from_its_serving_rows_as_from_the_tables(conn, schema, dsn):
    from pgfeatures.materialize.build import materialize

    services = [
        FeatureService("flex", ("t.a", "t.updated_at")),
        FeatureService("mat", ("t.a", "t.updated_at"), materialize=True),
    ]
    registry = Registry.of(
        [FeatureTable.of("t", {"a": "real"}, entity=USER, ttl=3600)], schema=schema, services=services
    )
    apply_schema(conn, registry)
    now = server_now(conn)
    fresh, old = now - dt.timedelta(seconds=10, microseconds=7), now - dt.timedelta(hours=2)
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=1) as store:
        store.update_features_batch("t", [(1, {"a": 1.5, "updated_at": fresh}), (2, {"a": 2.5, "updated_at": old})])
    materialize(conn, registry, "mat")
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=0) as store:
        for name in ("flex", "mat"):
            assert store.get_service(name, {"user": 1}) == {"t": {"a": 1.5, "updated_at": fresh}}, name
            assert store.get_service(name, {"user": 2}).status == {"t": "expired"}, name  # 2 h old, ttl 1 h
            vector = store.get_service(name, {"user": 1}, output="numpy")
            assert vector.values.tolist() == [1.5, to_seconds(fresh)], name
            assert store.get_service_batch(name, [{"user": 1}])[0]["t"]["updated_at"] == fresh, name


def to_seconds(moment: dt.datetime) -> float:
    return (moment - dt.datetime(1970, 1, 1, tzinfo=UTC)) / dt.timedelta(microseconds=1) / 1e6


def test_a_load_into_a_legacy_table_names_the_migration_and_loads_nothing(conn, schema):
    registry = registry_for(schema)
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    conn.execute(
        sql.SQL("CREATE TABLE {} (uid bigint PRIMARY KEY, a real, n integer, updated_at integer NOT NULL)").format(
            sql.Identifier(schema, "t")
        )
    )
    from pgfeatures.errors import SchemaDriftError

    with pytest.raises(
        SchemaDriftError, match=r"legacy event time.*`pgfeatures apply` makes it \(it migrates the legacy event time"
    ):
        load(conn, registry, "t", pa.table({"uid": [1], "a": [1.0], "n": [1]}))


def test_a_stored_infinite_time_is_called_what_it_is_not_drift(conn, schema) -> None:
    """A timestamp of 'infinity' written around pgfeatures (its writes refuse it) has no datetime: a read of it
    fails naming that, as a database error about the stored value, never as a drifted schema."""
    registry = Registry.of(
        [FeatureTable.of("t", {"x": "real", "seen": "timestamp"}, entity=Entity("user", key_type="bigint"))], schema
    )
    apply_schema(conn, registry)
    with FeatureStore(registry, conn.info.dsn) as store:
        store.update_features(1, "t", {"x": 1.0, "seen": "2026-01-01T00:00:00Z"})
        conn.execute(sql.SQL("UPDATE {} SET seen = 'infinity'").format(sql.Identifier(schema, "t")))
        for read in (lambda: store.get_features(1), lambda: store.get_features(1, ["t"], strategy="join")):
            with pytest.raises(DatabaseError, match="infinity") as err:
                read()
            assert not isinstance(err.value, SchemaDriftError)
            assert "no datetime" in str(err.value) and "NULL" in str(err.value)
        assert store.get_features(1, features={"t": ["x"]}) == {"t": {"x": 1.0}}  # its other features still read
