"""Pool renewals (``store/opening_async.py``) leave no pool behind, whatever interrupts them: a
renewal cancelled while its new pool fills (a store closing, a client gone), a store closed or
closed and opened again while a renewal was under way. "Left behind" is checked on the live
objects: every psycopg_pool pool that is not closed, found by the garbage collector."""

from __future__ import annotations

import asyncio
import gc
from urllib.parse import urlsplit

import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from conftest import dsn_with
from pgfeatures import AsyncFeatureStore, FeatureStore
from pgfeatures.connections import ConnectFailures
from pgfeatures.definitions import demo_registry
from pgfeatures.schema import apply_schema
from support.proxy import Proxy


def open_pools(conninfo_part: str) -> list[object]:
    """The pools not closed whose conninfo contains ``conninfo_part``."""
    gc.collect()
    return [
        p
        for p in gc.get_objects()
        if isinstance(p, (ConnectionPool, AsyncConnectionPool)) and not p.closed and conninfo_part in p.conninfo
    ]


@pytest.fixture()
def registry(conn, schema):
    reg = demo_registry(n_tables=2, n_features=2, schema=schema)
    apply_schema(conn, reg)
    return reg


@pytest.mark.slow
def test_a_renewal_cancelled_while_its_pool_fills_closes_that_pool(dsn, registry):
    """The new pool's connections go through a paused proxy, so it never fills; the renewal is
    cancelled meanwhile (what close() does to a probe)."""
    url = urlsplit(dsn)
    proxy = Proxy(url.hostname or "127.0.0.1", url.port or 5432)
    proxy.start()
    proxy.pause()
    stalled = dsn_with(dsn, host="127.0.0.1", port=proxy.port)
    marker = f"port={proxy.port}"

    async def body() -> None:
        async with AsyncFeatureStore(registry, dsn, pool_size=1, write_pool_size=0, connect_timeout=30) as store:
            task = asyncio.create_task(store.reads.filled_pool_async(stalled, ConnectFailures()))
            async with asyncio.timeout(10):  # "the renewal's pool should be filling"
                while not open_pools(marker):
                    await asyncio.sleep(0.01)
            assert not task.done()  # it cannot fill through the paused proxy
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert open_pools(marker) == []

    try:
        asyncio.run(asyncio.wait_for(body(), 60))
    finally:
        proxy.close()


def test_a_read_renewal_of_a_closed_or_reopened_store_installs_nothing(dsn, registry):
    store = FeatureStore(registry, dsn, pool_size=1, write_pool_size=1)
    store.open()
    target = store.router.targets[0]
    store.close()
    assert store.reads.renew_pool(target) is False  # closed: nothing opened
    store.open()
    try:
        before = len(open_pools(""))
        assert store.reads.renew_pool(target) is False  # the target of the store's previous life
        assert len(open_pools("")) == before
        assert target.pool.closed and store.router.targets[0].pool is not target.pool
    finally:
        store.close()


def test_a_write_renewal_of_a_reopened_store_keeps_its_new_pool(dsn, registry):
    store = FeatureStore(registry, dsn, pool_size=1, write_pool_size=1)
    store.open()
    old = store.write_pool
    store.close()
    store.open()
    try:
        current = store.write_pool
        before = len(open_pools(""))
        assert store.writes.renew(old) is True  # the write pool is another than the one that failed
        assert store.write_pool is current and not current.closed and len(open_pools("")) == before
    finally:
        store.close()
