"""Freshness without scanning: the age of a table's newest row (``pgfeatures tables``, ``GET /v1/tables``,
``/metrics``) is one probe of an index on ``updated_at`` that pgfeatures creates with the table and keeps
through loads, never a scan of the table; and the doctor does not fail on what pgfeatures does itself."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from pgfeatures import FeatureStore
from pgfeatures.definitions import FeatureTable, Registry
from pgfeatures.doctor import Status, diagnose
from pgfeatures.inventory import tables
from pgfeatures.load import load
from pgfeatures.schema import apply_schema
from test_doctor import dsn as doctor_dsn  # noqa: F401  (a database of this module's own: VACUUM sees no other snapshot)
from test_doctor import healthy_server  # noqa: F401
from test_warmup import flush_stats

dsn = doctor_dsn


def freshness_index_name(table: FeatureTable) -> str:
    from pgfeatures.schema import freshness_index_name as name

    return name(table)


def rows(n: int, seed: int) -> pa.Table:
    keys = [hashlib.sha256(b"row:%d" % i).digest() for i in range(n)]
    rng = np.random.default_rng(seed)
    return pa.table({"hashkey": pa.array(keys, pa.binary(32)), "f0": rng.random(n, dtype=np.float32)})


def scans(conn: psycopg.Connection, schema: str, table: str) -> int:
    return conn.execute(
        "SELECT seq_scan FROM pg_stat_user_tables WHERE schemaname = %s AND relname = %s", [schema, table]
    ).fetchone()[0]


def indexes(conn: psycopg.Connection, schema: str, table: str) -> set[str]:
    return {
        r[0]
        for r in conn.execute(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = %s AND tablename = %s", [schema, table]
        )
    }


def test_the_newest_rows_age_is_an_index_probe_through_every_kind_of_load(dsn, conn, schema):
    registry = Registry.of([FeatureTable.of("t", {"f0": "real"})], schema=schema)
    apply_schema(conn, registry)
    index = freshness_index_name(registry.table("t"))
    assert index in indexes(conn, schema, "t")
    for strategy, mode in (("upsert", "merge"), ("rebuild", "merge"), ("auto", "replace")):
        load(conn, registry, "t", rows(20_000, 1), strategy=strategy, mode=mode)
        assert index in indexes(conn, schema, "t"), (strategy, mode)  # a swap builds it on the new table
    flush_stats(conn)
    before = scans(conn, schema, "t")
    with psycopg.connect(dsn, autocommit=True) as reader:
        for _ in range(3):  # what pgfeatures tables, GET /v1/tables and every /metrics scrape run
            (info,) = tables(reader, registry)
            assert info.updated_at_index == index and info.newest_age is not None and info.newest_age < 60
        flush_stats(reader)
    assert scans(conn, schema, "t") == before  # not one sequential scan


def test_a_first_load_creates_the_index_with_the_table(conn, schema):
    registry = Registry.of([FeatureTable.of("t", {"f0": "real"}, covering_index=True)], schema=schema)
    load(conn, registry, "t", rows(10, 1))
    assert indexes(conn, schema, "t") == {"t_pkey", "t_covering", freshness_index_name(registry.table("t"))}


def test_the_doctor_passes_after_pgfeatures_own_scrapes_and_on_a_small_table_with_a_few_dead_rows(
    dsn,
    conn,
    schema,
    healthy_server,  # noqa: F811  (the fixture imported from test_doctor)
):
    registry = Registry.of(
        [FeatureTable.of("big", {"f0": "real"}), FeatureTable.of("seven", {"f0": "real"})], schema=schema
    )
    apply_schema(conn, registry)
    load(conn, registry, "big", rows(20_000, 1))
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=1) as store:
        keys = [hashlib.sha256(b"seven:%d" % i).digest() for i in range(7)]
        store.update_features_batch("seven", {k: {"f0": 1.0} for k in keys})
        for k in keys[:4]:  # live updates leave 4 dead row versions among 7 live ones
            store.update_features(k, "seven", {"f0": 2.0})
    for _ in range(5):
        tables(conn, registry)
    conn.execute(sql.SQL("ANALYZE {}, {}").format(sql.Identifier(schema, "big"), sql.Identifier(schema, "seven")))
    flush_stats(conn)
    report = diagnose(registry, dsn)
    assert report.get("scans", "big").status is Status.PASS, report.get("scans", "big")
    vacuum = report.get("vacuum", "seven")
    assert vacuum.status is Status.PASS, vacuum
    assert report.get("vacuum", "seven").measured["dead_rows"] <= 4


@pytest.mark.parametrize("covering", [False, True])
def test_a_table_without_the_index_is_still_served_and_named(conn, schema, dsn, covering):
    registry = Registry.of([FeatureTable.of("t", {"f0": "real"}, covering_index=covering)], schema=schema)
    apply_schema(conn, registry)
    conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, freshness_index_name(registry.table("t")))))
    load(conn, registry, "t", rows(100, 1), strategy="rebuild")  # a swap keeps the table as it was: no index
    assert freshness_index_name(registry.table("t")) not in indexes(conn, schema, "t")
    (info,) = tables(conn, registry)
    assert info.updated_at_index is None and info.newest_age is not None  # measured by a (bounded) scan
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=0) as store:
        assert store.get_features(rows(1, 1)["hashkey"][0].as_py())["t"] is not None


def test_the_doctor_tells_pgfeatures_own_build_scans_from_a_readers(dsn, conn, schema, healthy_server):  # noqa: F811
    """A materialize build reads its tables whole (sequential scans): the doctor's scans check passes, naming
    the build; a reader's sequential scan after it fails the check again."""
    from pgfeatures.definitions import FeatureService
    from pgfeatures.materialize.build import materialize

    registry = Registry.of(
        [FeatureTable.of("big", {"f0": "real"})],
        schema=schema,
        services=[FeatureService("s", ("big.*",), materialize=True)],
    )
    apply_schema(conn, registry)
    load(conn, registry, "big", rows(20_000, 1))
    with psycopg.connect(dsn, autocommit=True) as builder:
        materialize(builder, registry, "s")
        flush_stats(builder)
    report = diagnose(registry, dsn)
    scans = report.get("scans", "big")
    assert scans.measured["seq_scan"] >= 1 and scans.status is Status.PASS, scans
    assert "pgfeatures' own full pass (materialize s" in scans.advice
    time.sleep(0.01)  # last_seq_scan has the statement's start time: the reader's scan must start after the build
    conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE f0 < 0").format(sql.Identifier(schema, "big")))
    flush_stats(conn)
    assert diagnose(registry, dsn).get("scans", "big").status is Status.FAIL
