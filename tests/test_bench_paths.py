"""``pgfeatures bench-hot-path`` and ``bench-serve-path`` end to end, tiny: the demo layout (3 tables, 300
entities) in a test's own schema, a few requests per form. What is checked is the shape of the result and
that every form answered what its twin answers (the benchmarks check that themselves before timing);
never a timing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pgfeatures.cli import main
from pgfeatures.definitions import demo_registry
from pgfeatures_bench import hot_path, serve_path
from support.demo_data import create

TINY = ["--tables", "3", "--entities", "300", "--rounds", "2", "--requests", "5", "--check", "20"]


def test_hot_path_and_serve_path_commands(
    dsn: str, schema: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    create(dsn, schema, tmp_path, entities=300, n_tables=3)
    # hot_mat is not built: the serve path builds it, then reads it through both clients, the bare app beside.
    assert main(["bench-serve-path", "--dsn", dsn, "--schema", schema, *TINY, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    forms = {
        f"{tag} {client} {what}"
        for tag in ("serve", "bare")
        for client in serve_path.CLIENTS
        for what in ("healthz", "vector")
    }
    assert set(result["p50_ms"]) == forms | {"library vector", "library vector (async)"}
    assert set(result["server_cpu_ms_per_request"]) == forms
    assert {(f["server"], f["client"]) for f in result["floors"]} == {
        (tag, client) for tag in ("serve", "bare") for client in serve_path.CLIENTS
    }
    assert main(["bench-serve-path", "--dsn", dsn, "--schema", schema, *TINY, "--clients", "raw", "--no-bare"]) == 0
    text = capsys.readouterr().out
    assert "serve  raw" in text and "bare" not in text

    assert main(["bench-hot-path", "--dsn", dsn, "--schema", schema, *TINY, "--no-build", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["forms"]) == {name for pair in hot_path.PAIRS for name in pair}
    assert all(row["p50_ms"] > 0 and row["cpu_ms"] >= 0 for row in result["forms"].values())
    assert [t["target"] for t in result["targets"]] == [t[0] for t in hot_path.TARGETS]
    assert set(result["decode_us"]) >= {"get_features", "service dict", "service vector"}


def test_serve_path_refuses_an_unknown_client() -> None:
    assert main(["bench-serve-path", "--clients", "curl"]) == 2


def test_the_definitions_serve_reads_are_the_benchmarks() -> None:
    reg = hot_path.registry("s", 2)
    assert list(reg.tables) == list(demo_registry(n_tables=2, schema="s").tables)
    text = serve_path.definitions(reg)
    assert '[services.hot_mat]\nfeatures = ["t00.*", "t01.*"]\nmaterialize = true' in text
