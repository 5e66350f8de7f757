"""The ``pgfeatures`` logger (and its children ``pgfeatures.connections``, ``pgfeatures.load``,
``pgfeatures.warmup``) says what happened on the rare paths: a read retried on a fresh connection,
a pool that lost the database and got it back, a table that cannot be served, a load retried,
rolled back or committed, a warm-up. Real server, real terminated backends, real outages (a proxy).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pytest

from conftest import dsn_with
from pgfeatures import DatabaseUnavailableError, FeatureStore
from pgfeatures.definitions import demo_registry
from pgfeatures.errors import LoadInputError
from pgfeatures.load import load
from pgfeatures.schema import apply_schema
from pgfeatures.warmup import warmup
from support.proxy import Proxy
from test_load import keys_for, make_registry
from test_load_bad_input import _terminate
from test_store_errors import registry_with_extra_column

KEY = bytes(32)


@pytest.fixture()
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="pgfeatures")
    return caplog


def records(caplog: pytest.LogCaptureFixture, logger: str, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger and text in r.getMessage()]


def recovered(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The records saying a read pool has the database again (see the outage test)."""
    by_pool = [r for r in records(caplog, "pgfeatures.connections", "again") if "failed attempts" in r.getMessage()]
    return by_pool + records(caplog, "pgfeatures", "answers again; its pool renewed")


def until(found: Callable[[], list[logging.LogRecord]], within: float) -> list[logging.LogRecord]:
    """What ``found`` returns once it is not empty (at most ``within`` seconds)."""
    deadline = time.monotonic() + within
    while not (got := found()):
        assert time.monotonic() < deadline, f"not logged within {within:g} s"
        time.sleep(0.05)
    return got


def test_a_read_retried_after_its_connection_was_terminated(logs, conn, schema, dsn):
    registry = demo_registry(n_tables=2, n_features=1, schema=schema)
    apply_schema(conn, registry)
    app = f"pgf-log-{uuid.uuid4().hex[:8]}"
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=0, read_application_name=app) as store:
        assert store.get_features(KEY) == {"t00": None, "t01": None}
        assert not records(logs, "pgfeatures", "lost")
        killed = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", [app]
        ).fetchall()
        assert killed == [(True,)]
        assert store.get_features(KEY) == {"t00": None, "t01": None}  # retried on the replacement connection
    [lost] = records(logs, "pgfeatures", "read connection to")
    assert lost.levelno == logging.INFO and "lost" in lost.getMessage() and "checking the pool" in lost.getMessage()


def test_a_pool_logs_losing_the_database_once_and_getting_it_back(logs, conn, schema, dsn):
    registry = demo_registry(n_tables=1, n_features=1, schema=schema)
    apply_schema(conn, registry)
    proxy = Proxy.to(dsn)
    try:
        via_proxy = dsn_with(dsn, host="127.0.0.1", port=proxy.port)
        with FeatureStore(
            registry,
            via_proxy,
            pool_size=1,
            write_pool_size=0,
            connect_timeout=1,
            acquire_timeout=0.3,
            reconnect_timeout=2,
        ) as store:
            assert store.get_features(KEY) == {"t00": None}
            proxy.stop()
            ends = time.monotonic() + 3
            while time.monotonic() < ends:  # reads fail while the pool keeps trying
                with pytest.raises(DatabaseUnavailableError):
                    store.get_features(KEY)
                time.sleep(0.2)
            failed = records(logs, "pgfeatures.connections", "cannot connect to")
            assert len(failed) == 1, [r.getMessage() for r in failed]  # once per outage, not per attempt
            assert failed[0].levelno == logging.WARNING and f"port={proxy.port}" in failed[0].getMessage()
            assert "pgfeatures-read" in failed[0].getMessage() and "keeps trying" in failed[0].getMessage()
            proxy.start()
            deadline = time.monotonic() + 10
            while True:
                try:
                    assert store.get_features(KEY) == {"t00": None}
                    break
                except DatabaseUnavailableError:
                    assert time.monotonic() < deadline, "reads still failing 10 s after the database came back"
                    time.sleep(0.1)
            # Getting it back is logged by whichever notices first: the pool reconnecting ("connected to ...
            # again (after Xs of failed attempts)"), or the store's probe, which sees the database answer and
            # renews the pool (its new connections never failed: the pool has nothing to say). The record
            # may follow the first read that works by a moment: waited for.
            back = until(lambda: recovered(logs), within=10)
            assert all(r.levelno == logging.INFO for r in back), [r.getMessage() for r in back]
    finally:
        proxy.close()


