"""Examples in docs/ run as written and answer what they say.

docs/http.md opens with curl commands; its push lines, each followed by a ``# {answer}`` comment,
run after the README's Quickstart (which defines ``user_stats`` and loads user 42) against a real
``pgfeatures serve``, and must answer exactly what the comment says (the push example used to say
nothing and answer ``{"written":0,"skipped":1}``: its timestamp was older than the loaded row).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from support.serve import ServeProcess
from test_readme_quickstart import BIN, quickstart_blocks

HTTP_DOC = Path(__file__).resolve().parents[1] / "docs" / "http.md"


def push_examples() -> list[tuple[str, dict]]:
    """(curl command, the answer its comment says) of every push line of docs/http.md's first block."""
    block = re.search(r"```sh\n(.*?)```", HTTP_DOC.read_text(), re.S)
    assert block is not None
    lines = block.group(1).splitlines()
    out = []
    for i, line in enumerate(lines):
        if line.startswith("curl ") and "/v1/push/" in line:
            said = re.match(r"# (\{.*?\})", lines[i + 1]) if i + 1 < len(lines) else None
            assert said is not None, f"the example does not say what it answers: {line}"
            out.append((line, json.loads(said.group(1))))
    return out


@pytest.mark.skipif(shutil.which("curl") is None, reason="the examples use curl")
def test_the_push_examples_of_the_http_doc_answer_what_they_say(tmp_path, schema, dsn):
    examples = push_examples()
    assert examples
    toml, shell = quickstart_blocks()[0][1], quickstart_blocks()[1][1]
    (tmp_path / "features.toml").write_text(toml.replace('schema = "quickstart"', f'schema = "{schema}"'))
    env = {k: v for k, v in os.environ.items() if k != "PGFEATURES_DEFINITIONS"} | {"PGFEATURES_DSN": dsn}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", shell.replace(".venv/bin/", BIN)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    with ServeProcess("-d", str(tmp_path / "features.toml"), "--dsn", dsn, "--no-prewarm") as server:
        for command, said in examples:
            done = subprocess.run(
                ["bash", "-c", command.replace("localhost:8000", f"127.0.0.1:{server.port}")],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert json.loads(done.stdout) == said, (command, done.stdout, done.stderr)
