"""Feast's String, UnixTimestamp and Array(Int32 | Int64 | Float32 | Float64 | String) features in pgfeatures
(string, timestamp and list columns), checked against Feast's own sqlite online store: materialized through
Feast's protobuf path and through the Arrow engine (the COPY load), pushed, read sync and async, and from a
precomputed (materialized) service of the strings and timestamps. Real Feast, real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
import pytest
from psycopg import sql

feast = pytest.importorskip("feast", reason="the feast extra is not installed (pip install 'pgfeatures[feast]')")

from feast.protos.feast.serving.ServingService_pb2 import FieldStatus  # noqa: E402

from support import feast_repo  # noqa: E402
from support.feast_repo import DAY, HOUR, NOW  # noqa: E402
from test_feast import STORE, answer  # noqa: E402

PRESENT, NOT_FOUND = FieldStatus.PRESENT, FieldStatus.NOT_FOUND
FEATURES = ["name", "last_seen", "trip_ids", "zones", "ratings", "dists", "tags"]
REFS = [f"driver_profile:{f}" for f in FEATURES]
DRIVERS = [1, 2, 3, 4, 9]  # 4: every feature null; 9: no row


def write_profiles(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "driver_id": [1, 2, 3, 4, 1],  # the last: an older row of driver 1 (newest wins)
            "name": ["Ada", "ÄÖÜß 😀", "", None, "old"],
            "last_seen": [NOW - DAY, NOW - 2 * HOUR, dt.datetime(1999, 12, 31, 23, 59, 59, tzinfo=dt.UTC), None, NOW],
            "trip_ids": [[2**40, -1], [], [0], None, [7]],
            "zones": [[1, 2, 3], [2**31 - 1], [], None, [7]],
            "ratings": [[0.1, 4.5], [], [1e-3], None, [7.0]],
            "dists": [[1e300, -0.5], [0.0], [], None, [7.0]],
            "tags": [["a", 'b "c"'], ["ünï"], [], None, ["old"]],
            "event_timestamp": [NOW - HOUR, NOW - HOUR, NOW - HOUR, NOW - HOUR, NOW - 5 * HOUR],
        }
    ).to_parquet(root / "driver_profile.parquet")


def objects(root: Path) -> dict[str, Any]:
    from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
    from feast.types import Array, Float32, Float64, Int32, Int64, String, UnixTimestamp

    driver = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)
    source = FileSource(
        name="driver_profile_source", path=str(root / "driver_profile.parquet"), timestamp_field="event_timestamp"
    )
    push = PushSource(name="profile_push", batch_source=source)
    view = FeatureView(
        name="driver_profile",
        entities=[driver],
        ttl=30 * DAY,
        source=push,
        schema=[
            Field(name="driver_id", dtype=Int64),
            Field(name="name", dtype=String),
            Field(name="last_seen", dtype=UnixTimestamp),
            Field(name="trip_ids", dtype=Array(Int64)),
            Field(name="zones", dtype=Array(Int32)),
            Field(name="ratings", dtype=Array(Float32)),
            Field(name="dists", dtype=Array(Float64)),
            Field(name="tags", dtype=Array(String)),
        ],
    )
    plain = FeatureService(name="profile_plain", features=[view])
    precomputed = FeatureService(name="profile_precomputed", features=[view], precompute_online=True)
    return {
        "driver": driver,
        "profile_push": push,
        "driver_profile": view,
        "profile_plain": plain,
        "profile_precomputed": precomputed,
    }


def make(root: Path, online_store: dict[str, Any], **extra: Any) -> Any:
    write_profiles(root)
    return feast_repo.make_store(root, "rich", online_store, objects(root), **extra)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, dsn: str) -> Any:
    base = tmp_path_factory.mktemp("feast_rich")
    schema = f"feast_rich_{base.name[-8:].replace('-', '_')}".lower()
    sqlite = make(base / "sqlite", {"type": "sqlite", "path": str(base / "online.db")})
    pg = make(base / "pg", {"type": STORE, "dsn": dsn, "db_schema": schema})
    yield sqlite, pg, schema
    asyncio.run(pg._get_provider().online_store.close())
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


ROWS = [{"driver_id": d} for d in DRIVERS]


def without_null_stamps(proto: Any) -> Any:
    """Feast's answer with its null timestamps as pgfeatures answers them: an empty Value. Feast's own stores
    keep the -2**63 (NaT) its conversion writes for a null UnixTimestamp (to_dict reads both as None)."""
    from feast.protos.feast.types.Value_pb2 import Value

    out = type(proto)()
    out.CopyFrom(proto)
    for vector in out.results:
        for value in vector.values:
            if value.WhichOneof("val") == "unix_timestamp_val" and value.unix_timestamp_val == -(2**63):
                value.CopyFrom(Value())
    return out


def test_rich_features_match_feast_sqlite(stores: Any) -> None:
    sqlite, pg, _ = stores
    ours = answer(pg.get_online_features(REFS, ROWS))
    theirs = answer(sqlite.get_online_features(REFS, ROWS))
    assert ours == theirs
    assert ours["name"][0][:2] == ("Ada", PRESENT) and ours["tags"][0][0] == ["a", 'b "c"']
    assert ours["last_seen"][0][0] == NOW - DAY and ours["trip_ids"][1][0] == []
    assert ours["name"][4][1] == NOT_FOUND
    feasts = without_null_stamps(sqlite.get_online_features(REFS, ROWS).proto)
    assert pg.get_online_features(REFS, ROWS).proto == feasts
    assert asyncio.run(pg.get_online_features_async(REFS, ROWS)).proto == feasts


def test_the_columns_are_plain_pgfeatures_rich_columns(stores: Any, dsn: str) -> None:
    _, _, schema = stores
    with psycopg.connect(dsn) as conn:
        columns = dict(
            conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass "
                "AND attnum > 0 AND NOT attisdropped",
                [f"{schema}.driver_profile"],
            ).fetchall()
        )
        row = conn.execute(
            sql.SQL("SELECT name, last_seen, trip_ids, ratings, tags FROM {} WHERE driver_id = 1").format(
                sql.Identifier(schema, "driver_profile")
            )
        ).fetchone()
    assert columns["name"] == "character varying(256)" and columns["last_seen"] == "timestamp with time zone"
    assert columns["trip_ids"] == "bigint[]" and columns["zones"] == "integer[]" and columns["ratings"] == "real[]"
    assert columns["dists"] == "double precision[]" and columns["tags"] == "character varying(256)[]"
    assert row is not None and row[0] == "Ada" and row[1] == NOW - DAY and row[2] == [2**40, -1]


def test_a_precomputed_service_of_every_rich_type_answers_as_without(stores: Any) -> None:
    sqlite, pg, _ = stores
    ours = pg.get_online_features(pg.get_feature_service("profile_precomputed"), ROWS)
    plain = pg.get_online_features(pg.get_feature_service("profile_plain"), ROWS)
    theirs = sqlite.get_online_features(sqlite.get_feature_service("profile_plain"), ROWS)
    assert ours.proto == plain.proto == without_null_stamps(theirs.proto)
    assert ours.to_dict() == theirs.to_dict()


def test_materialize_through_the_arrow_engine_matches(stores: Any, tmp_path: Path, dsn: str, schema: str) -> None:
    sqlite, _, _ = stores
    engine = make(
        tmp_path,
        {"type": STORE, "dsn": dsn, "db_schema": schema},
        batch_engine={"type": "pgfeatures.feast.PgfeaturesComputeEngine"},
    )
    try:
        assert answer(engine.get_online_features(REFS, ROWS)) == answer(sqlite.get_online_features(REFS, ROWS))
    finally:
        asyncio.run(engine._get_provider().online_store.close())


def test_a_push_of_rich_values_reads_back_as_in_feast(tmp_path: Path, dsn: str, schema: str) -> None:
    from feast.data_source import PushMode

    base = tmp_path
    sqlite = make(base / "sqlite", {"type": "sqlite", "path": str(base / "online.db")})
    pg = make(base / "pg", {"type": STORE, "dsn": dsn, "db_schema": schema})
    try:
        frame = pd.DataFrame(
            {
                "driver_id": [2, 5],
                "name": ["pushed", "new"],
                "last_seen": [NOW, NOW - HOUR],
                "trip_ids": [[5, 6], []],
                "zones": [[9], [1]],
                "ratings": [[2.5], [0.25]],
                "dists": [[3.5], []],
                "tags": [["x"], ["y", "z"]],
                "event_timestamp": [NOW, NOW],
            }
        )
        for store in (sqlite, pg):
            store.push("profile_push", frame, to=PushMode.ONLINE)
        rows = [{"driver_id": d} for d in (2, 5, 1)]
        assert answer(pg.get_online_features(REFS, rows)) == answer(sqlite.get_online_features(REFS, rows))
        assert answer(pg.get_online_features(REFS, rows))["tags"][1][0] == ["y", "z"]
    finally:
        asyncio.run(pg._get_provider().online_store.close())
