"""The store calls each failure what it is: drift is not an outage, a timeout is not a lost
connection, a closed or read-only store says so; one broken table breaks only the requests that
touch it (house issue item 1 and 2, production issue item 2)."""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import psycopg
import pytest
from psycopg import sql

from conftest import dsn_with
from pgfeatures import (
    AsyncFeatureStore,
    AuthenticationError,
    FeatureStore,
    QueryTimeoutError,
    ReadOnlyStoreError,
    SchemaDriftError,
    StoreClosedError,
)
from pgfeatures.definitions import FeatureTable, Registry, demo_registry
from pgfeatures.errors import ConnectionSettingsError
from pgfeatures.reader import ReaderCache
from pgfeatures.schema import apply_schema

KEY = bytes(32)


def registry_with_extra_column(schema: str) -> Registry:
    """t00..t02 as created, but t01 defined with a feature the live table lacks."""
    base = demo_registry(n_tables=3, n_features=2, schema=schema)
    tables = dict(base.tables)
    tables["t01"] = FeatureTable.of("t01", {"f0": "real", "f1": "real", "f9": "real"})
    return Registry(tables, schema, source="changed.toml")


def test_open_fails_at_once_with_the_drift_not_an_outage(conn, schema, dsn):
    apply_schema(conn, demo_registry(n_tables=3, n_features=2, schema=schema))
    started = time.monotonic()
    with pytest.raises(SchemaDriftError) as caught:  # a connect timeout of a minute: waiting for it would show
        FeatureStore(registry_with_extra_column(schema), dsn, pool_size=1, write_pool_size=0, connect_timeout=60)
    assert time.monotonic() - started < 30  # at once: not after a connect timeout
    message = str(caught.value)
    assert "t01" in message and "column f9 (real) is missing" in message
    assert "shows the change and `pgfeatures apply -d " in message
    assert caught.value.problems == {"t01": ["column f9 (real) is missing"]}


def test_isolate_serves_the_other_tables_and_names_the_broken_one(conn, schema, dsn):
    apply_schema(conn, demo_registry(n_tables=3, n_features=2, schema=schema))
    with FeatureStore(
        registry_with_extra_column(schema), dsn, pool_size=2, write_pool_size=0, on_drift="isolate"
    ) as store:
        assert store.get_features(KEY, ["t00", "t02"]) == {"t00": None, "t02": None}
        with pytest.raises(SchemaDriftError, match="t01: column f9"):
            store.get_features(KEY, ["t00", "t01"])
        with pytest.raises(SchemaDriftError, match="t01"):
            store.get_features(KEY)  # all tables: touches t01
        assert store.status()["broken_tables"] == {"t01": ["column f9 (real) is missing"]}
        # fixed behind the store's back: served again after the next re-check
        conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN f9 real").format(sql.Identifier(schema, "t01")))
        deadline = time.monotonic() + 5
        while True:
            try:
                assert store.get_features(KEY, ["t01"]) == {"t01": None}
                break
            except SchemaDriftError:
                assert time.monotonic() < deadline, "t01 still broken 5 s after it was fixed"
                time.sleep(0.2)
        assert store.status()["broken_tables"] == {}


def test_a_table_renamed_while_serving_breaks_only_its_requests(conn, schema, dsn):
    registry = demo_registry(n_tables=3, n_features=2, schema=schema)
    apply_schema(conn, registry)
    with FeatureStore(registry, dsn, pool_size=2, write_pool_size=0, on_drift="isolate") as store:
        assert store.get_features(KEY)["t02"] is None
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO t02_x").format(sql.Identifier(schema, "t02")))
        with pytest.raises(SchemaDriftError, match=rf"t02: table {schema}\.t02 does not exist"):
            store.get_features(KEY)
        assert store.get_features(KEY, ["t00", "t01"]) == {"t00": None, "t01": None}
        assert "t02" in store.status()["broken_tables"]
        # every connection replaced (as after a restart): the new ones still warm up and serve t00
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgfeatures-read' "
            "AND datname = current_database()"
        )
        assert store.get_features(KEY, ["t00"]) == {"t00": None}
        assert store.get_features_batch([KEY, KEY], ["t01"]) == [{"t01": None}] * 2
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO t02").format(sql.Identifier(schema, "t02_x")))
        deadline = time.monotonic() + 10  # served again at the next re-check (every second)
        while True:
            try:
                assert store.get_features(KEY)["t02"] is None
                break
            except SchemaDriftError:
                assert time.monotonic() < deadline, "t02 still broken 10 s after it came back"
                time.sleep(0.05)


