"""pgfeatures as a Feast online store, checked against Feast's own sqlite online store.

The same repository (tests/support/feast_repo.py: Int64, String and composite join keys, every
type pgfeatures stores, ttls, nulls, a push source, a feature service, an on-demand view) is
applied and materialized into Feast's sqlite store and into pgfeatures; every read must agree
value for value and status for status, except where Feast's own store is wrong: a row older
than its view's ttl comes back from sqlite as PRESENT with its stale value (Feast issue #6821);
pgfeatures says OUTSIDE_MAX_AGE and returns no value.

Real Feast, real PostgreSQL (the tests' database), no mocks. Skipped only where the ``feast``
extra is not installed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

feast = pytest.importorskip("feast", reason="the feast extra is not installed (pip install 'pgfeatures[feast]')")

from feast.protos.feast.serving.ServingService_pb2 import FieldStatus  # noqa: E402

from pgfeatures.errors import DefinitionError, FeatureValueError  # noqa: E402
from support import feast_repo  # noqa: E402
from support.feast_repo import (  # noqa: E402
    ALL_FEATURES,
    CUSTOMERS,
    DRIVER_VECTOR,
    DRIVERS,
    EXPIRED,
    NOW,
    PLAIN,
    PRECOMPUTED,
    entity_rows,
)

PRESENT, NOT_FOUND, OUTSIDE_MAX_AGE = FieldStatus.PRESENT, FieldStatus.NOT_FOUND, FieldStatus.OUTSIDE_MAX_AGE
STORE = "pgfeatures.feast.PgfeaturesOnlineStore"


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, dsn: str) -> Any:
    """(sqlite FeatureStore, pgfeatures FeatureStore) of the same repository, applied and materialized."""
    base = tmp_path_factory.mktemp("feast")
    schema = f"feast_{base.name[-8:].replace('-', '_')}".lower()
    sqlite = feast_repo.make_store(base / "sqlite", "parity", {"type": "sqlite", "path": str(base / "online.db")})
    pg = feast_repo.make_store(base / "pg", "parity", {"type": STORE, "dsn": dsn, "db_schema": schema})
    yield sqlite, pg
    asyncio.run(pg._get_provider().online_store.close())
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def answer(response: Any) -> dict[str, list[tuple[Any, int, int]]]:
    """{column: [(value, status, event seconds) per row]} of an OnlineResponse, through Feast's API."""
    values = response.to_dict(include_event_timestamps=True)
    proto = response.proto
    out = {}
    for name, vector in zip(proto.metadata.feature_names.val, proto.results):
        out[name] = list(zip(values[name], list(vector.statuses), values[name + "__ts"]))
    assert set(out) | {n + "__ts" for n in out} == set(values)
    return out


def expired_cells(rows: list[dict[str, Any]], column: str) -> set[int]:
    """Rows whose value of ``column`` is older than its view's ttl in the test data."""
    if column in ("conv", "acc", "trips", "lifetime", "active") or column.startswith("driver_stats__"):
        return {i for i, r in enumerate(rows) if r["driver_id"] in EXPIRED}
    if column in ("affinity",) or column.startswith("driver_customer__"):
        return {i for i, r in enumerate(rows) if (r["driver_id"], r["customer_id"]) == (1003, "c-3")}
    return set()


def check_same(rows: list[dict[str, Any]], ours: Any, theirs: Any) -> int:
    """Every cell equal to sqlite's, except cells older than their ttl, where sqlite says PRESENT with
    the stale value and pgfeatures OUTSIDE_MAX_AGE with none. Returns the number of expired cells seen."""
    mine, feasts = answer(ours), answer(theirs)
    assert list(mine) == list(feasts)  # same columns, same order
    expired_seen = 0
    for column in feasts:
        stale = expired_cells(rows, column)
        for i, (got, want) in enumerate(zip(mine[column], feasts[column])):
            if i in stale:
                assert want[1] == PRESENT and want[0] is not None, (column, i, want)  # Feast's store is wrong here
                assert got == (None, OUTSIDE_MAX_AGE, 0), (column, i, got)
                expired_seen += 1
            else:
                assert got == want, (column, rows[i], got, want)
    return expired_seen


