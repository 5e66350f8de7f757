"""Pools: fixed size, named, autocommit, statements prepared before serving, hot keys read at open."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest
from psycopg import sql

from pgfeatures import AsyncFeatureStore, FeatureStore
from pgfeatures.definitions import demo_registry
from pgfeatures.schema import apply_schema


@pytest.fixture()
def registry(conn, schema):
    reg = demo_registry(n_tables=5, n_features=3, schema=schema)
    apply_schema(conn, reg)
    return reg


def test_every_read_connection_is_warmed_before_it_serves(registry, dsn, conn, schema):
    app = f"pgf-read-{schema}"
    with FeatureStore(
        registry,
        dsn,
        pool_size=3,
        write_pool_size=2,
        read_application_name=app,
        write_application_name=f"pgf-write-{schema}",
    ) as store:
        assert store.ready
        default_sql = store.reader().statements[0].decode()
        batch_sql = store.batch_reader().statement.decode()
        counts = conn.execute(
            "SELECT application_name, count(*) FROM pg_stat_activity WHERE application_name IN (%s, %s) GROUP BY 1 ORDER BY 1",
            [app, f"pgf-write-{schema}"],
        ).fetchall()
        assert counts == [(app, 3), (f"pgf-write-{schema}", 2)]  # fixed-size pools, both full at open
        held = [store.read_pool.getconn() for _ in range(3)]  # every connection of the pool
        try:
            for c in held:
                prepared = {r[0] for r in c.execute("SELECT statement FROM pg_prepared_statements").fetchall()}
                assert default_sql in prepared and batch_sql in prepared
                assert c.autocommit and c.prepare_threshold == 0
        finally:
            for c in held:
                store.read_pool.putconn(c)


def test_not_ready_until_open_and_after_close(registry, dsn):
    store = FeatureStore(registry, dsn, pool_size=1, open=False)
    assert not store.ready
    store.open()
    assert store.ready
    store.close()
    assert not store.ready


def index_scans(conn, schema) -> int:
    return conn.execute(
        "SELECT coalesce(sum(idx_scan), 0) FROM pg_stat_user_tables WHERE schemaname = %s", [schema]
    ).fetchone()[0]


@pytest.mark.parametrize("hot", [False, True])
def test_hot_keys_are_read_at_open(registry, dsn, conn, schema, hot):
    keys = [bytes([i]) * 32 for i in range(10)] if hot else []
    with FeatureStore(registry, dsn, pool_size=1, hot_keys=keys) as store:
        assert store.ready
        with store.connection() as c:
            c.execute("SELECT pg_stat_force_next_flush()")  # make the warm-up's counters visible now
        before = index_scans(conn, schema)
        # warm-up: the single reader (5 lookups) and the batch reader with one key (5);
        # hot keys: one batch of 10 keys over the 5 tables (50)
        assert before == (60 if hot else 10), before


def test_async_store_warms_and_retries_killed_connections(registry, dsn, conn, schema):
    app = f"pgf-aread-{schema}"

    async def run():
        async with AsyncFeatureStore(registry, dsn, pool_size=2, read_application_name=app) as store:
            assert store.ready
            assert await store.get_features(bytes(32), ["t00"]) == {"t00": None}
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", [app])
            for _ in range(4):
                assert await store.get_features(bytes(32), ["t00"]) == {"t00": None}

    asyncio.run(run())


def test_read_sessions_use_generic_plans_and_write_pool_is_optional(registry, dsn):
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=0) as store:
        assert store.write_pool is None
        with store.connection() as c:
            assert c.execute("SHOW plan_cache_mode").fetchone() == ("force_generic_plan",)
        # the batch statement (an array parameter) is planned once, not at every execution
        for n in (1, 3, 7):
            store.get_features_batch([bytes(32)] * n)
        with store.connection() as c:
            stmt = store.batch_reader().statement.decode()
            plans = c.execute(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = %s", [stmt]
            ).fetchone()
            assert plans[1] == 0 and plans[0] >= 4


def test_reads_can_go_to_a_replica_dsn(registry, dsn, conn, schema):
    """read_dsn: the read pool connects there (a replica in production), writes stay on dsn."""
    from conftest import dsn_with

    other = "pgfeatures_test_replica"
    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [other]).fetchone():
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(other)))
        except Exception:  # a concurrent run created it
            pass
    replica = dsn_with(dsn, dbname=other)
    with psycopg.connect(replica, autocommit=True) as rc:
        apply_schema(rc, registry)
        rc.execute(
            sql.SQL("INSERT INTO {} (hashkey, f0, f1, f2) VALUES (%s, 1, 2, 3)").format(sql.Identifier(schema, "t00")),
            [bytes(32)],
        )
    try:
        with FeatureStore(registry, dsn, read_dsn=replica, pool_size=1, write_pool_size=1) as store:
            assert store.get_features(bytes(32), ["t00"]) == {"t00": {"f0": 1.0, "f1": 2.0, "f2": 3.0}}
            with store.connection() as c:
                assert c.execute("SELECT current_database()").fetchone() == (other,)
            with store.write_connection() as c:
                assert c.execute("SELECT current_database()").fetchone() == (conn.info.dbname,)
    finally:
        with psycopg.connect(replica, autocommit=True) as rc:
            rc.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _backends_used_since(conn, app: str, since) -> set[int]:
    """The read backends of ``app`` that ran a statement after ``since`` (a server timestamp)."""
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND query_start > %s", [app, since]
    ).fetchall()
    return {r[0] for r in rows}


@pytest.mark.parametrize("order, used", [("lifo", 1), ("fifo", 4)])
def test_a_sequential_caller_reuses_the_most_recent_connection(registry, dsn, conn, schema, order, used):
    """LIFO (the default): consecutive reads land on the backend the previous read used, not on each
    connection of the pool in turn (psycopg_pool's own order, kept by ``pool_order="fifo"``)."""
    app = f"pgf-lifo-{schema}"
    with FeatureStore(registry, dsn, pool_size=4, read_application_name=app, pool_order=order) as store:
        since = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        for _ in range(12):
            assert store.get_features(bytes(32), ["t00"]) == {"t00": None}
        assert len(_backends_used_since(conn, app, since)) == used
        if order == "lifo":
            with store.connection() as c:  # the connection the next read takes: the one the reads used
                assert _backends_used_since(conn, app, since) == {c.info.backend_pid}


def test_concurrent_reads_still_use_every_connection(registry, dsn, conn, schema):
    app = f"pgf-lifoc-{schema}"

    async def run():
        async with AsyncFeatureStore(registry, dsn, pool_size=4, read_application_name=app) as store:
            assert store.pool_order == "lifo"
            since = conn.execute("SELECT clock_timestamp()").fetchone()[0]
            results = await asyncio.gather(*(store.get_features(bytes(32), ["t00"]) for _ in range(40)))
            assert results == [{"t00": None}] * 40
            assert len(_backends_used_since(conn, app, since)) == 4

    asyncio.run(run())


def test_a_bad_pool_order_is_a_config_error(registry, dsn):
    from pgfeatures.errors import ConfigError

    with pytest.raises(ConfigError, match="pool order"):
        FeatureStore(registry, dsn, pool_order="random", open=False)


def _probe_threads() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name.startswith("pgfeatures-probe") and t.is_alive()]


