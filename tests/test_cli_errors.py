"""Every command's errors reach the user as one line ``error: ...`` on stderr, exit code 2, never a
traceback: a down database, a refused login, and the user's own mistakes (bad TOML, a missing
file, an unknown table, a bad key, a bad option), each naming what is wrong.

The commands run in-process (``cli_run.cli``: ``main(argv)``, stdout, stderr and the exit code
captured), against a real PostgreSQL and a real refused port; a real process (``cli_process``) where
the process is the point: the exit code a shell sees for a refused database and for a usage error,
a closed pipe, the installed version.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pathlib
import subprocess
import sys

import pytest

from cli_run import EXTRAS_MODULES, cli, cli_process, error_line
from conftest import dsn_with

REFUSED = "postgresql://postgres@127.0.0.1:1/x"  # nothing listens on port 1
KEY = "ab" * 32


@pytest.fixture()
def defs(tmp_path, schema):
    path = tmp_path / "features.toml"
    path.write_text(f'schema = "{schema}"\n[tables.a.features]\nf = "real"\n[tables.b.features]\ng = "integer"\n')
    return str(path)


# A command line per command that connects; each must say that the database cannot be reached.
CONNECTING = {
    "init": ["init", "-d", "{defs}"],
    "get": ["get", "-d", "{defs}", KEY],
    "demo": ["demo", "--entities", "200", "--requests", "1"],
    "load": ["load", "a", "{data}", "-d", "{defs}"],
    "doctor": ["doctor", "-d", "{defs}"],
    "warmup": ["warmup", "-d", "{defs}"],
    "bench": ["bench", "--quick", "--save", "{tmp}/bench.json"],
    "bench-load": ["bench-load", "--rows", "100"],
    "bench-http": ["bench-http"],
}


@pytest.mark.parametrize("command", sorted(CONNECTING))
def test_a_refused_port_is_one_line_naming_the_server(command, defs, tmp_path):
    data = tmp_path / "data.csv"
    data.write_text(f"hashkey,f\n{KEY},1.5\n")
    args = [a.format(defs=defs, data=data, tmp=tmp_path) for a in CONNECTING[command]]
    line = error_line(cli(*args, env={"PGFEATURES_DSN": REFUSED}))
    assert "cannot reach the database" in line and "127.0.0.1:1/x" in line and "refused" in line.lower(), line


def test_the_issue_reproduction_init_with_a_refused_dsn(tmp_path):
    (tmp_path / "features.toml").write_text('[tables.a.features]\nf = "real"\n')
    done = cli_process("init", "-d", str(tmp_path / "features.toml"), env={"PGFEATURES_DSN": REFUSED})
    assert "OperationalError" not in done.stderr
    assert error_line(done).startswith(
        "error: cannot reach the database within 5s at postgresql://postgres@127.0.0.1:1/x"
    )


# Settings that cannot work are called what they are, with the fix (never "renew the password" or
# "cannot reach the database"): a role the server does not have, a database it does not have, a DSN
# libpq cannot parse.
SETTINGS = {
    "role": (
        lambda dsn: dsn_with(dsn, user="pgfeatures_no_such_role"),
        ["has no role 'pgfeatures_no_such_role'", "create it (CREATE ROLE ... LOGIN) or connect as an existing role"],
    ),
    "database": (
        lambda dsn: dsn_with(dsn, dbname="pgfeatures_no_such_db"),
        ["has no database 'pgfeatures_no_such_db'", "create it (CREATE DATABASE, or createdb pgfeatures_no_such_db)"],
    ),
    "dsn": (
        lambda dsn: dsn + " port=abc",
        ["is malformed", 'invalid integer value "abc" for connection option "port"', "write it as key=value pairs"],
    ),
    "syntax": (lambda dsn: "host=127.0.0.1 this is not a dsn", ["is malformed", 'missing "=" after "this"']),
}


@pytest.mark.parametrize("kind", sorted(SETTINGS))
@pytest.mark.parametrize("command", ["init", "get", "doctor"])
def test_connection_settings_that_cannot_work_say_what_and_the_fix(command, kind, dsn, defs):
    bad, expected = SETTINGS[kind]
    args = [a.format(defs=defs) for a in CONNECTING[command]]
    line = error_line(cli(*args, "--dsn", bad(dsn)))
    assert all(text in line for text in expected), line
    assert "renew the password" not in line and "cannot reach the database" not in line, line


def test_bad_toml_names_the_file_and_the_place(tmp_path, dsn):
    bad = tmp_path / "bad.toml"
    bad.write_text("schema = \n")
    line = error_line(cli("init", "--dsn", dsn, "-d", str(bad)))
    assert f"{bad}: invalid TOML" in line and "line 1" in line


def test_a_hint_in_brackets_survives(tmp_path, dsn):
    path = tmp_path / "nofeatures.toml"
    path.write_text("[tables.user_stats]\ncovering_index = true\n")
    line = error_line(cli("init", "--dsn", dsn, "-d", str(path)))
    assert "needs a [tables.user_stats.features] table" in line, line  # rich markup used to eat it


def test_missing_files_are_named(tmp_path, dsn, defs, schema):
    line = error_line(cli("init", "--dsn", dsn, "-d", str(tmp_path / "absent.toml")))
    assert "not found" in line and str(tmp_path / "absent.toml") in line
    assert cli("init", "--dsn", dsn, "-d", defs).returncode == 0
    line = error_line(cli("load", "a", str(tmp_path / "absent.parquet"), "--dsn", dsn, "-d", defs, "-q"))
    assert "absent.parquet" in line and "unchanged" in line, line
    line = error_line(cli("warmup", "--dsn", dsn, "-d", defs, "--hot-keys", str(tmp_path / "hot.txt")))
    assert "cannot read the hot-key file" in line and "hot.txt" in line


def test_unknown_table_bad_key_and_bad_option_say_what_is_valid(dsn, defs):
    assert cli("init", "--dsn", dsn, "-d", defs).returncode == 0
    line = error_line(cli("get", "--dsn", dsn, "-d", defs, KEY, "-t", "nope"))
    assert "unknown feature table(s): nope; valid tables: a, b" in line
    line = error_line(cli("get", "--dsn", dsn, "-d", defs, "abc"))
    assert "64 hex characters" in line
    line = error_line(cli("get", "--dsn", dsn, "-d", defs, KEY, "-f", "a.nope"))
    assert "unknown feature(s) in table 'a': nope; valid features: f" in line
    line = error_line(cli("load", "a", defs, "--dsn", dsn, "-d", defs, "--mode", "upsert", "-q"))
    assert "invalid mode='upsert'; valid: merge, replace" in line


def test_usage_errors_exit_2_without_a_traceback():
    done = cli_process("load")  # argparse's own exit, as the shell sees it
    assert (
        done.returncode == 2
        and "Traceback" not in done.stderr
        and "the following arguments are required" in done.stderr
    )
    assert "no key given" in error_line(
        cli("get", "-d", "/nonexistent.toml")
    )  # keys are checked before the file is read
    done = cli("bench", "--rtt", "0,x")
    assert done.returncode == 2 and "bad list '0,x'" in done.stderr and "Traceback" not in done.stderr
    done = cli("nope")
    assert done.returncode == 2 and "invalid choice: 'nope'" in done.stderr


def test_init_keeps_exit_2_on_drift_and_json_stays_json(dsn, defs, tmp_path, schema):
    assert cli("init", "--dsn", dsn, "-d", defs).returncode == 0
    changed = tmp_path / "changed.toml"
    changed.write_text(f'schema = "{schema}"\n[tables.a.features]\nf = "double"\n[tables.b.features]\ng = "integer"\n')
    done = cli("init", "--dsn", dsn, "-d", str(changed), "--json")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    report = json.loads(done.stdout)  # stdout is the report and nothing else
    assert report["ok"] is False and report["unchanged"] == ["b"]
    assert report["drift"] == {"a": ["column f is real, definition says double precision"]}
    assert "schema drift" in done.stderr


def test_get_after_the_definitions_changed_without_init(dsn, defs, tmp_path, schema):
    """A feature added to the definitions and ``pgfeatures init`` not run: ``get`` (on_drift="isolate")
    still reads the tables that match; a read of the drifted one is one error line naming the table,
    the missing column and the plan/apply that adds it, no traceback. (The library's default,
    on_drift="raise", refuses to open with that error: test_store_errors.py,
    test_open_fails_at_once_with_the_drift_not_an_outage.)"""
    from pgfeatures import FeatureStore

    assert cli("init", "--dsn", dsn, "-d", defs).returncode == 0
    with FeatureStore(defs, dsn, pool_size=1, write_pool_size=1) as store:
        store.update_features(KEY, "b", {"g": 7})
    changed = tmp_path / "changed.toml"
    changed.write_text(
        f'schema = "{schema}"\n[tables.a.features]\nf = "real"\nh = "double precision"\n'
        '[tables.b.features]\ng = "integer"\n'
    )

    done = cli("get", "--dsn", dsn, "-d", str(changed), KEY, "-t", "b")
    assert done.returncode == 0 and "Traceback" not in done.stderr and "error:" not in done.stderr, done.stderr
    assert json.loads(done.stdout) == {
        "key": KEY,
        "features": {"b": {"g": 7}},
        "status": {"b": "present"},
        "missing": [],
    }

    for args in (["-t", "a"], ["-t", "a,b"], []):  # the drifted table, alone, with another, or all tables
        line = error_line(cli("get", "--dsn", dsn, "-d", str(changed), KEY, *args))
        assert "does not match the definitions" in line and "a: column h (double precision) is missing" in line, line
        assert (
            f"`pgfeatures plan -d {changed}` shows the change and `pgfeatures apply -d {changed}` makes it" in line
        ), line
    # A table added to the definitions: the error names the init that creates it, and after it the read works.
    added = tmp_path / "added.toml"
    added.write_text(pathlib.Path(defs).read_text() + '[tables.c.features]\nx = "real"\n')
    line = error_line(cli("get", "--dsn", dsn, "-d", str(added), KEY, "-t", "c"))
    assert f"c: table {schema}.c does not exist" in line and f"`pgfeatures apply -d {added}` makes it" in line, line
    assert cli("get", "--dsn", dsn, "-d", str(added), KEY, "-t", "b").returncode == 0
    assert cli("init", "--dsn", dsn, "-d", str(added)).returncode == 0
    done = cli("get", "--dsn", dsn, "-d", str(added), KEY, "-t", "c")
    assert done.returncode == 0 and json.loads(done.stdout)["status"] == {"c": "missing"}, done.stderr

    applied = cli("apply", "--dsn", dsn, "-d", str(changed))  # the command the drift error gave is the fix
    assert applied.returncode == 0 and "add column h (double precision) to a" in applied.stderr, applied.stderr
    done = cli("get", "--dsn", dsn, "-d", str(changed), KEY, "-t", "a")
    assert done.returncode == 0 and json.loads(done.stdout)["status"] == {"a": "missing"}, done.stderr


# -- which definitions a command used --------------------------------------------------------------


def test_a_command_without_definitions_says_it_uses_the_demo_layout(dsn, defs):
    note = (
        "note: no definitions given (-d/--definitions FILE or $PGFEATURES_DEFINITIONS): using the demo layout "
        "(30 tables t00..t29 x f0..f7 real, schema demo)"
    )
    done = cli("get", "--dsn", dsn, "-t", "user_stats", KEY)
    assert note in done.stderr.splitlines(), done.stderr
    assert error_line(done) == (
        "error: unknown feature table(s): user_stats; valid tables: "
        + ", ".join(f"t{i:02d}" for i in range(30))
        + "; these are the names of the demo layout "
        "(30 tables t00..t29 x f0..f7 real, schema demo), since no definitions were given: pass "
        "yours with -d/--definitions FILE or $PGFEATURES_DEFINITIONS"
    )
    for given in (["-d", defs], []):  # a file, or the variable: no note, no hint
        done = cli(
            "get",
            "--dsn",
            dsn,
            "-t",
            "user_stats",
            KEY,
            *given,
            env={"PGFEATURES_DEFINITIONS": None if given else defs},
        )
        assert "note:" not in done.stderr and "demo layout" not in done.stderr, done.stderr
        assert error_line(done).startswith("error: unknown feature table(s): user_stats; valid tables: a, b")


# -- Unix manners ------------------------------------------------------------------------------------


def test_a_reader_closing_the_pipe_stops_the_command_quietly(dsn, defs):
    # `pgfeatures get ... | head`: the output outgrows the pipe, the reader leaves after a few bytes
    assert cli("init", "--dsn", dsn, "-d", defs).returncode == 0
    keys = [f"{i:064x}" for i in range(3000)]
    env = {k: v for k, v in os.environ.items() if k not in ("PGFEATURES_DSN", "PGFEATURES_DEFINITIONS")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgfeatures.cli", "get", "--dsn", dsn, "-d", defs, *keys],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(10) == b'{\n  "resul'
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141, err  # 128 + SIGPIPE, what a shell reports for a Unix tool the pipe killed
    assert err == "", err


def test_version_is_the_installed_package_version():
    done = cli("--version", blocked=EXTRAS_MODULES)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"pgfeatures {importlib.metadata.version('pgfeatures')}\n"