def test_every_feature_of_every_row_matches_feast_sqlite(stores: Any) -> None:
    sqlite, pg = stores
    rows = entity_rows()
    for full in (False, True):
        ours = pg.get_online_features(ALL_FEATURES, rows, full_feature_names=full)
        theirs = sqlite.get_online_features(ALL_FEATURES, rows, full_feature_names=full)
        assert check_same(rows, ours, theirs) > 0
    # What the data holds, said outright: missing, null, expired and present cells are all there.
    cells = answer(pg.get_online_features(ALL_FEATURES, rows))
    statuses = {s for col in cells.values() for _, s, _ in col}
    assert statuses == {PRESENT, NOT_FOUND, OUTSIDE_MAX_AGE}
    nulls = [v for v, s, _ in cells["conv"] if s == PRESENT and v is None]
    assert nulls  # driver 1005's null features: present, no value (as Feast's stores say)


def test_materialize_through_the_arrow_engine_matches(stores: Any, tmp_path: Path, dsn: str, schema: str) -> None:
    """batch_engine: pgfeatures.feast.PgfeaturesComputeEngine writes the offline Arrow straight to the COPY
    load: the same answers as Feast's protobuf path (and as sqlite)."""
    sqlite, _ = stores
    engine = feast_repo.make_store(
        tmp_path,
        "arrow",
        {"type": STORE, "dsn": dsn, "db_schema": schema},
        batch_engine={"type": "pgfeatures.feast.PgfeaturesComputeEngine"},
    )
    try:
        rows = entity_rows()
        assert (
            check_same(
                rows, engine.get_online_features(ALL_FEATURES, rows), sqlite.get_online_features(ALL_FEATURES, rows)
            )
            > 0
        )
        assert type(engine._get_provider().batch_engine).__name__ == "PgfeaturesComputeEngine"
    finally:
        asyncio.run(engine._get_provider().online_store.close())


def test_single_entity_service_and_async_match(stores: Any) -> None:
    sqlite, pg = stores
    service = pg.get_feature_service("driver_service")
    for rows in ([{"driver_id": 1001, "customer_id": "c-1"}], [{"driver_id": 9999, "customer_id": "nobody"}]):
        check_same(
            rows,
            pg.get_online_features(service, rows),
            sqlite.get_online_features(sqlite.get_feature_service("driver_service"), rows),
        )
        ours = asyncio.run(pg.get_online_features_async(ALL_FEATURES, rows))
        check_same(rows, ours, sqlite.get_online_features(ALL_FEATURES, rows))
    # Columnar entity rows, as feast serve passes them.
    columnar = {"driver_id": DRIVERS, "customer_id": (CUSTOMERS * 2)[: len(DRIVERS)]}
    as_rows = [{"driver_id": d, "customer_id": c} for d, c in zip(DRIVERS, CUSTOMERS * 2)]
    check_same(
        as_rows, pg.get_online_features(ALL_FEATURES, columnar), sqlite.get_online_features(ALL_FEATURES, columnar)
    )


def test_precomputed_service_answers_as_without_precompute_and_as_sqlite(stores: Any) -> None:
    """A precompute_online service (every view, type, entity kind, ttl) answers exactly what the same
    service without precompute answers, sync and async, and what sqlite answers for it (but the ttl)."""
    sqlite, pg = stores
    rows = entity_rows()
    for full in (False, True):
        ours = pg.get_online_features(pg.get_feature_service(PRECOMPUTED), rows, full_feature_names=full)
        plain = pg.get_online_features(pg.get_feature_service(PLAIN), rows, full_feature_names=full)
        assert ours.proto == plain.proto
        assert ours.to_dict(include_event_timestamps=True) == plain.to_dict(include_event_timestamps=True)
        theirs = sqlite.get_online_features(sqlite.get_feature_service(PLAIN), rows, full_feature_names=full)
        assert check_same(rows, ours, theirs) > 0
        ours_async = asyncio.run(
            pg.get_online_features_async(pg.get_feature_service(PRECOMPUTED), rows, full_feature_names=full)
        )
        assert ours_async.proto == plain.proto
    # Feast's generic path (entity rows as protobuf values) answers from the serving rows too, the same.
    from feast.protos.feast.types.Value_pb2 import Value

    one = {"driver_id": [Value(int64_val=1001)], "customer_id": [Value(string_val="c-1")]}
    generic = pg.get_online_features(pg.get_feature_service(PRECOMPUTED), one)
    assert generic.proto == pg.get_online_features(pg.get_feature_service(PLAIN), one).proto


