"""Running the real ``pgfeatures`` command in a subprocess, as a user does: ``python -m pgfeatures.cli``.

``blocked``: top-level modules the subprocess cannot import (a meta-path finder that raises
ModuleNotFoundError for them, as a missing package does), to test the CLI without an extra.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping

_BLOCKER = """
import importlib.abc, runpy, sys
BLOCKED = set(sys.argv.pop(1).split(","))
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Missing())
sys.argv[0] = "pgfeatures"
runpy.run_module("pgfeatures.cli", run_name="__main__", alter_sys=True)
"""

# Everything the core install (psycopg + psycopg_pool) does not bring.
EXTRAS_MODULES = (
    "rich",
    "numpy",
    "pyarrow",
    "starlette",
    "uvicorn",
    "orjson",
    "prometheus_client",
    "matplotlib",
    "redis",
    "uvloop",
    "httptools",
)


def cli(
    *args: str, env: Mapping[str, str | None] | None = None, blocked: Iterable[str] = (), timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Run ``pgfeatures ARGS...``; ``env`` entries override the environment (None removes one)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("PGFEATURES_DSN", "PGFEATURES_DEFINITIONS")}
    for key, value in (env or {}).items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    blocked = list(blocked)
    command = (
        [sys.executable, "-c", _BLOCKER, ",".join(blocked)] if blocked else [sys.executable, "-m", "pgfeatures.cli"]
    )
    return subprocess.run([*command, *args], env=environ, capture_output=True, text=True, timeout=timeout)


def error_line(done: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The one ``error: ...`` line of a failed command, after checking its exit code and that no
    traceback reached the user."""
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr
    assert done.returncode == code, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, done.stderr
    assert "error:" not in done.stdout
    return lines[0]