def test_sync_probes_are_tracked_and_stopped_at_close(registry, dsn):
    """A replica that is down is probed in the background; ``close`` stops the probe and waits for it
    (the sync store's probes are threads: tracked like the asyncio store's tasks, not left running)."""
    from conftest import dsn_with

    down = dsn_with(dsn, host="127.0.0.1", port="1")  # nothing listens there: refused at once
    store = FeatureStore(registry, dsn, read_dsns=[down], pool_size=1, write_pool_size=0, connect_timeout=1)
    try:
        assert store.get_features(bytes(32), ["t00"]) == {"t00": None}  # the primary serves; the replica is probed
        deadline = time.monotonic() + 5
        while not _probe_threads() and time.monotonic() < deadline:
            store.get_features(bytes(32), ["t00"])
            time.sleep(0.05)
        assert _probe_threads() and store.background.running() >= 1
    finally:
        store.close()
    assert _probe_threads() == []


def test_async_probes_are_cancelled_at_close(registry, dsn):
    from conftest import dsn_with

    down = dsn_with(dsn, host="127.0.0.1", port="1")

    async def run():
        store = AsyncFeatureStore(registry, dsn, read_dsns=[down], pool_size=1, write_pool_size=0, connect_timeout=1)
        await store.open()
        background = store.background
        try:
            for _ in range(100):
                await store.get_features(bytes(32), ["t00"])
                if background.running():
                    break
                await asyncio.sleep(0.05)
            assert background.running() >= 1
        finally:
            await store.close()
        assert background.running() == 0

    asyncio.run(run())


def test_hot_keys_of_a_bigint_entity_are_read_at_open(dsn, conn, schema):
    """``hot_keys=[42, ...]`` for tables keyed by a bigint entity: the keys of that entity, read at open
    (they were refused as malformed 32-byte keys)."""
    from pgfeatures.definitions import Entity, FeatureTable, Registry

    user = Entity("user", "bigint")
    registry = Registry.of((FeatureTable.of("u", [("a", "real")], entity=user),), schema=schema)
    apply_schema(conn, registry)
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=0) as store:
        with store.connection() as c:
            c.execute("SELECT pg_stat_force_next_flush()")
        without = index_scans(conn, schema)
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=0, hot_keys=[42, 7, 9]) as store:
        assert store.hot_keys_by_entity == {"user": (42, 7, 9)}
        with store.connection() as c:
            c.execute("SELECT pg_stat_force_next_flush()")
    second_open = index_scans(conn, schema) - without
    assert second_open - without >= 3  # the same warm-up as the first open, and a lookup per hot key