def test_precomputed_service_is_read_from_its_serving_rows(stores: Any, dsn: str) -> None:
    """The answer comes from the service's serving rows: a value written into a serving row directly (and
    nowhere else) is what the precomputed service answers, on every path, while the service without
    precompute still answers the table's value. Feast's own blob path is never taken."""
    from feast.protos.feast.types.Value_pb2 import Value

    from pgfeatures.feast.importer import import_repo
    from pgfeatures.materialize.build import status

    _, pg = stores
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert status(conn, import_repo(Path(pg.repo_path)).registry) == {PRECOMPUTED: "built", DRIVER_VECTOR: "built"}
        update, select = feast_repo.serving_cell(pg.repo_path, PRECOMPUTED, "driver_id", "driver_stats", "conv")
        assert conn.execute(select, [1001]).fetchone() == (0.5,)
        conn.execute(update, [42.0, 1001])
        try:
            rows = [{"driver_id": 1001, "customer_id": "c-1"}]
            service = pg.get_feature_service(PRECOMPUTED)
            assert answer(pg.get_online_features(service, rows))["conv"][0][:2] == (42.0, PRESENT)
            assert answer(asyncio.run(pg.get_online_features_async(service, rows)))["conv"][0][0] == 42.0
            protos = {"driver_id": [Value(int64_val=1001)], "customer_id": [Value(string_val="c-1")]}
            assert answer(pg.get_online_features(service, protos))["conv"][0][0] == 42.0
            assert answer(pg.get_online_features(pg.get_feature_service(PLAIN), rows))["conv"][0][0] == 0.5
        finally:
            conn.execute(update, [0.5, 1001])


def test_precompute_hooks_read_the_serving_rows_and_write_nothing(stores: Any, dsn: str) -> None:
    """read_precomputed_vectors(_async) answer Feast's PrecomputedFeatureVector per entity key from the serving
    rows (None for a key with no row); write_precomputed_vector and Feast's precompute write nothing (the
    serving rows are kept in step by pgfeatures); a service of several entities cannot be read from the one
    entity key per row Feast's hook passes, and says so."""
    from feast.protos.feast.core.PrecomputedFeatureVector_pb2 import PrecomputedFeatureVector
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from pgfeatures.errors import KeyFormatError

    _, pg = stores
    store = pg._get_provider().online_store
    keys = [EntityKey(join_keys=["driver_id"], entity_values=[Value(int64_val=d)]) for d in (1001, 1004, 1005, 9999)]
    for blobs in (
        store.read_precomputed_vectors(pg.config, DRIVER_VECTOR, pg.project, keys),
        asyncio.run(store.read_precomputed_vectors_async(pg.config, DRIVER_VECTOR, pg.project, keys)),
    ):
        assert blobs[3] is None  # 9999: no row in any view
        vectors = []
        for blob in blobs[:3]:
            vector = PrecomputedFeatureVector()
            vector.ParseFromString(blob)
            vectors.append(vector)
        names = ["driver_stats__conv", "driver_stats__trips", "driver_stats__active", "driver_live__speed"]
        assert [list(v.feature_names) for v in vectors] == [names] * 3
        fresh, expired, nulls = vectors
        assert fresh.values[0].float_val == 0.5 and fresh.values[1].int32_val == 10 and fresh.values[2].bool_val
        stamps = {t.feature_view_name: t.event_timestamp.ToDatetime(dt.UTC) for t in fresh.fv_timestamps}
        assert stamps["driver_stats"] == NOW - dt.timedelta(hours=1)
        assert [v.WhichOneof("val") for v in expired.values[:3]] == [
            None
        ] * 3  # expired: no value, as get_online_features
        assert "driver_stats" not in {t.feature_view_name for t in expired.fv_timestamps}
        assert [v.WhichOneof("val") for v in nulls.values[:3]] == [None] * 3
        assert "driver_stats" in {t.feature_view_name for t in nulls.fv_timestamps}  # present, its features null
    with pytest.raises(KeyFormatError, match=r"feature service 'driver_precomputed' .*customer_id"):
        store.read_precomputed_vectors(pg.config, PRECOMPUTED, pg.project, keys)
    rows = entity_rows()
    before = pg.get_online_features(pg.get_feature_service(PRECOMPUTED), rows).proto
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s",
            [pg.config.online_store.db_schema],
        ).fetchone()
        junk = PrecomputedFeatureVector(feature_names=["driver_stats__conv"], values=[Value(float_val=-1.0)])
        store.write_precomputed_vector(pg.config, DRIVER_VECTOR, pg.project, keys[0], junk.SerializeToString())
        pg.precompute_feature_service(DRIVER_VECTOR)  # Feast's own precompute: nothing to write either
        after = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s",
            [pg.config.online_store.db_schema],
        ).fetchone()
    assert after == tables  # no table for Feast's blobs
    assert pg.get_online_features(pg.get_feature_service(PRECOMPUTED), rows).proto == before


