"""`pgfeatures plan` / `apply`: what differs, made so online and in one transaction.

Values written by the tests encode where they belong (test_evolve.value), so a reader that decoded
another feature's value during an apply would be caught.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pgfeatures import FeatureStore
from pgfeatures.errors import ChangeBlockedError
from pgfeatures.evolve.apply import apply, plan_changes
from pgfeatures.materialize.build import states
from test_evolve import check_answer, fill, registry_of, value


def actions(plan) -> list[tuple[str, str, str]]:
    return [(c.kind, c.action, c.subject) for c in plan.changes]


def test_plan_then_apply_from_nothing_to_a_changed_definition(conn, schema):
    v1 = registry_of(schema, {"t": ["f1", "f2"], "u": ["f1"]}, {"s": ["t.*", "u.*"]})
    first = plan_changes(conn, v1)
    assert actions(first) == [
        ("additive", "create schema", schema),
        ("additive", "create table", "t"),
        ("additive", "create table", "u"),
        ("additive", "build service", "s"),
    ]
    apply(conn, v1)
    assert plan_changes(conn, v1).empty and states(conn, v1)["s"].state == "built"
    # a feature added and one dropped from t, a table no longer defined, a service no longer materialized
    v2 = registry_of(schema, {"t": ["f0", "f1"]}, {})
    plan = plan_changes(conn, v2)
    assert ("additive", "add column", "t.f0") in actions(plan)
    assert ("note", "drop column (needs --allow-destructive)", "t.f2") in actions(plan) and plan.blocked
    assert ("note", "table kept", "u") in actions(plan)
    assert f'ALTER TABLE "{schema}"."t" ADD COLUMN "f0" integer' in [s for c in plan.changes for s in c.statements]
    apply(conn, v2)
    columns = [
        r[0]
        for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum",
            [f"{schema}.t"],
        )
    ]
    assert columns == ["user_id", "f1", "f2", "updated_at", "f0"]  # f2 kept: destructive changes need the flag
    assert ("note", "other service", "s") in actions(plan)  # not in v2: kept (another file's?), its guard too
    from pgfeatures.errors import MaterializeError

    with pytest.raises(MaterializeError, match="--drop-service"):  # so the column s reads cannot be dropped
        apply(conn, v2, allow_destructive=True)
    destructive = plan_changes(conn, v2, allow_destructive=True, drop_tables=["u"], drop_services=["s"])
    assert ("destructive", "drop column", "t.f2") in actions(destructive)
    assert ("destructive", "drop table", "u") in actions(destructive)
    assert ("additive", "drop serving rows", "s") in actions(destructive)
    apply(conn, v2, allow_destructive=True, drop_tables=["u"], drop_services=["s"])
    assert conn.execute("SELECT to_regclass(%s)", [f"{schema}.u"]).fetchone() == (None,)
    assert plan_changes(conn, v2).empty


def test_plan_notes_ttl_and_default_changes_since_the_last_apply(conn, schema):
    from pgfeatures.definitions import FeatureTable, Registry

    v1 = Registry.of([FeatureTable.of("t", {"f": {"type": "real", "default": 0.5}}, ttl=3600)], schema)
    apply(conn, v1)
    v2 = Registry.of([FeatureTable.of("t", {"f": {"type": "real", "default": 1.5}}, ttl=60)], schema)
    plan = plan_changes(conn, v2)
    assert plan.empty
    prose = [c.prose for c in plan.notes]
    assert "table t: ttl '1h' -> '1m' (served once servers reload)" in prose
    assert "default of t.f: 0.5 -> 1.5 (served once servers reload)" in prose
    apply(conn, v2)
    assert not plan_changes(conn, v2).notes


def test_readers_of_both_definitions_are_right_through_an_apply(conn, schema, dsn):
    """The issue's case, made with apply: a feature added to a table of a materialized service while
    readers of the old definition run; none fails, none reads another feature's value, and after a
    reload they read the new one from its serving rows."""
    old = registry_of(schema, {"t": ["f1", "f2"], "u": ["f1"]}, {"s": ["t.*", "u.*"]})
    apply(conn, old)
    fill(conn, schema, "t", 1, ["f1", "f2"], range(1, 300))
    fill(conn, schema, "u", 2, ["f1"], range(1, 300))
    apply(conn, old)  # rebuild with the rows in
    new = registry_of(schema, {"t": ["f0", "f1", "f2"], "u": ["f1"]}, {"s": ["t.*", "u.*"]})
    failures: list[BaseException] = []
    answers = 0
    stop = threading.Event()
    with FeatureStore(old, dsn, pool_size=2, write_pool_size=0) as store:

        def read() -> None:
            nonlocal answers
            key = 1
            while not stop.is_set():
                key = key % 298 + 1
                try:
                    check_answer(store.get_service("s", key), key, {"t": 1, "u": 2})
                    answers += 1
                except BaseException as exc:
                    failures.append(exc)

        def answered(more: int) -> None:
            """Until the readers have answered ``more`` requests more (they run before, during and after)."""
            target, deadline = answers + more, time.monotonic() + 30
            while answers < target and not failures:
                assert time.monotonic() < deadline, f"the readers answered {answers} requests in 30 s"
                time.sleep(0.01)

        threads = [threading.Thread(target=read) for _ in range(2)]
        for t in threads:
            t.start()
        answered(10)
        result = apply(conn, new)
        assert [c.action for c in result.plan.changes] == ["add column", "rebuild service"]
        answered(10)
        stop.set()
        for t in threads:
            t.join(10)
        assert not failures, failures[:3]
        assert answers >= 20
        store.reload(new)
        fill(conn, schema, "t", 1, ["f0"], range(1, 10))
        got = store.get_service("s", 5)
        assert got["t"] == {"f0": value(5, 1, 0), "f1": value(5, 1, 1), "f2": value(5, 1, 2)}
        assert store.readers.service_reader("s", None, "single").materialized
    assert result.switch_seconds < result.seconds


def test_an_apply_a_long_transaction_blocks_names_it_and_changes_nothing(conn, schema, dsn):
    old = registry_of(schema, {"t": ["f1"], "u": ["f1"]}, {"s": ["t.*", "u.*"]})
    apply(conn, old)
    before = states(conn, old)["s"]
    new = registry_of(schema, {"t": ["f0", "f1"], "u": ["f1"]}, {"s": ["t.*", "u.*"]})
    with psycopg.connect(dsn, application_name="long-report") as holder:
        holder.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "t"))
        )  # open transaction: holds it
        with pytest.raises(ChangeBlockedError) as caught:
            apply(conn, new, lock_timeout=0.5)
        message = str(caught.value)
        assert (
            "nothing was changed" in message
            and "long-report" in message
            and f"pid {holder.info.backend_pid}" in message
        )
    assert plan_changes(conn, new).build == ["s"] and states(conn, old)["s"] == before
    assert conn.execute("SELECT count(*) FROM pg_class WHERE relname LIKE '_pgf_new_%'").fetchone() == (0,)


# -- killed midway: as before, never between ------------------------------------------------------


def _slow_apply_setup(dsn: str, schema: str, rows: int) -> tuple:
    """A materialized service over tables big enough that its rebuild takes a while."""
    old = registry_of(schema, {"t": ["f1", "f2"], "u": ["f1"]}, {"s": ["t.*", "u.*"]})
    with psycopg.connect(dsn, autocommit=True) as c:
        apply(c, old)
        for name, cols in (("t", "f1, f2"), ("u", "f1")):
            c.execute(
                sql.SQL("INSERT INTO {} (user_id, {}) SELECT g, {} FROM generate_series(1, %s) g").format(
                    sql.Identifier(schema, name), sql.SQL(cols), sql.SQL(", ".join("g" for _ in cols.split(",")))
                ),
                [rows],
            )
        apply(c, old)
    new = registry_of(schema, {"t": ["f0", "f1", "f2"], "u": ["f1"]}, {"s": ["t.*", "u.*"]})
    return old, new


def _as_before(conn: psycopg.Connection, schema: str, old, new) -> None:
    assert states(conn, old)["s"].state == "built"
    assert [c.action for c in plan_changes(conn, new).changes] == ["add column", "rebuild service"]
    assert conn.execute(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname LIKE '_pgf_new_%%'",
        [schema],
    ).fetchone() == (0,)


def _definitions_file(tmp_path: Path, schema: str) -> Path:
    path = tmp_path / "new.toml"
    path.write_text(
        f'schema = "{schema}"\n[entities.user]\nkey = "bigint"\n'
        '[tables.t]\nentity = "user"\n[tables.t.features]\nf0 = "integer"\nf1 = "integer"\nf2 = "integer"\n'
        '[tables.u]\nentity = "user"\n[tables.u.features]\nf1 = "integer"\n'
        '[services.s]\nfeatures = ["t.*", "u.*"]\nmaterialize = true\n'
    )
    return path


def _wait_for_build(dsn: str, application_name: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as watcher:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            row = watcher.execute(
                "SELECT query FROM pg_stat_activity WHERE application_name = %s AND state = 'active'",
                [application_name],
            ).fetchone()
            if row and "INSERT INTO" in row[0] and "_pgf_new_" in row[0]:
                return
            time.sleep(0.02)
    raise AssertionError("the apply never started building")


@pytest.mark.slow
def test_an_apply_process_killed_midway_leaves_the_database_as_before(conn, schema, dsn, tmp_path):
    old, new = _slow_apply_setup(dsn, schema, 300_000)
    path = _definitions_file(tmp_path, schema)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgfeatures.cli", "apply", "--dsn", dsn, "-d", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _wait_for_build(dsn, "pgfeatures-apply")
    proc.kill()  # SIGKILL: no cleanup of any kind
    proc.wait(30)
    deadline = time.monotonic() + 60  # the backend notices its client is gone once its statement ends
    while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgfeatures-apply'").fetchone()[
        0
    ]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    _as_before(conn, schema, old, new)
    apply(conn, new)  # and it can be applied afterwards
    assert states(conn, new)["s"].state == "built"


@pytest.fixture()
def private_home() -> Iterator[Path]:
    from test_embedded import run

    path = Path(tempfile.mkdtemp(prefix="pgfeatures-test-apply-", dir="/tmp"))
    started = run(path, "db", "start")
    assert started.returncode == 0, started.stdout + started.stderr
    yield path
    run(path, "db", "stop")
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.cluster
def test_a_server_killed_midway_through_an_apply_comes_back_as_before(private_home, tmp_path):
    from test_embedded import dsn_of, run
    from test_load_crash import kill_postmaster

    dsn = dsn_of(private_home)
    schema = "apply_crash"
    old, new = _slow_apply_setup(dsn, schema, 300_000)
    path = _definitions_file(tmp_path, schema)
    env = {**os.environ, "PGFEATURES_HOME": str(private_home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgfeatures.cli", "apply", "--dsn", dsn, "-d", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    _wait_for_build(dsn, "pgfeatures-apply")
    kill_postmaster(private_home)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and b"Traceback" not in err, err
    started = run(private_home, "db", "start")
    assert started.returncode == 0, started.stdout + started.stderr
    with psycopg.connect(dsn, autocommit=True) as conn:
        _as_before(conn, schema, old, new)
    assert signal.SIGKILL  # (the postmaster, not the apply, was killed)


def test_apply_with_nothing_to_change_says_so_and_takes_no_table(conn, schema, tmp_path):
    from cli_run import cli

    path = tmp_path / "d.toml"
    path.write_text(
        f'schema = "{schema}"\n[entities.user]\nkey = "bigint"\n[tables.t]\nentity = "user"\nfeatures = {{ a = "real" }}\n'
    )
    first = cli("apply", "-d", str(path), "--dsn", conn.info.dsn)
    assert first.returncode == 0 and "applied 2 change(s)" in first.stdout and "reload" in first.stderr
    again = cli("apply", "-d", str(path), "--dsn", conn.info.dsn)
    assert again.returncode == 0, again
    assert again.stdout.strip() == "nothing to change: the database matches the definitions"
    assert "switch" not in again.stderr and "reload" not in again.stderr, again.stderr
