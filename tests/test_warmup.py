"""Warm-up against a real PostgreSQL: cold tables become warm, measured by the probe; sync and async agree.

A cold cache is made without restarting the shared server: pg_buffercache's
``pg_buffercache_evict_relation`` (PostgreSQL 18) drops one test relation's
blocks from shared_buffers. The helpers and the ``dsn`` override here are
shared with test_doctor.py.

These tests use a database of their own on the test server, because what they
check depends on the whole database: VACUUM can mark rows all-visible only
when no transaction of the same database is older than them (another suite's
slow CREATE INDEX would hold it back), and ``pg_stat_reset()`` elsewhere in
the shared test database would wipe the counters the doctor reads.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import psycopg
import pytest
from psycopg import sql

from conftest import dsn_with
from pgfeatures import cli, demo
from pgfeatures.definitions import KEY_LENGTH, FeatureTable, Registry
from pgfeatures.errors import KeyFormatError, WarmupError
from pgfeatures.schema import apply_schema, qualified
from pgfeatures.store import AsyncFeatureStore, FeatureStore
from pgfeatures.warmup import load_hot_keys, measure, run, warm_store, warm_store_async, warmup

OWN_DATABASE = "pgfeatures_test_cache"
ROWS = 20_000
FEATURES = {f"f{j}": "real" for j in range(8)}


@pytest.fixture(scope="module")
def dsn(dsn: str) -> str:
    """Overrides conftest's ``dsn`` (and so ``conn`` and ``schema``): this module's own database,
    or the shared one where databases cannot be created."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [OWN_DATABASE]).fetchone():
            try:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(OWN_DATABASE)))
            except psycopg.errors.DuplicateDatabase:
                pass  # a concurrent run created it
            except psycopg.errors.InsufficientPrivilege:
                return dsn
    return dsn_with(dsn, dbname=OWN_DATABASE)


def demo_like(schema: str) -> Registry:
    """Three demo-style tables: two with a covering index, one without."""
    return Registry.of(
        [
            FeatureTable.of("t00", FEATURES, True),
            FeatureTable.of("t01", FEATURES, True),
            FeatureTable.of("t02", FEATURES),
        ],
        schema=schema,
    )


def load(conn: psycopg.Connection, registry: Registry, *, vacuum: bool) -> list[bytes]:
    """Create and fill the tables as a fresh load does: COPY, ANALYZE, and VACUUM only if asked.

    Autovacuum is switched off on the tables so it cannot set the visibility map behind the
    test's back. Returns the entity keys.
    """
    apply_schema(conn, registry)
    keys = np.frombuffer(b"".join(demo.entity_keys(ROWS)), dtype=f"S{KEY_LENGTH}")
    for ti, table in enumerate(registry.tables.values()):
        ident = qualified(registry, table)
        conn.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = false)").format(ident))
        data = demo.table_data(ti, ROWS, len(table.features))
        demo.copy_binary_float4(conn, registry.schema, table, keys[data.entities], data.values, demo.DEMO_EPOCH)
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}" if vacuum else "ANALYZE {}").format(ident))
    return demo.entity_keys(ROWS)  # not from the numpy array: its "S32" items drop trailing zero bytes


def evict(conn: psycopg.Connection, registry: Registry) -> None:
    """Drop the tables' and indexes' blocks from shared_buffers (skips the test where impossible)."""
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_buffercache")
    except psycopg.errors.UniqueViolation:
        pass  # a concurrent test run created it
    except psycopg.Error as exc:
        pytest.skip(f"pg_buffercache unavailable: {exc}")
    if not conn.execute("SELECT to_regproc('pg_buffercache_evict_relation') IS NOT NULL").fetchone()[0]:
        pytest.skip("pg_buffercache_evict_relation needs PostgreSQL 18")
    try:
        conn.execute(
            """SELECT pg_buffercache_evict_relation(c.oid)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = %s AND c.relkind IN ('r', 'i')""",
            [registry.schema],
        )
    except psycopg.errors.InsufficientPrivilege as exc:
        pytest.skip(f"evicting buffers needs a superuser: {exc}")


