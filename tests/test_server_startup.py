"""How ``pgfeatures serve`` starts, or refuses to: a port already in use is one ``error:`` line and
its own exit code, before any banner; the README's wait for ``/readyz`` gives up; the help says
what a request timeout answers."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from pgfeatures.cli.common import EXIT_CANNOT_LISTEN
from pgfeatures.server.config import SETTINGS
from support.serve import free_port

README = Path(__file__).resolve().parents[1] / "README.md"


def serve_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PGFEATURES_", "PROMETHEUS_MULTIPROC_DIR"))}


def test_a_port_in_use_is_one_error_line_and_its_exit_code(dsn: str, tmp_path: Path) -> None:
    """Before: the banner, uvicorn's '[Errno 98] address already in use' and exit 3 ('database not running')."""
    definitions = tmp_path / "features.toml"
    definitions.write_text('schema = "startup"\n[tables.t.features]\nf = "real"\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pgfeatures.cli",
                "serve",
                "--port",
                str(port),
                "--dsn",
                dsn,
                "-d",
                str(definitions),
                "--no-prewarm",
            ],
            env=serve_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == EXIT_CANNOT_LISTEN, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == "", "the banner was printed although nothing can be served"
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "in use" in lines[0], lines[0]


def test_the_exit_code_is_documented() -> None:
    from pgfeatures.cli.common import EXIT_CODES

    assert re.search(rf"^\s*{EXIT_CANNOT_LISTEN}\s+serve: ", EXIT_CODES, re.M), EXIT_CODES
    assert re.search(rf"^\| {EXIT_CANNOT_LISTEN} \| `serve`", README.read_text(), re.M)


def test_the_readme_waits_for_readyz_within_a_bound() -> None:
    """The Quickstart's wait for /readyz, run as written against a port nobody serves, ends (it looped forever).
    The sleep between tries is shortened: what is tested is that the loop has a bound."""
    quickstart = README.read_text().split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    (loop,) = [line for line in quickstart.splitlines() if "readyz" in line]
    assert "sleep 0.2" in loop and "localhost:8000" in loop, loop
    script = loop.replace("sleep 0.2", "sleep 0.01").replace("localhost:8000", f"127.0.0.1:{free_port()}")
    start = time.monotonic()
    try:
        subprocess.run(["bash", "-c", script], timeout=20, capture_output=True)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the README's wait for /readyz never gives up: {loop}") from None
    assert time.monotonic() - start < 20


def test_the_help_says_a_request_timeout_answers_504() -> None:
    helps = {f.name: f.metadata["help"] for f in SETTINGS}
    assert "504" in helps["request_timeout"] and "503" not in helps["request_timeout"], helps["request_timeout"]
    assert "503" in helps["acquire_timeout"]  # an exhausted pool is 503 pool_exhausted
    done = subprocess.run(
        [sys.executable, "-m", "pgfeatures.cli", "serve", "--help"],
        env=serve_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    text = " ".join(done.stdout.split())
    assert "on the database in all before 504" in text, text
