"""Connection settings that cannot work are called what they are, with the fix, in the library and in
``serve`` (the CLI: tests/test_cli_errors.py): a role the server does not have (not "refused the
credentials (renew the password or token...)"), a database it does not have and a malformed DSN (not
"cannot reach the database within 5s"). ``ConnectionSettingsError``, a ConfigError: not retryable.

Against the embedded server (trust authentication, so a missing role is reported as such; with
password authentication PostgreSQL reports it as a failed password, which stays an
AuthenticationError).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading

import pytest

from conftest import dsn_with
from pgfeatures import AsyncFeatureStore, FeatureStore
from pgfeatures.connections import connect, database_error, unavailable
from pgfeatures.definitions import demo_registry
from pgfeatures.errors import ConfigError, ConnectionSettingsError, DatabaseUnavailableError

CASES = {
    "role": (
        lambda dsn: dsn_with(dsn, user="pgf_no_such_role"),
        r"the database server at 127\.0\.0\.1:\d+ has no role 'pgf_no_such_role' \(user in the DSN .*user=pgf_no_such_role"
        r".*\): create it \(CREATE ROLE \.\.\. LOGIN\) or connect as an existing role; the server said: .*FATAL: +role "
        r"\"pgf_no_such_role\" does not exist",
    ),
    "database": (
        lambda dsn: dsn_with(dsn, dbname="pgf_no_such_db"),
        r"the database server at 127\.0\.0\.1:\d+ has no database 'pgf_no_such_db' \(dbname in the DSN .*\): "
        r"create it \(CREATE DATABASE, or createdb pgf_no_such_db\) or name an existing one",
    ),
    "port": (
        lambda dsn: dsn + " port=abc",
        r"the DSN '.*port=abc' is malformed: .*invalid integer value \"abc\" for connection option \"port\"; write it "
        r"as key=value pairs \(host=db\.example\.com port=5432 dbname=features user=app\) or as a URI",
    ),
    "syntax": (
        lambda dsn: "postgresql://app:secret@[::1/features",
        r"the DSN 'postgresql://app:\*\*\*@\[::1/features' is malformed: .*",
    ),  # the password never shown
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_the_library_names_the_setting_and_the_fix(dsn, kind):
    bad, message = CASES[kind]
    with pytest.raises(ConnectionSettingsError, match=message) as info:
        FeatureStore(demo_registry(n_tables=1), bad(dsn), pool_size=1).open()
    assert isinstance(info.value, ConfigError) and not isinstance(info.value, DatabaseUnavailableError)
    assert "secret" not in str(info.value)
    with pytest.raises(ConnectionSettingsError, match=message):
        connect(bad(dsn), "pgfeatures-test")


@pytest.mark.parametrize("kind", ["role", "database"])
def test_the_async_store_too(dsn, kind):
    bad, message = CASES[kind]

    async def run() -> None:
        store = AsyncFeatureStore(demo_registry(n_tables=1), bad(dsn), pool_size=1)
        try:
            with pytest.raises(ConnectionSettingsError, match=message):
                await store.open()
        finally:
            await store.close()

    asyncio.run(run())


def test_an_outage_and_a_query_error_are_not_settings_errors(dsn):
    import psycopg

    refused = "host=127.0.0.1 port=1 dbname=x"
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(refused)
    assert type(unavailable(refused, info.value)) is DatabaseUnavailableError
    with psycopg.connect(dsn) as conn, pytest.raises(psycopg.ProgrammingError) as info:
        conn.execute("SELECT %s, %s", [1])  # a client-side ProgrammingError of a statement, not of a DSN
    assert not isinstance(database_error(info.value, dsn), ConnectionSettingsError)


def serve(*flags: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGFEATURES_")}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgfeatures.cli",
            "serve",
            "--port",
            "0",
            "--log-level",
            "warning",
            "--no-prewarm",
            *flags,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_serve_refuses_a_malformed_dsn_at_start(dsn):
    proc = serve("--dsn", "host=127.0.0.1 this is not a dsn")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, (out, err)
    assert err.strip().splitlines()[-1] == (
        'error: the DSN \'host=127.0.0.1 this is not a dsn\' is malformed: missing "=" after "this" '
        "in connection info string; write it as key=value pairs (host=db.example.com port=5432 "
        "dbname=features user=app) or as a URI (postgresql://app@db.example.com:5432/features)"
    )
    assert "pgfeatures serve: http" not in out  # refused before the banner


@pytest.mark.parametrize("kind", ["role", "database"])
def test_serve_says_which_setting_while_it_retries(dsn, kind):
    bad, message = CASES[kind]
    proc = serve("--dsn", bad(dsn))
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "cannot open the store" in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.wait(60), "".join(lines)
    finally:
        proc.terminate()
        proc.wait(30)
        reader.join(10)
    line = next(line for line in lines if "cannot open the store" in line)
    assert re.search(message, line), line
    assert "renew the password" not in line and "cannot reach the database" not in line, line