def flush_stats(conn: psycopg.Connection) -> None:
    """Make this session's pending statistics visible to others now (they are flushed at most once a second)."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")  # the forced flush happens when the session goes idle


def write_definitions(path, registry: Registry) -> str:
    lines = [f'schema = "{registry.schema}"']
    for t in registry.tables.values():
        lines += [
            f"[tables.{t.name}]",
            f"covering_index = {str(t.covering_index).lower()}",
            f"[tables.{t.name}.features]",
        ]
        lines += [f'{f.name} = "{f.type.name}"' for f in t.features]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture()
def registry(schema: str) -> Registry:
    return demo_like(schema)


def test_prewarm_turns_a_cold_cache_warm(conn, registry):
    keys = load(conn, registry, vacuum=True)
    evict(conn, registry)
    hot = keys[:50] + [bytes(KEY_LENGTH)]  # an absent key is harmless
    report = warmup(conn, registry, hot)

    assert report.method == "pg_prewarm"
    assert report.before.source == report.after.source == "hot keys"
    assert report.before.ratio < 0.99, report.before.as_dict()
    assert report.after.ratio >= 0.99, report.after.as_dict()
    assert report.hot_keys == len(hot)
    sizes = dict(
        conn.execute(
            """SELECT c.relname, pg_relation_size(c.oid) / current_setting('block_size')::int
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind IN ('r', 'i')""",
            [registry.schema],
        ).fetchall()
    )
    assert {w.relation: w.blocks for w in report.warmed} == sizes  # every table and index, every block
    assert report.fits and report.working_set_bytes > 0
    # the probe saw the real plans: covered tables index-only, with no heap fetch after VACUUM
    for name in ("t00", "t01"):
        (scan,) = report.after.tables[name].scans
        assert (scan.node, scan.heap_fetches, scan.rows) == ("Index Only Scan", 0, 49)  # each table misses one entity


def test_index_read_fallback_warms_without_sequential_scans(conn, registry):
    load(conn, registry, vacuum=True)
    evict(conn, registry)
    report = warmup(conn, registry, method="read")

    assert report.method == "index read"
    assert report.before.source == "statistics"  # keys sampled from pg_stats, not from the table
    assert report.before.ratio < 0.99
    assert report.after.ratio >= 0.99, report.after.as_dict()
    rows = {w.relation: w.rows for w in report.warmed}
    assert rows["t02"] == ROWS - ROWS // demo.MISS_EVERY
    assert rows["t00_covering"] == rows["t00"]
    flush_stats(conn)
    seq = conn.execute(
        "SELECT sum(seq_tup_read) FROM pg_stat_user_tables WHERE schemaname = %s", [registry.schema]
    ).fetchone()[0]
    assert seq == 0


def test_sync_and_async_store_warmups_agree(dsn, conn, registry):
    keys = load(conn, registry, vacuum=True)
    hot = keys[100:130]

    async def warm_async():
        async with AsyncFeatureStore(registry, dsn, pool_size=1, write_pool_size=1, hot_keys=hot) as store:
            return await warm_store_async(store)

    evict(conn, registry)
    async_report = asyncio.run(warm_async())
    evict(conn, registry)
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=1, hot_keys=hot) as store:
        sync_report = warm_store(store)

    for report in (sync_report, async_report):
        assert report.method == "pg_prewarm" and report.hot_keys == 30
        assert report.after.ratio >= 0.99
    assert [w.relation for w in sync_report.warmed] == [w.relation for w in async_report.warmed]
    assert {t: p.scans for t, p in sync_report.after.tables.items()} == {
        t: p.scans for t, p in async_report.after.tables.items()
    }


def test_measure_reports_missing_statistics_and_broken_tables(conn, schema):
    registry = Registry.of([FeatureTable.of("t00", FEATURES), FeatureTable.of("gone", {"x": "real"})], schema=schema)
    apply_schema(conn, Registry.of([registry.table("t00")], schema=schema))
    conn.execute(sql.SQL("CREATE TABLE {} (hashkey bytea PRIMARY KEY, y real)").format(sql.Identifier(schema, "gone")))
    conn.execute(
        sql.SQL("INSERT INTO {} SELECT sha256(i::text::bytea), i FROM generate_series(1, 200) i").format(
            sql.Identifier(schema, "gone")
        )
    )
    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, "gone")))

    result = run(conn, measure(registry))
    assert result.tables["t00"].keys == 0 and not result.tables["t00"].error  # empty and never analyzed: no keys
    assert result.blocks["t00_pkey"].fetched > 0  # the random places were still read
    assert '"x" does not exist' in result.tables["gone"].error
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_warmup_errors(conn, schema, tmp_path):
    registry = demo_like(schema)
    with pytest.raises(WarmupError, match=f"schema '{schema}'.*pgfeatures init"):
        warmup(conn, registry)
    apply_schema(conn, registry)
    with pytest.raises(WarmupError, match="valid: auto, prewarm, read"):
        warmup(conn, registry, method="fast")
    with pytest.raises(KeyFormatError):
        warmup(conn, registry, ["abc"])
    with psycopg.connect(conn.info.dsn) as tx_conn, pytest.raises(WarmupError, match="autocommit"):
        warmup(tx_conn, registry)


def test_load_hot_keys(tmp_path):
    good = tmp_path / "hot.txt"
    good.write_text(f"# hot keys\n{'ab' * 32}\n\n{'CD' * 32}  # trailing comment\n")
    assert load_hot_keys(good) == [bytes([0xAB]) * 32, bytes([0xCD]) * 32]
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{'ab' * 32}\n\nnot-a-key\n")
    with pytest.raises(KeyFormatError, match="bad.txt:3: hex key must be 64"):
        load_hot_keys(bad)
    with pytest.raises(WarmupError, match="cannot read the hot-key file"):
        load_hot_keys(tmp_path / "absent.txt")


def test_cli_warmup_json(dsn, conn, registry, tmp_path, capsys):
    keys = load(conn, registry, vacuum=True)
    hot = tmp_path / "hot.txt"
    hot.write_text("\n".join(k.hex() for k in keys[:10]))
    evict(conn, registry)
    code = cli.main(
        [
            "warmup",
            "--dsn",
            dsn,
            "-d",
            write_definitions(tmp_path / "defs.toml", registry),
            "--hot-keys",
            str(hot),
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["method"] == "pg_prewarm" and out["hot_keys"] == 10
    assert out["hit_ratio_before"] < 0.99 <= out["hit_ratio_after"]