def test_on_demand_view_takes_feasts_generic_path_and_matches(stores: Any) -> None:
    sqlite, pg = stores
    rows = [{"driver_id": d, "boost": 1.0} for d in DRIVERS]
    features = ["driver_stats:conv", "driver_stats:trips", "conv_boosted:conv_boosted"]
    theirs = answer(sqlite.get_online_features(features, rows))  # sqlite has no async read
    for mine in (
        answer(pg.get_online_features(features, rows)),
        answer(asyncio.run(pg.get_online_features_async(features, rows))),
    ):
        assert list(mine) == list(theirs)
        for column in ("driver_id", "conv", "trips"):
            for i, (got, want) in enumerate(zip(mine[column], theirs[column])):
                if rows[i]["driver_id"] in EXPIRED and column != "driver_id":
                    assert got == (None, OUTSIDE_MAX_AGE, 0)
                else:
                    assert got == want
        fresh = [i for i, r in enumerate(rows) if r["driver_id"] not in EXPIRED]
        assert [mine["conv_boosted"][i][0] for i in fresh] == [theirs["conv_boosted"][i][0] for i in fresh]


def test_push_writes_newest_wins_and_reads_back(stores: Any) -> None:
    import pandas as pd

    sqlite, pg = stores
    frame = pd.DataFrame(
        {"driver_id": [1001, 1002], "speed": [50.5, 60.25], "event_timestamp": [NOW - dt.timedelta(minutes=5)] * 2}
    )
    older = frame.assign(speed=[1.0, 2.0], event_timestamp=[NOW - dt.timedelta(hours=2)] * 2)
    for store in stores:
        store.push("driver_push", frame)
    pg.push("driver_push", older)  # older event time: kept out, newest wins
    rows = [{"driver_id": d} for d in (1001, 1002, 1003)]
    ours = answer(pg.get_online_features(["driver_live:speed"], rows))
    assert [v for v, _, _ in ours["speed"]] == [50.5, 60.25, None]
    check_same(
        rows,
        pg.get_online_features(["driver_live:speed"], rows),
        sqlite.get_online_features(["driver_live:speed"], rows),
    )
    asyncio.run(pg.push_async("driver_push", frame.assign(speed=[70.0, 80.0], event_timestamp=[NOW] * 2)))
    assert answer(pg.get_online_features(["driver_live:speed"], rows))["speed"][0][0] == 70.0
    # The precomputed service follows every push (pgfeatures' triggers, in the write's transaction).
    with_customer = [{"driver_id": d, "customer_id": "c-1"} for d in (1001, 1002, 1003)]
    ours = pg.get_online_features(pg.get_feature_service(PRECOMPUTED), with_customer)
    assert [v for v, _, _ in answer(ours)["speed"]] == [70.0, 80.0, None]
    assert ours.proto == pg.get_online_features(pg.get_feature_service(PLAIN), with_customer).proto


def test_tables_are_plain_pgfeatures_tables(stores: Any, dsn: str) -> None:
    """What feast apply created is read by pgfeatures itself, with the definitions import-feast writes."""
    from pgfeatures import FeatureStore
    from pgfeatures.feast.importer import import_repo

    _, pg = stores
    schema = pg.config.online_store.db_schema
    imported = import_repo(Path(pg.repo_path))
    assert imported.registry.schema == schema
    with FeatureStore(imported.registry, dsn) as store:
        got = store.get_features({"driver_id": 1001}, ["driver_stats"])
        assert got["driver_stats"]["trips"] == 10 and got.status["driver_stats"] == "present"
        assert store.get_features({"driver_id": 1004}, ["driver_stats"]).status["driver_stats"] == "expired"
        service = store.get_service("driver_service", {"driver_id": 1001, "customer_id": "c-1"})
        assert service["customer_profile"]["score"] == 0.5
        composite = store.get_features({"customer_id__driver_id": '["c-1",1001]'}, ["driver_customer"])
        assert composite["driver_customer"]["affinity"] == 0.9


