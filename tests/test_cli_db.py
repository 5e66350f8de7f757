"""``pgfeatures db dsn`` prints the DSN of an existing cluster and never starts or creates one.

A private cluster in its own PGFEATURES_HOME (never the shared server), driven through
``pgfeatures db ...`` commands run in-process (``cli_run.cli``); the server is a real process.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from cli_run import cli, error_line

pytestmark = pytest.mark.cluster


@pytest.fixture()
def home():
    # Under /tmp, not pytest's tmp_path: as root the server's user must traverse its parents.
    path = Path(tempfile.mkdtemp(prefix="pgfeatures-test-db-", dir="/tmp"))
    yield path
    cli("db", "stop", env={"PGFEATURES_HOME": str(path)})
    shutil.rmtree(path, ignore_errors=True)


def db(home: Path, *args: str):
    return cli("db", *args, env={"PGFEATURES_HOME": str(home)})


def test_dsn_without_a_cluster_is_an_error_and_creates_nothing(home):
    line = error_line(db(home, "dsn"), code=3)
    assert f"no embedded cluster in {home}" in line and "pgfeatures db start" in line
    assert not (home / "pgdata").exists()
    assert db(home, "status").returncode == 3
    assert not (home / "pgdata").exists()


def test_dsn_of_a_stopped_cluster_does_not_start_it(home):
    started = db(home, "start")
    assert started.returncode == 0, started.stderr
    running = db(home, "dsn")
    assert running.returncode == 0 and running.stderr == ""
    dsn = running.stdout.strip()
    assert dsn.startswith("host=127.0.0.1 port=")
    assert db(home, "stop").stdout.strip() == "stopped"

    stopped = db(home, "dsn")
    assert stopped.returncode == 0 and stopped.stdout.strip() == dsn
    assert "not running" in stopped.stderr and "pgfeatures db start" in stopped.stderr
    assert db(home, "status").returncode == 3  # still stopped: `db dsn` started nothing
    assert json.loads(db(home, "dsn", "--json").stdout) == {"dsn": dsn, "running": False}
    status = json.loads(db(home, "status", "--json").stdout)
    assert status["initialized"] is True and status["running"] is False and status["dsn"] == dsn