def test_drift_at_open_with_isolate_names_the_table(logs, conn, schema, dsn):
    apply_schema(conn, demo_registry(n_tables=3, n_features=2, schema=schema))
    with FeatureStore(
        registry_with_extra_column(schema), dsn, pool_size=1, write_pool_size=0, on_drift="isolate"
    ) as store:
        assert store.get_features(KEY, ["t00"]) == {"t00": None}
    [drift] = records(logs, "pgfeatures", "cannot be served")
    assert drift.levelno == logging.ERROR
    assert drift.getMessage() == "pgfeatures: table t01 cannot be served: column f9 (real) is missing"


def test_a_load_retried_after_its_connection_was_terminated(logs, conn, schema, dsn):
    """The store's one retry of a load whose connection died before COMMIT: the rollback, the retry
    and the commit are each one record."""
    registry = make_registry(schema)
    apply_schema(conn, registry)
    n = 3000
    data = pa.table(
        {
            "hashkey": pa.array(keys_for(range(n)), pa.binary(32)),
            **{f"f{j}": np.full(n, 1.0, np.float32) for j in range(4)},
        }
    )
    app = f"pgf-log-{uuid.uuid4().hex[:8]}"
    killed: list[int] = []

    def kill_once(p) -> None:
        if p.phase == "reading" and p.rows >= 1000 and not killed:
            killed.append(p.rows)
            _terminate(dsn, app)

    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=1, write_application_name=app) as store:
        summary = store.write_features("plain", data, batch_rows=500, progress=kill_once)
    assert killed and summary.rows_read == n
    [rolled_back] = records(logs, "pgfeatures.load", "rolled back")
    assert rolled_back.levelno == logging.WARNING
    assert "load into plain rolled back, the table is unchanged: database connection lost" in rolled_back.getMessage()
    [retry] = records(logs, "pgfeatures", "retrying once")
    assert (
        retry.levelno == logging.WARNING and "load into plain lost its connection before COMMIT" in retry.getMessage()
    )
    [committed] = records(logs, "pgfeatures.load", "committed")
    assert (
        committed.levelno == logging.INFO
        and f"into plain committed: {n} rows read, {n} inserted" in committed.getMessage()
    )
    assert logs.records.index(rolled_back) < logs.records.index(retry) < logs.records.index(committed)


def test_a_load_of_bad_input_is_rolled_back_at_info(logs, conn, schema):
    registry = make_registry(schema)
    apply_schema(conn, registry)
    bad = pa.table({"hashkey": pa.array([b"short"], pa.binary()), **{f"f{j}": [1.0] for j in range(4)}})
    with pytest.raises(LoadInputError):
        load(conn, registry, "plain", bad)
    [rolled_back] = records(logs, "pgfeatures.load", "rolled back")
    assert rolled_back.levelno == logging.INFO and "the table is unchanged" in rolled_back.getMessage()


def test_a_warm_up_is_logged_with_its_duration(logs, conn, schema):
    registry = demo_registry(n_tables=2, n_features=1, schema=schema)
    apply_schema(conn, registry)
    report = warmup(conn, registry)
    [done] = records(logs, "pgfeatures.warmup", "warm-up (")
    assert done.levelno == logging.INFO
    assert f"warm-up ({report.method}) of {len(report.warmed)} relation(s) and 0 hot key(s) took" in done.getMessage()


def test_the_cli_logs_to_the_current_stderr_once_and_leaves_logging_as_it_was(capsys, monkeypatch):
    """What ``main()`` wraps every command but ``serve`` in, used twice in one process (as tests and
    scripts call ``main()``): each record printed once, to the stderr of that moment, at the chosen
    level; afterwards no handler, level or propagation change remains."""
    from pgfeatures.cli.main import _stderr_logging

    pg, psy = logging.getLogger("pgfeatures"), logging.getLogger("psycopg")
    before = [(lg.level, lg.propagate, list(lg.handlers)) for lg in (pg, psy)]
    for round_ in range(2):
        with _stderr_logging(None):
            logging.getLogger("pgfeatures.load").warning("warned %d", round_)
            logging.getLogger("pgfeatures.load").info("not at the default level")
            logging.getLogger("psycopg.pool").warning("pool noise")
        assert capsys.readouterr().err == f"warned {round_}\n"
    with _stderr_logging("info"):
        logging.getLogger("pgfeatures.warmup").info("at info")
    with _stderr_logging("no-such-level"):  # unknown: the defaults
        logging.getLogger("pgfeatures").info("hidden")
    assert capsys.readouterr().err == "at info\n"
    assert [(lg.level, lg.propagate, list(lg.handlers)) for lg in (pg, psy)] == before