def test_apply_refuses_what_pgfeatures_cannot_store_and_creates_nothing(tmp_path: Path, dsn: str, schema: str) -> None:
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Array, Bool, Bytes, Float32, Float64, Int64

    feast_repo.write_data(tmp_path)
    feast_repo.write_config(tmp_path, "bad", {"type": STORE, "dsn": dsn, "db_schema": schema})
    objects = feast_repo.definitions(tmp_path)
    driver = objects["driver"]
    src = FileSource(path=str(tmp_path / "driver_stats.parquet"), timestamp_field="event_timestamp")
    cases = [
        (
            FeatureView(
                name="names",
                entities=[driver],
                source=src,
                schema=[Field(name="driver_id", dtype=Int64), Field(name="label", dtype=Bytes)],
            ),
            "feature view 'names': field 'label' is of Feast type Bytes",
        ),
        (
            FeatureView(name="vectors", entities=[driver], source=src, schema=[Field(name="emb", dtype=Array(Bool))]),
            "feature view 'vectors': field 'emb'",
        ),
        (
            FeatureView(name="Upper", entities=[driver], source=src, schema=[Field(name="x", dtype=Float32)]),
            "invalid table name 'Upper'",
        ),
        (
            FeatureView(
                name="bad_feature", entities=[driver], source=src, schema=[Field(name="Bad-Name", dtype=Float32)]
            ),
            "feature view 'bad_feature': field 'Bad-Name'",
        ),
        (
            FeatureView(
                name="float_key",
                entities=[Entity(name="f", join_keys=["f_id"], value_type=ValueType.DOUBLE)],
                source=src,
                schema=[Field(name="f_id", dtype=Float64), Field(name="x", dtype=Float32)],
            ),
            "feature view 'float_key': join key 'f_id' is of Feast type Float64, which pgfeatures cannot key on",
        ),
    ]
    store = FeatureStore(repo_path=str(tmp_path))
    for view, message in cases:
        with pytest.raises(DefinitionError, match=message.replace("(", r"\(")):
            store.apply([driver, objects["driver_stats"], view])
        with psycopg.connect(dsn) as conn:  # nothing half-created: not even the valid view's table
            found = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s", [schema]).fetchone()
            assert found == (0,), view.name


def test_write_of_a_wrong_type_is_refused_naming_view_entity_feature(stores: Any) -> None:
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    _, pg = stores
    view = pg.get_feature_view("driver_stats")
    key = EntityKey(join_keys=["driver_id"], entity_values=[Value(int64_val=1001)])
    bad = [(key, {"conv": Value(string_val="fast")}, NOW, None)]
    with pytest.raises(
        FeatureValueError, match=r"feature view 'driver_stats', entity 1001, feature 'conv': a string_val"
    ):
        pg._get_provider().online_write_batch(pg.config, view, bad, None)
    got = answer(pg.get_online_features(["driver_stats:conv"], [{"driver_id": 1001}]))
    assert got["conv"][0][0] == 0.5  # unchanged


def test_online_read_enforces_ttl(stores: Any) -> None:
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    _, pg = stores
    view = pg.get_feature_view("driver_stats")
    keys = [EntityKey(join_keys=["driver_id"], entity_values=[Value(int64_val=d)]) for d in (1001, 1004, 9999)]
    rows = pg._get_provider().online_store.online_read(pg.config, view, keys, ["conv", "trips"])
    assert rows[0][1] is not None and rows[0][1]["trips"].int32_val == 10
    assert rows[0][0] == NOW - dt.timedelta(hours=1)
    assert rows[1] == (None, None) and rows[2] == (None, None)  # expired reads as not found; missing too


def test_import_feast_cli_writes_definitions_pgfeatures_serves(stores: Any, dsn: str, tmp_path: Path) -> None:
    """``pgfeatures import-feast`` writes a definitions file that ``pgfeatures get`` reads the Feast tables with;
    the on-demand view that does not translate is listed."""
    import json

    from cli_run import cli
    from pgfeatures import Registry
    from pgfeatures.feast.importer import import_repo

    _, pg = stores
    out = tmp_path / "features.toml"
    done = cli("import-feast", pg.repo_path, "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "not imported: on-demand feature view 'conv_boosted'" in done.stderr
    assert Registry.from_toml(out) == import_repo(Path(pg.repo_path)).registry
    got = cli(
        "get",
        "--dsn",
        dsn,
        "-d",
        str(out),
        "--service",
        "driver_service",
        "--json",
        "driver_id=1001",
        "customer_id=c-1",
    )
    assert got.returncode == 0, got.stderr
    document = json.loads(got.stdout)
    assert document["features"]["driver_stats"] == {"conv": 0.5, "trips": 10}
    assert document["status"] == {"driver_stats": "present", "customer_profile": "present"}
    missing = cli("import-feast", str(tmp_path / "nowhere"))
    assert (
        missing.returncode == 2
        and missing.stderr.strip().startswith("error: ")
        and "feature_store.yaml" in missing.stderr
    )
    assert len(missing.stderr.strip().splitlines()) == 1
