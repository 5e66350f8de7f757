"""Shared fixtures: a real PostgreSQL for every test, never a mock.

The server is ``$PGFEATURES_TEST_DSN`` when set, else pgfeatures' embedded
server (started on demand), where tests use their own database
``pgfeatures_test``. Each test that creates tables gets a fresh schema,
dropped afterwards, so tests (and concurrent test runs) never see each
other's tables.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

TEST_DATABASE = "pgfeatures_test"

# Feast sets $PROMETHEUS_MULTIPROC_DIR when it is imported (tests/test_feast*.py, at collection), and
# prometheus_client picks file-backed metrics if that variable is set when it is first imported: then
# every in-process app of the run would write its metrics to, and read them from, Feast's folder.
# Imported here first, before any test module, prometheus_client keeps its in-process metrics (and
# pgfeatures.server.metrics follows what prometheus_client chose).
try:
    import prometheus_client  # noqa: F401
except ImportError:  # a core-only install (tests/test_core_install.py)
    pass


def _server_dsn() -> str:
    env = os.environ.get("PGFEATURES_TEST_DSN")
    if env:
        return env
    from pgfeatures import embedded

    admin = embedded.ensure_running()
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [TEST_DATABASE]).fetchone()
        if not exists:
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEST_DATABASE)))
            except psycopg.errors.DuplicateDatabase:
                pass  # a concurrent test run created it
    return make_conninfo(admin, dbname=TEST_DATABASE)


@pytest.fixture(scope="session")
def dsn() -> str:
    """DSN of the test database (real server)."""
    return _server_dsn()


@pytest.fixture()
def conn(dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(dsn, autocommit=True) as c:
        yield c


@pytest.fixture()
def schema(dsn: str) -> Iterator[str]:
    """A fresh, unique schema name; the schema is dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def dsn_with(dsn: str, **changes: object) -> str:
    """The DSN with some connection parameters replaced."""
    params = conninfo_to_dict(dsn)
    params.update({k: v for k, v in changes.items()})
    return make_conninfo("", **params)


def wait_for_lock_wait(
    dsn: str, *, pid: int | None = None, application_name: str | None = None, within: float = 10
) -> None:
    """Until a backend (``pid``, or any of ``application_name``) waits for a lock: the event a test of a
    conflict waits for, instead of sleeping and hoping the other session got there."""
    assert pid is not None or application_name is not None
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND (pid = %s OR application_name = %s)"
    )
    deadline = time.monotonic() + within
    with psycopg.connect(dsn, autocommit=True) as c:
        while c.execute(query, [pid, application_name]).fetchone()[0] == 0:  # type: ignore[index]
            assert time.monotonic() < deadline, (
                f"no backend ({pid or application_name}) waits for a lock after {within:g} s"
            )
            time.sleep(0.01)


# -- the unit tier ---------------------------------------------------------------------------------

UNIT = Path(__file__).resolve().parent / "unit"
DATABASE_FIXTURES = frozenset({"dsn", "conn", "schema"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """tests/unit/ is the tier that runs with no PostgreSQL reachable: a test there that asks for the
    database (directly or through another fixture) is refused at collection, not found out when the
    database is down."""
    wrong = [
        f"{item.nodeid} uses {', '.join(sorted(DATABASE_FIXTURES & set(getattr(item, 'fixturenames', ()))))}"
        for item in items
        if UNIT in Path(str(item.path)).resolve().parents and DATABASE_FIXTURES & set(getattr(item, "fixturenames", ()))
    ]
    if wrong:
        raise pytest.UsageError("tests/unit/ runs without a database; move these tests out of it: " + "; ".join(wrong))
