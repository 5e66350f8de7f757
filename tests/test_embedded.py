"""The embedded server: created on demand, reused, survives a killed postmaster, stops cleanly.

Runs a private cluster in its own PGFEATURES_HOME (never the shared one), driven by ``pgfeatures db``
commands (in-process, ``cli_run.cli``) and, for the store starting the server on its own, a process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from cli_run import cli

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def private_home():
    # Under /tmp (not pytest's tmp_path, whose 0700 parents the service user cannot traverse as root).
    home = Path(tempfile.mkdtemp(prefix="pgfeatures-test-", dir="/tmp"))
    yield home
    run(home, "db", "stop")
    shutil.rmtree(home, ignore_errors=True)


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``pgfeatures ARGS...`` (in-process) with ``home`` as PGFEATURES_HOME; the server it starts is
    a daemon of its own (pg_ctl), as from a shell."""
    return cli(*args, env={"PGFEATURES_HOME": str(home)})


def dsn_of(home: Path) -> str:
    out = run(home, "db", "dsn")
    assert out.returncode == 0, out.stderr + out.stdout
    return out.stdout.strip()


@pytest.mark.slow
def test_lifecycle_and_stale_pid(private_home):
    assert run(private_home, "db", "status").returncode == 3  # not initialized yet
    started = run(private_home, "db", "start")
    assert started.returncode == 0, started.stdout + started.stderr
    dsn = dsn_of(private_home)
    with psycopg.connect(dsn) as conn:
        assert (
            conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()[0]
            == "pg_stat_statements,pg_prewarm"
        )
    pid = int((private_home / "pgdata" / "postmaster.pid").read_text().splitlines()[0])
    uid = int(
        next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Uid:")).split()[
            1
        ]
    )
    if os.geteuid() == 0:  # postgres refuses root: the server runs as the service user
        assert uid != 0
    status = run(private_home, "db", "status")
    assert status.returncode == 0 and "running: True" in status.stdout

    # a killed postmaster leaves a stale postmaster.pid behind: the next command must still start it
    os.kill(pid, signal.SIGKILL)
    from pgfeatures.embedded import wait_until_stopped

    wait_until_stopped(pid)
    assert (private_home / "pgdata" / "postmaster.pid").exists()
    assert dsn_of(private_home) == dsn  # `db dsn` prints the DSN without starting the server
    assert run(private_home, "db", "status").returncode == 3
    assert run(private_home, "db", "start").returncode == 0  # the stale postmaster.pid does not stop a start
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)

    stopped = run(private_home, "db", "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert run(private_home, "db", "status").returncode == 3
    assert run(private_home, "db", "stop").stdout.strip() == "not running"


def test_store_starts_the_embedded_server_when_no_dsn(private_home):
    run(private_home, "db", "stop")
    code = "from pgfeatures.connections import resolve_dsn; print(resolve_dsn(None))"
    env = {k: v for k, v in os.environ.items() if k != "PGFEATURES_DSN"}
    env["PGFEATURES_HOME"] = str(private_home)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    with psycopg.connect(out.stdout.strip()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
