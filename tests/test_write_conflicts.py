"""Writers of the tables of a materialized service meet in its serving rows: every write path takes
row locks in one order (member rows by key, then serving rows by key; whole-table refreshes lock the
serving table first), so concurrent pushes, batches and loads queue instead of deadlocking. A write
that still conflicts (a deadlock or serialization failure PostgreSQL rolled back) is retried; if it
keeps failing it is a retryable ConflictError, never a permanent database error."""

from __future__ import annotations

import random
import threading
import time

import psycopg
import pyarrow as pa
import pytest

from conftest import wait_for_lock_wait
from pgfeatures import FeatureStore
from pgfeatures.definitions import Entity, FeatureService, FeatureTable, Registry
from pgfeatures.errors import ConflictError
from pgfeatures.load import load
from pgfeatures.materialize.build import materialize
from pgfeatures.schema import apply_schema

USER = Entity("user", "bigint")
KEYS = list(range(1, 400))
NEW = list(range(1000, 3000))  # keys no table has yet: an upsert of them inserts, and fires the INSERT triggers
SECONDS = 6.0


def deadlocks(conn: psycopg.Connection) -> int:
    conn.execute("SELECT pg_stat_force_next_flush()")
    return conn.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]


@pytest.fixture()
def service(conn, schema, dsn) -> Registry:
    tables = [FeatureTable.of(f"t{i}", {"a": "real", "b": "integer"}, entity=USER) for i in range(3)]
    registry = Registry.of(tables, schema, services=[FeatureService("svc", ("t0.*", "t1.*", "t2.*"), materialize=True)])
    apply_schema(conn, registry)
    for t in tables:
        load(
            conn,
            registry,
            t.name,
            pa.table(
                {
                    "user_id": pa.array(KEYS, pa.int64()),
                    "a": pa.array([1.0] * len(KEYS), pa.float32()),
                    "b": pa.array([1] * len(KEYS), pa.int32()),
                }
            ),
        )
    materialize(conn, registry, "svc")
    return registry


@pytest.mark.slow
@pytest.mark.parametrize("new_keys", [False, True], ids=["existing keys", "new keys too"])
def test_concurrent_pushes_batches_and_loads_never_deadlock(service, conn, dsn, new_keys):
    """The issue's mix (7 deadlocks in 25 s on the old code): racing live updates of a few keys, batches
    of many, and loads (upsert and rebuild) into the three tables of one materialized service; with new
    keys too, each upsert both inserts and updates (both statement triggers fire)."""
    pool = KEYS + (NEW if new_keys else [])
    before = deadlocks(conn)
    errors: list[BaseException] = []
    counts = {"push": 0, "batch": 0, "load": 0}
    stop = time.monotonic() + SECONDS

    def pusher(seed: int, size: int, kind: str) -> None:
        rng = random.Random(seed)
        with FeatureStore(service, dsn, pool_size=1, write_pool_size=1) as store:
            while time.monotonic() < stop:
                rows = [(k, {"a": rng.random(), "b": rng.randint(0, 9)}) for k in rng.sample(pool, size)]
                try:
                    store.update_features_batch(f"t{rng.randrange(3)}", rows)
                    counts[kind] += 1
                except BaseException as exc:  # every failure counts against the test
                    errors.append(exc)

    def loader(seed: int) -> None:
        rng = random.Random(seed)
        with psycopg.connect(dsn, autocommit=True) as c:
            while time.monotonic() < stop:
                keys = rng.sample(pool, 150)
                rng.shuffle(keys)
                data = pa.table(
                    {
                        "user_id": pa.array(keys, pa.int64()),
                        "a": pa.array([rng.random() for _ in keys], pa.float32()),
                        "b": pa.array([7] * len(keys), pa.int32()),
                    }
                )
                try:
                    load(c, service, f"t{rng.randrange(3)}", data, strategy=rng.choice(["upsert", "upsert", "rebuild"]))
                    counts["load"] += 1
                except BaseException as exc:
                    errors.append(exc)

    threads = [threading.Thread(target=pusher, args=(i, 3, "push")) for i in range(4)]
    threads += [threading.Thread(target=pusher, args=(10 + i, 60, "batch")) for i in range(2)]
    threads += [threading.Thread(target=loader, args=(20 + i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SECONDS + 120)
    assert not errors, [f"{type(e).__name__}: {e}" for e in errors[:5]]
    assert all(counts.values()), counts
    if not new_keys:
        assert deadlocks(conn) - before == 0, counts
    # With new keys, two live upserts of different tables can still meet: each fires an INSERT pass then an
    # UPDATE pass over the serving rows (two runs in key order). PostgreSQL breaks the rare cycle, and the
    # rolled-back update is sent again: no request fails (the assertion above), and that is what is left.


def test_a_live_update_chosen_as_a_deadlock_victim_is_sent_again(service, conn, dsn):
    """Another session holds key 2; the update of keys 1 and 2 takes 1 and waits for 2; the other session
    then waits for 1: a cycle PostgreSQL breaks by rolling the update back. It certainly did not apply, so
    it is sent again (and waits its turn) instead of failing; a conflict that outlasts the retries is a
    ConflictError, HTTP 503 with Retry-After."""
    from pgfeatures.server.errors import classify

    table = psycopg.sql.Identifier(service.schema, "t0")
    before = deadlocks(conn)
    with FeatureStore(service, dsn, pool_size=1, write_pool_size=1) as store, psycopg.connect(dsn) as other:
        other.execute(psycopg.sql.SQL("UPDATE {} SET b = 5 WHERE user_id = 2").format(table))  # holds key 2
        result: list[BaseException | int] = []

        def write() -> None:
            try:
                result.append(store.update_features_batch("t0", [(1, {"b": 9}), (2, {"b": 9})]))
            except BaseException as exc:
                result.append(exc)

        thread = threading.Thread(target=write)
        thread.start()
        wait_for_lock_wait(dsn, application_name="pgfeatures-write")  # the update holds key 1 and waits for key 2
        other.execute(psycopg.sql.SQL("UPDATE {} SET b = 6 WHERE user_id = 1").format(table))  # the cycle
        other.rollback()
        thread.join(30)
    assert result == [2], result
    assert deadlocks(conn) - before == 1
    rows = conn.execute(
        psycopg.sql.SQL("SELECT user_id, b FROM {} WHERE user_id IN (1, 2) ORDER BY 1").format(table)
    ).fetchall()
    assert rows == [(1, 9), (2, 9)]
    error = classify(ConflictError("rolled back", "40P01"))
    assert (error.status, error.type, error.retryable) == (503, "conflict", True)