def test_a_missing_table_at_open_is_named(conn, schema, dsn):
    apply_schema(conn, demo_registry(n_tables=2, n_features=1, schema=schema))
    with pytest.raises(
        SchemaDriftError,
        match=rf"t02: table {schema}\.t02 does not exist.*apply -d <definitions>` makes it, online \(missing tables created",
    ):
        FeatureStore(demo_registry(n_tables=3, n_features=1, schema=schema), dsn, pool_size=1)


def test_with_every_table_missing_isolate_opens_and_each_read_names_the_drift(schema, dsn):
    registry = demo_registry(n_tables=2, n_features=2, schema=schema)  # never created
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=0, on_drift="isolate") as store:
        assert store.ready
        with pytest.raises(SchemaDriftError, match="t00.*does not exist"):
            store.get_features(KEY, ["t00"])
        with pytest.raises(SchemaDriftError, match="does not exist"):
            store.get_features_batch([KEY])


def test_statement_timeout_is_a_timeout_not_an_outage(conn, schema, dsn):
    registry = demo_registry(n_tables=1, n_features=1, schema=schema)
    apply_schema(conn, registry)
    with FeatureStore(
        registry, dsn_with(dsn, options="-c statement_timeout=200"), pool_size=1, write_pool_size=0
    ) as store:
        with psycopg.connect(dsn) as locker:  # a transaction holding the table: the read waits, then is cancelled
            locker.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema, "t00")))
            with pytest.raises(QueryTimeoutError, match="statement timeout"):
                store.get_features(KEY)
        assert store.get_features(KEY) == {"t00": None}  # the connection still serves


def test_closed_and_read_only_stores_say_so(conn, schema, dsn):
    registry = demo_registry(n_tables=1, n_features=1, schema=schema)
    apply_schema(conn, registry)
    store = FeatureStore(registry, dsn, pool_size=1, write_pool_size=0)
    with pytest.raises(ReadOnlyStoreError, match="no write pool"):
        store.update_features(KEY, "t00", {"f0": 1.0})
    store.close()
    with pytest.raises(StoreClosedError, match="not open"):
        store.get_features(KEY)
    never_opened = FeatureStore(registry, dsn, open=False)
    with pytest.raises(StoreClosedError):
        never_opened.get_features(KEY)
    with pytest.raises(StoreClosedError):
        never_opened.update_features(KEY, "t00", {"f0": 1.0})


def test_a_role_the_server_does_not_have_is_a_settings_error_not_a_credential_to_renew(conn, schema, dsn):
    # (A wrong password is an AuthenticationError: tests/test_clusters.py, with password logins.)
    registry = demo_registry(n_tables=1, n_features=1, schema=schema)
    with pytest.raises(ConnectionSettingsError, match="has no role 'nobody_here'") as info:
        FeatureStore(registry, dsn_with(dsn, user="nobody_here"), pool_size=1, connect_timeout=2)
    assert not isinstance(info.value, AuthenticationError)


def test_async_store_cannot_open_in_its_constructor(schema, dsn):
    with pytest.raises(TypeError, match="await store.open"):
        AsyncFeatureStore(demo_registry(n_tables=1, schema=schema), dsn, open=True)


