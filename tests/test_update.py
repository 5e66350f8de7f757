"""Live updates: upsert semantics, partial updates, batches, validation before any I/O, both stores."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from pgfeatures import AsyncFeatureStore, FeatureStore
from pgfeatures.errors import (
    DatabaseError,
    DatabaseUnavailableError,
    FeatureValueError,
    KeyFormatError,
    UnknownFeatureError,
    UnknownTableError,
    WriteOutcomeUnknownError,
)
from pgfeatures.load import load
from pgfeatures.schema import apply_schema
from pgfeatures.write import plan_updates
from test_load import MIXED, contents, keys_for, make_registry, snapshot

K = keys_for(range(10))


@pytest.fixture()
def store(dsn, conn, schema):
    registry = make_registry(schema)
    apply_schema(conn, registry)
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=1) as s:
        yield s


def row(conn, schema, key, table="mixed", columns=(*MIXED, "updated_at")):
    return dict(zip(columns, contents(conn, schema, table, list(columns)).get(key, (None,) * len(columns))))


def test_insert_then_partial_update(store, conn, schema):
    t0 = int(time.time())
    store.update_features(K[0], "mixed", {"r": 1.5, "s": 7, "ok": True})
    first = row(conn, schema, K[0])
    assert {k: first[k] for k in MIXED} == {"r": 1.5, "d": None, "s": 7, "i": None, "b": None, "ok": True}
    assert t0 <= first["updated_at"] <= time.time() + 1  # the server rounds now() to whole seconds
    # an older event time than the stored row's: kept out (newest wins) unless asked to overwrite
    assert store.update_features(K[0].hex(), "mixed", {"i": -5, "updated_at": 1_700_000_000}) == 0
    assert row(conn, schema, K[0]) == first
    assert store.update_features(K[0].hex(), "mixed", {"i": -5, "updated_at": 1_700_000_000}, overwrite_newer=True) == 1
    second = row(conn, schema, K[0])
    assert second == {**first, "i": -5, "updated_at": 1_700_000_000}  # other columns kept
    store.update_features(K[0], "mixed", {"s": None})
    third = row(conn, schema, K[0])
    assert third["s"] is None and third["r"] == 1.5 and third["updated_at"] >= t0  # stamped again


def test_batch_with_mixed_column_sets_and_repeated_keys(store, conn, schema):
    written = store.update_features_batch(
        "mixed",
        [
            (K[1], {"r": 1.0, "b": 2**62}),
            (K[2], {"r": 2.0, "b": -1}),
            (K[3], {"ok": False}),
            (K[1], {"b": 5, "d": 0.25}),  # merged into the first K[1] entry, later values win
        ],
    )
    assert written == 3
    got = contents(conn, schema, "mixed", list(MIXED))
    assert got == {
        K[1]: (1.0, 0.25, None, None, 5, None),
        K[2]: (2.0, None, None, None, -1, None),
        K[3]: (None, None, None, None, None, False),
    }
    assert store.update_features_batch("plain", {K[4]: {"f0": 1}, K[5]: {"f0": 2}}) == 2
    assert contents(conn, schema, "plain", ["f0", "f1"]) == {K[4]: (1.0, None), K[5]: (2.0, None)}


def test_one_statement_per_column_set(store):
    plans = plan_updates(store.registry, "mixed", {K[i]: {"r": float(i), "s": i} for i in range(5)})
    assert len(plans) == 1 and [len(p) for p in plans[0][1]] == [5, 5, 5]
    plans = plan_updates(store.registry, "mixed", [(K[0], {"s": 1, "r": 2.0}), (K[1], {"r": 1.0})])
    assert [tuple(f.name for f in u.features) for u, _ in plans] == [("r", "s"), ("r",)]


def test_writes_use_the_write_pool(store):
    reads, writes = (
        store.read_pool.get_stats().get("requests_num", 0),
        store.write_pool.get_stats().get("requests_num", 0),
    )
    store.update_features(K[6], "plain", {"f0": 3.0})
    assert store.write_pool.get_stats()["requests_num"] == writes + 1
    assert store.read_pool.get_stats().get("requests_num", 0) == reads
    assert store.get_features(K[6], ["plain"], {"plain": ["f0", "f1"]}) == {"plain": {"f0": 3.0, "f1": None}}


@pytest.mark.parametrize(
    "table,values,error,message",
    [
        ("mixed", {"r": "high"}, FeatureValueError, "mixed.r (real): 'high' is not a number"),
        ("mixed", {"i": True}, FeatureValueError, "mixed.i (integer): True is not a number"),
        ("mixed", {"ok": 1}, FeatureValueError, "mixed.ok (boolean): 1 is not a boolean"),
        ("mixed", {"s": 40000}, FeatureValueError, "mixed.s (smallint): 40000 is out of range (-32768..32767)"),
        ("mixed", {"i": 2.5}, FeatureValueError, "mixed.i (integer): 2.5 is not an integer"),
        ("mixed", {"r": 1e39}, FeatureValueError, "mixed.r (real): 1e+39 is out of range for real"),
        ("mixed", {"d": float("nan")}, FeatureValueError, "mixed.d (double precision): nan is NaN"),
        ("mixed", {"updated_at": None}, FeatureValueError, "mixed.updated_at: cannot be NULL"),
        (
            "mixed",
            {"nope": 1},
            UnknownFeatureError,
            "unknown feature(s) in table 'mixed': nope; valid features: r, d, s, i, b, ok, updated_at",
        ),
        ("mixed", {}, FeatureValueError, "no values given"),
        ("missing", {"r": 1}, UnknownTableError, "unknown feature table(s): missing"),
    ],
)
def test_invalid_values_write_nothing(store, conn, schema, table, values, error, message):
    store.update_features(K[0], "mixed", {"r": 1.0})
    before = snapshot(conn, schema, "mixed")
    with pytest.raises(error) as info:  # the bad row comes last: the good ones before it are not written either
        store.update_features_batch(table, [(K[7], {"r": 2.0}), (K[8], values)])
    assert message in str(info.value)
    assert snapshot(conn, schema, "mixed") == before


def test_a_batch_is_one_transaction(store, conn, schema):
    """A database error in the second statement of a mixed batch undoes the first; the connection stays usable."""
    conn.execute(
        sql.SQL("ALTER TABLE {} ADD CONSTRAINT small_s CHECK (s < 100)").format(sql.Identifier(schema, "mixed"))
    )
    before = snapshot(conn, schema, "mixed")
    with pytest.raises(DatabaseError, match="violates check constraint") as caught:
        store.update_features_batch("mixed", [(K[0], {"r": 1.0}), (K[1], {"s": 500})])
    assert caught.value.sqlstate == "23514"
    assert snapshot(conn, schema, "mixed") == before
    store.update_features_batch("mixed", [(K[0], {"r": 1.0}), (K[1], {"s": 5})])
    assert contents(conn, schema, "mixed", ["r", "s"]) == {K[0]: (1.0, None), K[1]: (None, 5)}


def test_bad_keys_and_nan_policy(store, conn, schema):
    with pytest.raises(KeyFormatError, match="64 hex characters"):
        store.update_features("abc", "mixed", {"r": 1.0})
    store.update_features(K[9], "mixed", {"r": float("nan"), "d": 1.0}, nan="null")
    assert row(conn, schema, K[9])["r"] is None
    with pytest.raises(FeatureValueError, match="invalid nan='zero'"):
        store.update_features(K[9], "mixed", {"r": 1.0}, nan="zero")


def test_async_store(dsn, conn, schema):
    registry = make_registry(schema)
    apply_schema(conn, registry)

    async def run() -> None:
        async with AsyncFeatureStore(registry, dsn, pool_size=1, write_pool_size=1) as store:
            await store.update_features(K[0], "plain", {"f0": 1.0, "f3": 4.0})
            assert (
                await store.update_features_batch(
                    "plain", [(K[0], {"f1": 2.0}), (K[1], {"f2": 3.0}), (K[2], {"f0": 5.0})]
                )
                == 3
            )
            assert (await store.get_features(K[0], ["plain"]))["plain"] == {"f0": 1.0, "f1": 2.0, "f2": None, "f3": 4.0}

    asyncio.run(run())
    assert contents(conn, schema, "plain", ["f0", "f1", "f2", "f3"]) == {
        K[0]: (1.0, 2.0, None, 4.0),
        K[1]: (None, None, 3.0, None),
        K[2]: (5.0, None, None, None),
    }


def test_concurrent_update_during_rebuild_is_not_lost(dsn, conn, schema, store):
    """A live update racing a rebuild waits for its lock and lands in the new table."""
    n = 3000
    data = pa.table(
        {"hashkey": pa.array(keys_for(range(n)), pa.binary(32)), **{f"f{j}": np.zeros(n, np.float32) for j in range(4)}}
    )
    load(conn, store.registry, "plain", data)
    started = threading.Event()

    def update_when_rebuilding(p):
        if p.phase == "copying untouched rows" and not started.is_set():
            started.set()

    with psycopg.connect(dsn, autocommit=True) as loader:
        done = []
        thread = threading.Thread(
            target=lambda: done.append(
                load(
                    loader,
                    store.registry,
                    "plain",
                    data.slice(0, 1000),
                    strategy="rebuild",
                    progress=update_when_rebuilding,
                )
            )
        )
        thread.start()
        started.wait(20)
        store.update_features(keys_for([2500])[0], "plain", {"f0": 42.0})  # waits if the rebuild holds its lock
        thread.join(30)
    assert done and done[0].strategy == "rebuild"
    assert contents(conn, schema, "plain", ["f0"])[keys_for([2500])[0]] == (42.0,)


def _kill_writers(conn, store) -> int:
    """Terminate the store's (one) write connection and wait until its backend has exited (so the
    server's FATAL has reached the idle pooled connection); other test runs' connections are left alone."""
    with store.write_connection() as writer:
        pid = writer.info.backend_pid
    rows = conn.execute("SELECT pg_terminate_backend(%s, 5000)", [pid]).fetchall()
    return sum(1 for r in rows if r[0])


@pytest.mark.parametrize("mixed_batch", [False, True], ids=["one statement", "pipelined transaction"])
def test_an_update_after_its_idle_connection_was_killed_goes_to_a_live_one(store, conn, schema, mixed_batch):
    store.update_features(K[0], "mixed", {"r": 1.0})
    assert _kill_writers(conn, store) == 1
    rows = [(K[4], {"r": 4.0}), (K[5], {"s": 5})] if mixed_batch else [(K[4], {"r": 4.0})]
    assert store.update_features_batch("mixed", rows) == len(rows)  # no error: the dead one found before sending
    assert row(conn, schema, K[4])["r"] == 4.0


@pytest.mark.parametrize("mixed_batch", [False, True], ids=["one statement", "pipelined transaction"])
def test_an_update_whose_connection_is_lost_after_sending_is_not_sent_again(store, conn, dsn, schema, mixed_batch):
    """The writer's statement waits on a row lock; its backend is terminated meanwhile. The outcome
    is unknown to the client (in general the server may have committed before the connection
    ended), so the error says so, and the update is not resent: once the lock is released, nothing
    was written (a resend would wait on the lock and then write)."""
    store.update_features(K[7], "mixed", {"r": 1.0, "s": 1})
    rows = [(K[7], {"r": 2.0}), (K[8], {"s": 8})] if mixed_batch else [(K[7], {"r": 2.0})]
    outcome: list[BaseException | int] = []
    with psycopg.connect(dsn) as locker:
        locker.execute(
            sql.SQL("SELECT 1 FROM {} WHERE hashkey = %s FOR UPDATE").format(sql.Identifier(schema, "mixed")), [K[7]]
        )
        with store.write_connection() as writer:
            pid = writer.info.backend_pid

        def write() -> None:
            try:
                outcome.append(store.update_features_batch("mixed", rows))
            except BaseException as exc:  # noqa: BLE001 - asserted below
                outcome.append(exc)

        thread = threading.Thread(target=write)
        thread.start()
        deadline = time.monotonic() + 10
        while not conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'", [pid]
        ).fetchall():
            assert time.monotonic() < deadline, "the update never waited on the lock"
            time.sleep(0.01)
        conn.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])
        thread.join(5)  # a resend would wait on the lock: still running
        still_waiting = thread.is_alive()
        locker.rollback()
    thread.join(10)
    assert not still_waiting, "the update was sent again after its connection was lost"
    assert len(outcome) == 1 and isinstance(outcome[0], WriteOutcomeUnknownError), outcome
    assert isinstance(outcome[0], DatabaseUnavailableError)
    assert "may or may not have been applied" in str(outcome[0]) and "was not sent again" in str(outcome[0])
    assert row(conn, schema, K[7])["r"] == 1.0 and row(conn, schema, K[8])["s"] is None  # aborted, and not resent
    assert store.update_features_batch("mixed", rows) == len(rows)  # the store writes again at once
    assert row(conn, schema, K[7])["r"] == 2.0


def test_a_load_after_its_connection_was_killed_is_retried_once(store, conn, schema):
    data = pa.table({"hashkey": pa.array([K[6]], pa.binary(32)), "r": pa.array([6.0], pa.float32())})
    store.write_features("mixed", data, partial=True)
    assert _kill_writers(conn, store) == 1
    store.write_features("mixed", data, partial=True)  # no error: the dead connection is replaced
    assert row(conn, schema, K[6])["r"] == 6.0


def test_newest_wins_counts_what_it_skips(store, conn, schema):
    store.update_features_batch(
        "mixed", [(K[0], {"r": 1.0, "updated_at": 2000}), (K[1], {"r": 1.0, "updated_at": 2000})]
    )
    result = store.update_features_batch(
        "mixed",
        [
            (K[0], {"r": 2.0, "updated_at": 1999}),  # older: skipped
            (K[1], {"r": 3.0, "updated_at": 2000}),  # same time: written
            (K[2], {"r": 4.0, "updated_at": 5}),  # new key: written
            (K[3], {"s": 1}),  # no event time: stamped now, always written
        ],
    )
    assert (int(result), result.skipped, result.keys) == (3, 1, 4)
    got = contents(conn, schema, "mixed", ["r", "updated_at"])
    assert got[K[0]] == (1.0, 2000) and got[K[1]] == (3.0, 2000) and got[K[2]] == (4.0, 5)


def test_racing_writers_end_with_the_newest_row(dsn, conn, schema):
    """Writers of the same keys with different event times, committing in any order: the newest stays."""
    registry = make_registry(schema)
    apply_schema(conn, registry)
    keys = K[:5]
    stamps = list(range(1000, 1040))
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def writer(offset: int) -> None:
        try:
            with FeatureStore(registry, dsn, pool_size=1, write_pool_size=1) as store:
                barrier.wait()
                for i in range(
                    offset, len(stamps), 4
                ):  # each writer owns a quarter of the timestamps, in a shuffled order
                    t = stamps[(i * 7) % len(stamps)]
                    store.update_features_batch("mixed", [(k, {"i": t, "updated_at": t}) for k in keys])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(o,)) for o in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    got = contents(conn, schema, "mixed", ["i", "updated_at"])
    assert {k: got[k] for k in keys} == {k: (max(stamps), max(stamps)) for k in keys}


def test_a_live_connection_on_a_descriptor_past_fd_setsize_is_not_taken_for_dead(dsn):
    """A service with many sockets gets connections on descriptors above 1024, where select()
    cannot look: the liveness check must still say alive (else every write would reconnect)."""
    import os
    import resource

    from pgfeatures.connections import went_away

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1100:
        pytest.skip(f"the descriptor limit ({hard}) is below 1100 here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1100), hard))
    fillers = []
    try:
        while (fd := os.open(os.devnull, os.O_RDONLY)) < 1030:
            fillers.append(fd)
        os.close(fd)
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.pgconn.socket >= 1024
            assert not went_away(conn)
            conn.execute("SELECT 1")
            assert not went_away(conn)
            other = psycopg.connect(dsn, autocommit=True)
            try:
                conn.execute("SELECT pg_terminate_backend(%s, 5000)", [other.info.backend_pid])
                assert went_away(other)  # the server's FATAL and end of file are waiting
            finally:
                other.close()
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
