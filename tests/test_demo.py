"""The demo's data is what its generator says, every strategy reads it back exactly, and the command runs."""

from __future__ import annotations

import json
import random
import struct

import pytest

from pgfeatures import FeatureStore, Strategy
from pgfeatures.cli import main
from pgfeatures.cli.read import shortest_real
from pgfeatures.definitions import demo_registry
from pgfeatures.demo import MISS_EVERY, entity_key, expected, load_demo


@pytest.fixture()
def small_demo(conn, schema):
    registry = demo_registry(n_tables=4, n_features=8, schema=schema)
    assert load_demo(conn, registry, n_entities=500, seed=3) is True
    assert load_demo(conn, registry, n_entities=500, seed=3) is False  # reused, not reloaded
    return registry


def test_every_strategy_reads_the_generated_values(small_demo, dsn):
    rng = random.Random(1)
    entities = rng.sample(range(500), 40) + [0, MISS_EVERY, 499]
    assert any(v is None for v in expected(small_demo, MISS_EVERY, 500, seed=3).values())  # misses exist
    with FeatureStore(small_demo, dsn, pool_size=1) as store:
        for entity in entities:
            truth = expected(small_demo, entity, 500, seed=3)
            for strategy in Strategy:
                assert store.get_features(entity_key(entity), strategy=strategy) == truth
        batch = store.get_features_batch([entity_key(e) for e in entities])
        assert batch == [expected(small_demo, e, 500, seed=3) for e in entities]


def test_reload_on_different_seed(conn, small_demo, dsn):
    assert load_demo(conn, small_demo, n_entities=500, seed=4) is True
    with FeatureStore(small_demo, dsn, pool_size=1) as store:
        assert store.get_features(entity_key(7)) == expected(small_demo, 7, 500, seed=4)


def test_demo_command_runs_end_to_end(dsn, schema, capsys):
    argv = [
        "demo",
        "--dsn",
        dsn,
        "--schema",
        schema,
        "--entities",
        "300",
        "--requests",
        "40",
        "--table-counts",
        "10,30",
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "sample read for entity 1" in text and "absent key: {'t00': None}" in text
    assert "pipeline" in text and "single" in text  # the latency table
    assert main([*argv, "--json"]) == 0  # --json: the figures as one JSON document on stdout, nothing else
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert "already present, reused" in captured.err
    assert result["entities"] == 300 and result["loaded"] is False
    figures = result["figures"]
    assert {(f["tables"], f["name"]) for f in figures} >= {(30, "single"), (30, "pipeline"), (10, "sequential")}
    assert all(f["p50_ms"] > 0 and f["n"] > 0 for f in figures)


def test_get_command_prints_json_and_names_valid_tables(small_demo, dsn, schema, tmp_path, capsys):
    defs = tmp_path / "defs.toml"
    defs.write_text(
        f'schema = "{schema}"\n'
        + "".join(f"[tables.t{i:02d}.features]\n" + "".join(f'f{j} = "real"\n' for j in range(8)) for i in range(4))
    )
    key = entity_key(5).hex()
    assert main(["get", "--dsn", dsn, "-d", str(defs), key, "-t", "t01", "-f", "t01.f2"]) == 0
    got = json.loads(capsys.readouterr().out)
    value = expected(small_demo, 5, 500, seed=3)["t01"]["f2"]  # a float32, as a Python float
    assert got == {
        "key": key,
        "features": {"t01": {"f2": shortest_real(value)}},
        "status": {"t01": "present"},
        "missing": [],
    }
    assert struct.pack("<f", got["features"]["t01"]["f2"]) == struct.pack(
        "<f", value
    )  # the same float32, printed short
    assert main(["get", "--dsn", dsn, "-d", str(defs), key, "-t", "nope"]) == 2
    assert "valid tables: t00, t01, t02, t03" in capsys.readouterr().err
    assert main(["get", "--dsn", dsn, "-d", str(defs), "abc"]) == 2
    assert "64 hex characters" in capsys.readouterr().err


def test_demo_tables_left_by_an_older_version_are_migrated_not_refused(conn, schema):
    """A machine that ran an older demo holds its tables with integer epoch ``updated_at`` (the layout
    before timestamptz event time). Running the demo again migrates them in place and reuses or reloads
    them; it used to stop with 30 DRIFT lines and no way forward but hand-written ALTERs."""
    from psycopg import sql

    registry = demo_registry(n_tables=2, n_features=3, schema=schema)
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    for name in registry.tables:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (hashkey bytea PRIMARY KEY, f0 real, f1 real, f2 real, updated_at integer NOT NULL)"
            ).format(sql.Identifier(schema, name))
        )
    assert load_demo(conn, registry, n_entities=200, seed=0) is True
    kind = conn.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'updated_at'",
        [f"{schema}.t00"],
    ).fetchone()
    assert kind == ("timestamp with time zone",)
    assert load_demo(conn, registry, n_entities=200, seed=0) is False