def test_async_store_isolates_a_broken_table(conn, schema, dsn):
    apply_schema(conn, demo_registry(n_tables=3, n_features=2, schema=schema))

    async def run():
        async with AsyncFeatureStore(
            registry_with_extra_column(schema), dsn, pool_size=1, write_pool_size=0, on_drift="isolate"
        ) as store:
            assert await store.get_features(KEY, ["t00"]) == {"t00": None}
            with pytest.raises(SchemaDriftError, match="t01"):
                await store.get_features(KEY, ["t01"])
        with pytest.raises(SchemaDriftError):
            await AsyncFeatureStore(registry_with_extra_column(schema), dsn, pool_size=1).open()

    asyncio.run(run())


def test_reader_cache_is_thread_safe_and_bounded_in_statements(schema):
    registry = demo_registry(n_tables=8, n_features=2, schema=schema)
    cache = ReaderCache(registry, max_statements=20)
    shapes = [[f"t{i:02d}" for i in range(n)] for n in range(1, 9)]
    errors: list[BaseException] = []

    def hammer(seed: int) -> None:
        try:
            for i in range(400):
                tables = shapes[(i * 7 + seed) % len(shapes)]
                strategy = ("single", "pipeline", "sequential")[(i + seed) % 3]
                reader = cache.reader(tables, None, strategy)
                assert reader.tables == tuple(tables)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=hammer, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[0]
    assert cache.statements <= 20


def _wait_for_waiters(pool, n: int = 1) -> None:
    deadline = time.monotonic() + 10
    while pool.get_stats().get("requests_waiting", 0) < n:
        assert time.monotonic() < deadline, "the request never waited for a connection"
        time.sleep(0.01)


def test_requests_waiting_for_a_connection_when_the_store_closes_get_store_closed(conn, schema, dsn):
    """close() fails the reads (and writes) waiting for a pooled connection: psycopg_pool's PoolClosed
    reaches the caller as StoreClosedError, at once (not after acquire_timeout)."""
    registry = demo_registry(n_tables=1, n_features=1, schema=schema)
    apply_schema(conn, registry)
    store = FeatureStore(registry, dsn, pool_size=1, write_pool_size=1, acquire_timeout=30)
    read_pool, write_pool = store.read_pool, store.write_pool
    held = read_pool.getconn(), write_pool.getconn()  # the only connections: the next requests wait for them
    errors: dict[str, BaseException] = {}

    def call(name: str, request) -> None:
        try:
            request()
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors[name] = exc

    threads = [
        threading.Thread(target=call, args=("read", lambda: store.get_features(KEY))),
        threading.Thread(target=call, args=("batch", lambda: store.get_features_batch([KEY, KEY]))),
        threading.Thread(target=call, args=("write", lambda: store.update_features(KEY, "t00", {"f0": 1.0}))),
    ]
    for t in threads:
        t.start()
    _wait_for_waiters(read_pool, 2)
    _wait_for_waiters(write_pool, 1)
    started = time.monotonic()
    store.close()
    for t in threads:
        t.join(10)
    assert time.monotonic() - started < 10  # not the 30 s acquire_timeout
    read_pool.putconn(held[0])
    write_pool.putconn(held[1])
    assert sorted(errors) == ["batch", "read", "write"]
    for name, error in errors.items():
        assert type(error) is StoreClosedError and "closed" in str(error), (name, error)


