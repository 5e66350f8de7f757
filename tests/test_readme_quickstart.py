"""The README's Quickstart runs as written and prints what it says it prints.

The blocks of the Quickstart section are taken from README.md in order (the definitions, the
shell commands, the JSON they print, the Python script, what it prints, the HTTP commands) and
run in a fresh directory, with three substitutions only: the test's schema for ``quickstart``,
this interpreter's ``bin/`` for ``.venv/bin/`` (the commands run outside the checkout) and a free
port for 8000. The database is the test server, given as ``PGFEATURES_DSN`` as the README says.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BIN = str(Path(sys.executable).parent) + "/"


def quickstart_blocks() -> list[tuple[str, str]]:
    text = README.read_text()
    section = text.split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w+)\n(.*?)```", section, re.S)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def last_json(stdout: str) -> dict:
    """The JSON document a block's last command printed (earlier commands print their reports)."""
    start = max(i for i, line in enumerate(stdout.splitlines()) if line.startswith("{"))
    return json.loads("\n".join(stdout.splitlines()[start:]))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("curl") is None, reason="the Quickstart's HTTP part uses curl")
def test_the_quickstart_runs_as_written(tmp_path, schema, dsn, conn):
    kinds = [kind for kind, _ in quickstart_blocks()]
    assert kinds == ["toml", "bash", "json", "python", "text", "bash", "json"], kinds
    (_, toml), (_, shell), (_, printed), (_, script), (_, output), (_, http), (_, answered) = quickstart_blocks()
    assert 'schema = "quickstart"' in toml
    (tmp_path / "features.toml").write_text(toml.replace('schema = "quickstart"', f'schema = "{schema}"'))
    env = {**os.environ, "PGFEATURES_DSN": dsn}
    env.pop("PGFEATURES_DEFINITIONS", None)

    def run(block: str, timeout: float = 120) -> str:
        assert ".venv/bin/" in block  # the README says to use the venv's commands
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.replace(".venv/bin/", BIN)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"{block}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        assert "Traceback" not in done.stderr, done.stderr
        return done.stdout

    expected = json.loads(printed)
    stdout = run(shell)
    assert last_json(stdout) == expected
    assert stdout.endswith(printed), "the README shows the output other than the CLI prints it"

    (tmp_path / "quickstart.py").write_text(script)
    done = subprocess.run(
        [sys.executable, "quickstart.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == output.strip().splitlines()

    assert "8000" in http
    answer = run(http.replace("8000", str(free_port())))
    assert last_json(answer) == expected  # after the line serve prints when it starts
    assert answer.splitlines()[-1] == answered.strip(), "the README shows the HTTP answer other than it is"
