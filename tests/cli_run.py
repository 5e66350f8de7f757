"""Running the ``pgfeatures`` command in a test: in-process (``cli``), or as a real process
(``cli_process``) where the process is the point.

``cli`` calls ``pgfeatures.cli.main(args)`` in this interpreter with stdout and stderr captured and the
environment as the command would see it, and returns what a process would (a CompletedProcess:
``returncode``, ``stdout``, ``stderr``): about 40 ms a call against 340 ms for a new interpreter.
What only a process shows stays with ``cli_process`` (``python -m pgfeatures.cli``): the exit code a
shell sees, the import of a missing extra, ``--help`` importing nothing heavy, signals and pipes.

``blocked``: top-level modules the process cannot import (a meta-path finder that raises
ModuleNotFoundError for them, as a missing package does), to test the CLI without an extra; a call
with ``blocked`` always runs a process.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping

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

# What a test's command never inherits from the environment the tests run in: it says where the
# database and the definitions are itself.
_CLEARED = ("PGFEATURES_DSN", "PGFEATURES_DEFINITIONS")


def _environment(env: Mapping[str, str | None] | None) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    for key, value in (env or {}).items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    return environ


@contextlib.contextmanager
def _environ(environ: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


class _Captured(io.StringIO):
    """A captured stream: text, never a terminal, no file descriptor (as a pipe to a test would be,
    but ``fileno`` says there is none, so nothing writes around the capture)."""

    def isatty(self) -> bool:
        return False


def cli(
    *args: str,
    env: Mapping[str, str | None] | None = None,
    blocked: Iterable[str] = (),
    timeout: float = 180,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``pgfeatures ARGS...`` in-process (with ``blocked``: as a process, see ``cli_process``);
    ``env`` entries override the environment (None removes one); ``cwd``: the working directory
    meanwhile. ``timeout`` applies to a process only. sys.path is restored afterwards (loading a
    credential provider puts the working directory on it, as for an ASGI app)."""
    blocked = list(blocked)
    if blocked:
        return cli_process(*args, env=env, blocked=blocked, timeout=timeout, cwd=cwd)
    from pgfeatures.cli import main

    argv = [os.fspath(a) for a in args]  # a process's arguments are text: a Path becomes its path
    out, err = _Captured(), _Captured()
    path = list(sys.path)
    with (
        _environ(_environment(env)),
        contextlib.chdir(cwd or os.getcwd()),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            code = main(argv)
        except SystemExit as exc:  # as the interpreter would turn it into an exit code
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.path[:] = path
    return subprocess.CompletedProcess(["pgfeatures", *argv], code, out.getvalue(), err.getvalue())


def cli_process(
    *args: str,
    env: Mapping[str, str | None] | None = None,
    blocked: Iterable[str] = (),
    timeout: float = 180,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``pgfeatures ARGS...`` as a real process, ``python -m pgfeatures.cli`` (see ``cli``)."""
    blocked = list(blocked)
    command = (
        [sys.executable, "-c", _BLOCKER, ",".join(blocked)] if blocked else [sys.executable, "-m", "pgfeatures.cli"]
    )
    return subprocess.run(
        [*command, *args], env=_environment(env), capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


def error_line(done: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The one ``error: ...`` line of a failed command, after checking its exit code and that no
    traceback reached the user."""
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr
    assert done.returncode == code, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, done.stderr
    assert "error:" not in done.stdout
    return lines[0]
