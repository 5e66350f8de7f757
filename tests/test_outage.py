"""A long database outage: reads fail fast while it lasts and work again promptly once it ends.

psycopg_pool retries a lost connection with a delay that doubles up to its
reconnect_timeout (300 s by default): after a long outage the next attempt
can come many seconds after the database is back. The stores bound that
(``reconnect_timeout``); this test would fail with the default.
"""

from __future__ import annotations

import time

import pytest

from conftest import dsn_with
from pgfeatures import DatabaseUnavailableError, FeatureStore
from pgfeatures.definitions import demo_registry
from pgfeatures.schema import apply_schema
from support.proxy import Proxy

OUTAGE = 9.0  # long enough for the default backoff (1, 2, 4, 8 s) to overshoot the outage's end


@pytest.fixture()
def proxy(dsn):
    p = Proxy.to(dsn)
    yield p
    p.close()


@pytest.mark.slow
@pytest.mark.timing  # back within 5 s of a 9 s outage
def test_reads_recover_promptly_after_a_long_outage(conn, schema, dsn, proxy):
    registry = demo_registry(n_tables=2, n_features=1, schema=schema)
    apply_schema(conn, registry)
    via_proxy = dsn_with(dsn, host="127.0.0.1", port=proxy.port)
    with FeatureStore(
        registry, via_proxy, pool_size=2, write_pool_size=0, connect_timeout=1, acquire_timeout=0.3, reconnect_timeout=2
    ) as store:
        assert store.get_features(bytes(32)) == {"t00": None, "t01": None}
        proxy.stop()
        ends = time.monotonic() + OUTAGE
        while time.monotonic() < ends:  # traffic keeps coming during the outage, and fails fast
            with pytest.raises(DatabaseUnavailableError):
                store.get_features(bytes(32))
            time.sleep(0.2)
        proxy.start()
        back = time.monotonic()
        while True:
            try:
                assert store.get_features(bytes(32)) == {"t00": None, "t01": None}
                break
            except DatabaseUnavailableError:
                assert time.monotonic() - back < 5, "reads still failing 5 s after the database came back"
                time.sleep(0.1)
