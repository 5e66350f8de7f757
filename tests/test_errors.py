"""Bad input gets a clear error before any I/O; a dead database a clear error within the connect timeout."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from conftest import dsn_with
from pgfeatures import (
    AsyncFeatureStore,
    DatabaseUnavailableError,
    FeatureStore,
    KeyFormatError,
    UnknownFeatureError,
    UnknownStrategyError,
    UnknownTableError,
)
from pgfeatures.definitions import demo_registry
from pgfeatures.schema import apply_schema


@pytest.fixture()
def store(conn, schema, dsn):
    registry = demo_registry(n_tables=3, n_features=2, schema=schema)
    apply_schema(conn, registry)
    with FeatureStore(registry, dsn, pool_size=1) as s:
        yield s


@pytest.mark.parametrize(
    "key, message",
    [
        (b"x" * 31, "must be 32 bytes, got 31"),
        (b"x" * 33, "must be 32 bytes, got 33"),
        ("ab" * 31, "64 hex characters, got 62"),
        ("zz" * 32, "non-hex"),
        ("ab " * 21 + "a", "non-hex"),  # 64 characters with whitespace, which bytes.fromhex would skip
        (12345, "got int"),
        (None, "got NoneType"),
    ],
)
def test_bad_keys(store, key, message):
    with pytest.raises(KeyFormatError, match=message):
        store.get_features(key)


def test_bad_key_in_batch_names_its_position(store):
    with pytest.raises(KeyFormatError, match=r"keys\[2\]"):
        store.get_features_batch([bytes(32), bytes(32), b"short"])
    with pytest.raises(KeyFormatError, match="sequence of keys"):
        store.get_features_batch(bytes(32))


def test_unknown_table_and_feature(store):
    with pytest.raises(UnknownTableError, match="valid tables: t00, t01, t02"):
        store.get_features(bytes(32), ["t00", "users"])
    with pytest.raises(UnknownFeatureError, match="valid features: f0, f1, updated_at"):
        store.get_features(bytes(32), ["t01"], {"t01": ["f7"]})
    with pytest.raises(UnknownStrategyError, match="valid strategies: single, union, join, pipeline, sequential"):
        store.get_features(bytes(32), strategy="magic")


def test_refused_connection_is_reported_fast(dsn):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    bad = dsn_with(dsn, host="127.0.0.1", port=port)
    t0 = time.monotonic()
    with pytest.raises(DatabaseUnavailableError, match=f"cannot reach the database within 2s at .*port={port}"):
        FeatureStore(demo_registry(n_tables=1), bad, connect_timeout=2)
    assert time.monotonic() - t0 < 10


def test_silent_server_times_out_at_connect_timeout(dsn):
    """A server that accepts TCP but never answers: the error comes at the connect timeout, not never."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(DatabaseUnavailableError, match="within 2s"):
            FeatureStore(demo_registry(n_tables=1), dsn_with(dsn, host="127.0.0.1", port=port), connect_timeout=2)
        elapsed = time.monotonic() - t0
        assert 1.5 < elapsed < 15
    finally:
        stop.set()
        t.join()
        listener.close()
        for s in held:
            s.close()


def test_async_store_reports_unreachable_database(dsn):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def run():
        store = AsyncFeatureStore(
            demo_registry(n_tables=1), dsn_with(dsn, host="127.0.0.1", port=port), connect_timeout=2
        )
        with pytest.raises(DatabaseUnavailableError, match="cannot reach the database"):
            await store.open()
        assert not store.ready

    asyncio.run(run())


def test_exhausted_pool_fails_within_acquire_timeout(conn, schema, dsn):
    registry = demo_registry(n_tables=1, n_features=1, schema=schema)
    apply_schema(conn, registry)
    with FeatureStore(registry, dsn, pool_size=1, acquire_timeout=0.5) as store:
        with store.connection():  # hold the only connection
            with pytest.raises(DatabaseUnavailableError, match="no database connection available within 0.5s"):
                store.get_features(bytes(32))
        assert store.get_features(bytes(32)) == {"t00": None}


def test_store_recovers_after_backends_are_killed(conn, schema, dsn):
    """Pooled connections killed server-side (a restart, a failover): reads retry once on a fresh connection."""
    registry = demo_registry(n_tables=1, n_features=1, schema=schema)
    apply_schema(conn, registry)
    with FeatureStore(registry, dsn, pool_size=3, read_application_name=f"pgf-kill-{schema}") as store:
        assert store.get_features(bytes(32)) == {"t00": None}
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", [f"pgf-kill-{schema}"]
        )
        # the dead connection is noticed, discarded and the read retried once on a fresh one
        assert [store.get_features(bytes(32)) for _ in range(3)] == [{"t00": None}] * 3