def test_reads_racing_close_get_store_closed_and_nothing_else(conn, schema, dsn):
    """Requests in flight while close() runs either succeed or fail with StoreClosedError: never
    PoolClosed, a psycopg error, or an AttributeError of a half-closed store."""
    registry = demo_registry(n_tables=2, n_features=1, schema=schema)
    apply_schema(conn, registry)
    store = FeatureStore(registry, dsn, pool_size=2, write_pool_size=1, acquire_timeout=5)
    outcomes: list[BaseException | None] = []
    served = threading.Event()

    def hammer(i: int) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if i % 3 == 0:
                    store.get_features_batch([KEY] * 8)
                elif i % 3 == 1:
                    store.get_features(KEY, ["t01"], strategy="pipeline")
                else:
                    store.update_features(KEY, "t00", {"f0": float(i)})
                served.set()
            except BaseException as exc:  # noqa: BLE001 - checked below
                outcomes.append(exc)
                return
        outcomes.append(None)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    assert served.wait(10)
    time.sleep(0.1)
    store.close()
    for t in threads:
        t.join(30)
    assert len(outcomes) == 6
    for outcome in outcomes:
        assert type(outcome) is StoreClosedError, repr(outcome)


def test_async_requests_racing_close_get_store_closed(conn, schema, dsn):
    registry = demo_registry(n_tables=1, n_features=1, schema=schema)
    apply_schema(conn, registry)

    async def run() -> list[BaseException | dict]:
        store = AsyncFeatureStore(registry, dsn, pool_size=1, write_pool_size=1, acquire_timeout=30)
        await store.open()
        pool = store.read_pool
        held = await pool.getconn()
        waiting = [
            asyncio.ensure_future(store.get_features(KEY)),
            asyncio.ensure_future(store.get_features_batch([KEY])),
        ]
        while pool.get_stats().get("requests_waiting", 0) < 2:
            await asyncio.sleep(0.01)
        await store.close()
        results = await asyncio.gather(*waiting, store.get_features(KEY), store.ping(), return_exceptions=True)
        await pool.putconn(held)
        return results

    results = asyncio.run(asyncio.wait_for(run(), 20))
    assert len(results) == 4
    for r in results:
        assert type(r) is StoreClosedError, repr(r)


def test_apply_adds_a_missing_updated_at_as_init_creates_it(conn, schema, dsn):
    """A table someone created without ``updated_at``: the apply the error names, run on a table with
    rows, makes it what ``init`` would have made (NOT NULL, stamped), so reads and newest-wins updates
    work on the old rows too."""
    from pgfeatures.evolve.apply import apply

    registry = demo_registry(n_tables=1, n_features=1, schema=schema)
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("CREATE TABLE {} (hashkey bytea PRIMARY KEY, f0 real)").format(sql.Identifier(schema, "t00")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, 1.5)").format(sql.Identifier(schema, "t00")), [KEY])
    with pytest.raises(SchemaDriftError) as caught:
        FeatureStore(registry, dsn, pool_size=1, write_pool_size=0)
    assert "`pgfeatures apply -d <definitions>` makes it" in str(caught.value)
    result = apply(conn, registry)
    assert [c.action for c in result.plan.changes] == ["add column"]
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=1) as store:
        assert store.get_features(KEY) == {"t00": {"f0": 1.5}}
        assert store.update_features(KEY, "t00", {"f0": 2.5, "updated_at": 1}) == 0  # the stored row is newer
        server_now = conn.execute("SELECT now()").fetchone()[0]
        assert (
            store.update_features(KEY, "t00", {"f0": 3.5, "updated_at": server_now}) == 1
        )  # a NULL stamp would skip it
        assert store.get_features(KEY) == {"t00": {"f0": 3.5}}


def test_a_table_without_its_key_column_is_not_offered_an_alter(conn, schema, dsn):
    registry = demo_registry(n_tables=1, n_features=1, schema=schema)
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute(
        sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, f0 real, updated_at integer NOT NULL DEFAULT 0)").format(
            sql.Identifier(schema, "t00")
        )
    )
    with pytest.raises(SchemaDriftError) as caught:
        FeatureStore(registry, dsn, pool_size=1, write_pool_size=0)
    message = str(caught.value)
    assert "column hashkey (bytea) is missing" in message
    assert (
        "t00 lack(s) the entity's key column: point the entity's key_column at the table's key, or recreate" in message
    )
