"""The README's "Strings, timestamps, embeddings, nearest, transforms" example runs as written and prints
what the README says it prints (the test's schema for ``recommend``, this interpreter's ``bin/`` for
``.venv/bin/``; the database is the test server, as ``PGFEATURES_DSN``)."""

from __future__ import annotations

import os
import re
import subprocess

from test_readme_quickstart import BIN, README

HEADING = "\n## Strings, timestamps, embeddings, nearest, transforms\n"


def blocks() -> list[tuple[str, str]]:
    section = README.read_text().split(HEADING, 1)[1].split("\n## ", 1)[0]
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w+)\n(.*?)```", section, re.S)]


def test_the_rich_example_runs_as_written(tmp_path, schema, dsn):
    kinds = [kind for kind, _ in blocks()]
    assert kinds == ["toml", "python", "python", "bash", "text"], kinds
    (_, toml), (_, transform), (_, script), (_, commands), (_, printed) = blocks()
    assert 'schema = "recommend"' in toml and '"ranker_features:features"' in toml
    (tmp_path / "rich.toml").write_text(toml.replace('schema = "recommend"', f'schema = "{schema}"'))
    (tmp_path / "ranker_features.py").write_text(transform)
    (tmp_path / "rich.py").write_text(script)
    env = {**os.environ, "PGFEATURES_DSN": dsn}
    env.pop("PGFEATURES_DEFINITIONS", None)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", commands.replace(".venv/bin/", BIN)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout.endswith(printed), done.stdout
