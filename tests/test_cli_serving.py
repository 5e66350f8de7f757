"""The serving model on the command line (in-process, ``cli_run.cli``) against a real PostgreSQL:
``get`` with one key per entity and feature services, ``tables`` (the inventory behind it, sync and
async), ``init`` on tables pgfeatures did not create, read functions and services to build,
``materialize``, and ``load --overwrite-newer``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import struct
import threading

import numpy as np
import psycopg
import pytest
from psycopg import sql

from cli_run import cli, error_line
from pgfeatures import FeatureStore
from pgfeatures.cli.read import shortest_real
from pgfeatures.definitions import Registry
from pgfeatures.inventory import tables as inventory_tables
from pgfeatures.inventory_async import tables_async
from pgfeatures.load import LoadOptions
from pgfeatures.materialize.build import status
from pgfeatures.reader.functions import EXISTING_FUNCTIONS, registry_functions

TOML = """
schema = "{schema}"

[entities.user]
key = "bigint"
column = "uid"

[entities.merchant]
hash = "sha256"
column = "merchant_key"

[tables.user_stats]
entity = "user"
ttl = "1h"
[tables.user_stats.features]
clicks = {{ type = "integer", default = 0 }}
ctr = "real"

[tables.merchant_risk]
entity = "merchant"
[tables.merchant_risk.features]
rate = {{ type = "real", default = 0.5 }}

[services.fraud]
features = ["user_stats.ctr", "merchant_risk.rate", "user_stats.clicks"]
materialize = true
version = "3"

[services.plain]
features = ["merchant_risk.*"]
"""


@pytest.fixture()
def defs(tmp_path, schema) -> str:
    path = tmp_path / "features.toml"
    path.write_text(TOML.format(schema=schema))
    return str(path)


def server_now(conn: psycopg.Connection) -> int:
    return int(conn.execute("SELECT floor(extract(epoch FROM now()))::int8").fetchone()[0])


@pytest.fixture()
def loaded(defs, dsn, conn) -> Registry:
    """The tables created by ``pgfeatures init``, with user 42 (fresh), 43 (expired) and merchant m-1."""
    assert cli("init", "--dsn", dsn, "-d", defs).returncode == 0
    registry = Registry.from_toml(defs)
    now = server_now(conn)
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=1) as store:
        store.update_features_batch(
            "user_stats",
            [
                (42, {"clicks": 3, "ctr": 0.11, "updated_at": now - 60}),
                (43, {"clicks": 9, "ctr": 0.5, "updated_at": now - 7200}),
            ],
        )
        store.update_features("m-1", "merchant_risk", {"rate": 0.3, "updated_at": now - 30})
    return registry


def get(dsn: str, defs: str, *args: str) -> dict:
    done = cli("get", "--dsn", dsn, "-d", defs, *args)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout)


# -- get ------------------------------------------------------------------------------------------


def test_get_takes_one_key_per_entity_and_prints_what_the_http_api_does(loaded, dsn, defs):
    one = get(dsn, defs, "user=42", "merchant=m-1")
    assert one == {
        "key": {"user": 42, "merchant": "m-1"},  # a bigint key echoed as a number, as HTTP does
        "features": {"user_stats": {"clicks": 3, "ctr": 0.11}, "merchant_risk": {"rate": 0.3}},
        "status": {"user_stats": "present", "merchant_risk": "present"},
        "missing": [],
    }
    expired = get(dsn, defs, "user=43", "merchant=m-2")  # 2h old with a 1h ttl; no such merchant
    assert expired["features"] == {"user_stats": {"clicks": 0, "ctr": None}, "merchant_risk": {"rate": 0.5}}  # defaults
    assert expired["status"] == {"user_stats": "expired", "merchant_risk": "missing"}
    assert expired["missing"] == ["user_stats", "merchant_risk"]
    # one entity read: bare keys, one (a request) or several (a batch)
    assert get(dsn, defs, "-t", "user_stats", "42")["features"] == {"user_stats": {"clicks": 3, "ctr": 0.11}}
    batch = get(dsn, defs, "-f", "user_stats.ctr", "42", "43", "42")
    assert [r["key"] for r in batch["results"]] == [42, 43, 42]
    assert [r["features"]["user_stats"] for r in batch["results"]] == [{"ctr": 0.11}, None, {"ctr": 0.11}]
    # a batch of requests with a key per entity
    rows = get(dsn, defs, "--key", "user=42,merchant=m-1", "-k", "merchant=nope,user=43")["results"]
    assert [r["key"] for r in rows] == [{"user": 42, "merchant": "m-1"}, {"merchant": "nope", "user": 43}]
    assert [r["status"] for r in rows] == [
        {"user_stats": "present", "merchant_risk": "present"},
        {"user_stats": "expired", "merchant_risk": "missing"},
    ]


def test_get_reads_services_and_their_vectors(loaded, dsn, defs):
    served = get(dsn, defs, "--service", "fraud", "user=42", "merchant=m-1")
    assert list(served["features"]) == ["user_stats", "merchant_risk"]
    assert served["features"]["user_stats"] == {"ctr": 0.11, "clicks": 3}
    vector = get(dsn, defs, "--service", "fraud", "user=42", "merchant=m-1", "--output", "vector")
    assert vector == {
        "key": {"user": 42, "merchant": "m-1"},
        "service": "fraud",
        "names": ["user_stats.ctr", "merchant_risk.rate", "user_stats.clicks"],
        "values": [0.11, 0.3, 3],
        "status": {"user_stats": "present", "merchant_risk": "present"},
        "missing": [],
    }
    subset = get(dsn, defs, "--service", "fraud", "-f", "user_stats.clicks", "42", "43", "-o", "vector")["results"]
    assert [(r["names"], r["values"], r["status"]) for r in subset] == [
        (["user_stats.clicks"], [3], {"user_stats": "present"}),
        (["user_stats.clicks"], [0], {"user_stats": "expired"}),
    ]
    assert get(dsn, defs, "--service", "plain", "m-1")["features"] == {"merchant_risk": {"rate": 0.3}}


@pytest.mark.parametrize(
    "args",
    [
        ["user=42", "merchant=m-1"],
        ["--service", "fraud", "user=42", "merchant=m-1"],
        ["--service", "fraud", "-o", "vector", "--key", "user=42,merchant=m-1", "--key", "user=43,merchant=m-2"],
        ["--service", "plain", "m-1", "m-2"],
    ],
)
def test_get_compiles_each_reader_once_and_parses_each_key_once(loaded, dsn, defs, monkeypatch, args):
    from pgfeatures.definitions import Entity, entities
    from pgfeatures.reader import cache

    compiled: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = []
    for name in ("compile_reader", "compile_batch_reader", "compile_materialized_reader",
                 "compile_materialized_batch_reader"):  # fmt: skip
        real = getattr(cache, name)

        def counted(selection, *rest, _real=real, _name=name):
            compiled.append((_name, selection.tables, tuple(f.name for _, fs in selection.items for f in fs)))
            return _real(selection, *rest)

        monkeypatch.setattr(cache, name, counted)
    hashed: list[object] = []
    hash_key = entities.hash_key
    monkeypatch.setattr(entities, "hash_key", lambda key: hashed.append(key) or hash_key(key))
    parsed: list[object] = []
    parse = Entity.parse
    monkeypatch.setattr(Entity, "parse", lambda self, key: parsed.append(key) or parse(self, key))
    get(dsn, defs, *args)
    assert compiled and len(compiled) == len(set(compiled)), compiled  # the store warms many; none twice
    keys = [k.partition("=")[2] if "=" in k else k for a in args if not a.startswith("-") for k in a.split(",")]
    keys = [k for k in keys if k not in ("fraud", "plain", "vector")]
    assert sorted(map(str, parsed)) == sorted(keys)  # every key parsed once (bigint keys come as text)
    assert sorted(hashed) == sorted(k for k in keys if k.startswith("m-"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["foo=1"], "unknown entity 'foo' in argument 'foo=1'; valid entities: user, merchant"),
        (["user=42"], "no key for entity 'merchant', which table(s) merchant_risk need"),
        (["42"], "this request reads entities user, merchant: pass one key per entity, as user=KEY merchant=KEY"),
        (
            ["user=abc", "merchant=m"],
            "user key must be an integer (a signed 64-bit bigint), or its decimal text, got 'abc'",
        ),
        (["-t", "user_stats", "4x", "5"], "request 1 (4x): user key must be an integer"),
        (
            ["--key", "user=1,merchant=m", "--key", "user=x,merchant=m"],
            "request 2 (user=x,merchant=m): user key must be an integer",
        ),
        (["--key", "user=1,bogus=2"], "unknown entity 'bogus'"),
        (["--key", "42"], "--key #1 '42': write each key as ENTITY=KEY"),
        (["user=1", "user=2"], "entity 'user' is given twice"),
        (["user=1", "7"], "bare key '7' mixed with ENTITY=KEY arguments"),
        (["user=1", "--key", "user=2"], "not both"),
        (["--service", "nope", "1"], "unknown feature service(s): nope; valid services: fraud, plain"),
        (["--service", "fraud", "-t", "user_stats", "1"], "--tables does not apply to --service"),
        (
            ["--service", "fraud", "-f", "merchant_risk.nope", "user=1", "merchant=m"],
            "does not serve merchant_risk.nope",
        ),
        (["-o", "vector", "user=1", "merchant=m"], "--output vector needs --service NAME"),
    ],
)
def test_get_errors_are_one_line_before_any_io(defs, args, message):
    # a refused port: every one of these fails on the command line, before connecting
    line = error_line(cli("get", "--dsn", "postgresql://postgres@127.0.0.1:1/x", "-d", defs, *args))
    assert message in line, line


def test_shortest_real_is_numpys_shortest_float32_form():
    rng = random.Random(7)
    values = [0.11, 0.1, 1 / 3, 3.4028234663852886e38, -1.1754943508222875e-38, 1e-45, 0.0, -0.0, 16777217.0, 1e10]
    values += [struct.unpack("<f", struct.pack("<I", rng.getrandbits(32)))[0] for _ in range(20000)]
    for v in values:
        x = float(np.float32(v))
        if not np.isfinite(x):
            continue
        short = shortest_real(x)
        assert np.float32(short) == np.float32(x)  # reads back as the same float32
        assert repr(short) == repr(float(str(np.float32(x)))), (x, short)  # as short as numpy's
    assert shortest_real(float(np.float32(0.11))) == 0.11 and repr(shortest_real(float(np.float32(0.11)))) == "0.11"
    assert shortest_real(float("inf")) == float("inf")


# -- tables ---------------------------------------------------------------------------------------


def test_tables_lists_entities_features_rows_and_the_age_of_the_newest_row(loaded, dsn, defs, conn, schema):
    done = cli("tables", "--dsn", dsn, "-d", defs, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    by_name = {t["name"]: t for t in report["tables"]}
    users = by_name["user_stats"]
    assert users["entity"] == {"name": "user", "key_type": "bigint", "key_column": "uid"}
    assert users["features"] == [
        {"name": "clicks", "type": "integer", "default": 0},
        {"name": "ctr", "type": "real", "default": None},
    ]
    assert users["ttl"] == 3600 and users["exists"] is True and users["services"] == ["fraud"]
    assert (users["rows"], users["rows_source"]) == (2, "count")  # never analyzed, small: counted
    assert users["newest_updated_at"] == server_now(conn) - 60 or abs(users["newest_age"] - 60) < 5
    assert 59 <= users["newest_age"] < 120 and users["newest_note"] is None
    assert users["updated_at_index"] == "user_stats_updated_at"  # init creates it: the age is an index probe
    assert by_name["merchant_risk"]["entity"]["key_column"] == "merchant_key"
    assert 29 <= by_name["merchant_risk"]["newest_age"] < 90
    services = {s["name"]: s for s in report["services"]}
    assert services["fraud"]["state"] == "missing" and services["fraud"]["materialize"] is True
    assert services["fraud"]["features"] == ["user_stats.ctr", "merchant_risk.rate", "user_stats.clicks"]
    assert services["plain"] == {**services["plain"], "state": None, "materialize": False, "tables": ["merchant_risk"]}

    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, "user_stats")))
    conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, "user_stats_updated_at")))
    conn.execute(
        sql.SQL("CREATE INDEX ON {} (updated_at)").format(sql.Identifier(schema, "user_stats"))
    )  # any such index
    text = cli("tables", "--dsn", dsn, "-d", defs, env={"COLUMNS": "300"})
    assert text.returncode == 0 and "user_stats" in text.stdout and "fraud" in text.stdout, text.stderr
    assert "pgfeatures materialize fraud" in text.stdout
    (users,) = [t for t in inventory_tables(conn, loaded) if t.name == "user_stats"]
    assert (users.rows, users.rows_source) == (2, "reltuples") and users.updated_at_index == "user_stats_updated_at_idx"


def test_a_slow_max_updated_at_is_reported_unknown_and_the_others_go_on(loaded, dsn, conn, schema):
    """A table whose max(updated_at) cannot finish in time (here: a lock held by another session)
    is reported as unknown with why, within the timeout; the other tables are still measured."""
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with psycopg.connect(dsn) as other:
            other.execute(
                sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema, "user_stats"))
            )
            locked.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        found = {t.name: t for t in inventory_tables(conn, loaded, timeout=0.3)}
        users = found["user_stats"]
        assert users.newest_age is None and "took longer than 0.3s" in users.newest_note
        assert (
            "it needs an index (user_stats_updated_at), and waits for any lock held on the table" in users.newest_note
        )
        assert found["merchant_risk"].newest_age is not None  # measured all the same
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "0"  # nothing leaked into the session
    finally:
        release.set()
        holder.join()


def test_the_async_inventory_is_the_same(loaded, dsn, conn):
    async def read() -> list:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
            return await tables_async(aconn, loaded, newest=False)

    found = asyncio.run(read())
    assert [t.name for t in found] == list(loaded.tables)
    assert all(t.newest_age is None and t.newest_seconds is None for t in found)  # newest=False: catalog only
    same = inventory_tables(conn, loaded, newest=False)
    assert [t.as_dict() for t in found] == [t.as_dict() for t in same]


def test_tables_before_init_says_what_is_missing(defs, dsn):
    report = json.loads(cli("tables", "--dsn", dsn, "-d", defs, "--json").stdout)
    assert all(t["exists"] is False and "pgfeatures init creates it" in t["newest_note"] for t in report["tables"])


# -- init -----------------------------------------------------------------------------------------


def test_init_on_a_table_it_did_not_create_reports_it_fits(defs, dsn, conn, schema):
    """A table made by hand, keyed by the column the definitions name (uid, a primary key under
    its own constraint name, no CHECK, no default for updated_at), fits; init creates the rest."""
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (uid bigint NOT NULL, clicks integer, ctr real, updated_at timestamptz, "
            "CONSTRAINT mine PRIMARY KEY (uid))"
        ).format(sql.Identifier(schema, "user_stats"))
    )
    done = cli("init", "--dsn", dsn, "-d", defs, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["tables"]["user_stats"] == {"state": "fits", "key": "uid bigint", "problems": []}
    assert report["tables"]["merchant_risk"]["state"] == "created"
    assert report["created"] == ["merchant_risk"] and report["unchanged"] == ["user_stats"]
    registry = Registry.from_toml(defs)
    expected = {f.name for f in registry_functions(registry)}
    assert report["functions"] == {"total": len(expected), "created": len(expected), "present": 0, "error": None}
    found = {r[0] for r in psycopg.RawCursor(conn).execute(EXISTING_FUNCTIONS, (schema, sorted(expected))).fetchall()}
    assert found == expected and len(expected) == 6  # full read, full batch, and each service's read and batch
    assert report["services"] == {"fraud": "missing"} and report["actions"] == [
        f"pgfeatures materialize fraud -d {defs}"
    ]
    assert (
        f"service fraud: serving rows missing; it is read table by table until you run: pgfeatures materialize fraud -d {defs}"
        in done.stderr
    )

    again = cli("init", "--dsn", dsn, "-d", defs)
    assert again.returncode == 0, again.stderr
    assert "unchanged: user_stats (the existing table fits its definition: key uid bigint" in again.stdout
    assert f"read functions (for transaction-mode poolers): 0 created, {len(expected)} already present" in again.stdout
    assert "pgfeatures materialize fraud" in again.stdout

    # The same table with another key column name than the definitions say does not fit.
    conn.execute(sql.SQL("ALTER TABLE {} RENAME COLUMN uid TO user_id").format(sql.Identifier(schema, "user_stats")))
    drift = cli("init", "--dsn", dsn, "-d", defs, "--json")
    assert drift.returncode == 2
    report = json.loads(drift.stdout)
    assert report["tables"]["user_stats"]["state"] == "drift"
    assert "column uid (bigint) is missing" in report["drift"]["user_stats"]
    assert report["functions"]["created"] == 0 and "schema drift" in report["functions"]["skipped"]


def test_init_print_sql_includes_the_read_functions(defs):
    done = cli("init", "-d", defs, "--print-sql", "--json")
    statements = json.loads(done.stdout)["statements"]
    assert sum(s.startswith("CREATE OR REPLACE FUNCTION") for s in statements) == 6
    assert any('"uid" bigint PRIMARY KEY' in s for s in statements)
    plain = json.loads(cli("init", "-d", defs, "--print-sql", "--json", "--no-functions").stdout)["statements"]
    assert not any("FUNCTION" in s for s in plain)


# -- materialize ----------------------------------------------------------------------------------


def test_materialize_builds_the_serving_rows(loaded, dsn, defs, conn):
    done = cli("materialize", "fraud", "--dsn", dsn, "-d", defs, "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["service"] == "fraud" and summary["state"] == "built"
    names = {layout.entity.name: layout.table_name for layout in loaded.layouts("fraud")}
    assert summary["rows"] == {names[e]: n for e, n in (("user", 2), ("merchant", 1))}
    assert "locking 2 feature table(s)" in done.stderr  # progress, on stderr
    assert status(conn, loaded) == {"fraud": "built"}
    # the serving rows are what get reads now, and they say the same
    served = get(dsn, defs, "--service", "fraud", "user=42", "merchant=m-1", "-o", "vector")
    assert served["values"] == [0.11, 0.3, 3]
    text = cli("materialize", "fraud", "--dsn", dsn, "-d", defs)
    assert text.returncode == 0 and text.stdout.startswith("materialized fraud in "), text.stderr
    assert "serving rows of fraud: built" in text.stdout
    init = cli("init", "--dsn", dsn, "-d", defs)
    assert "service fraud: serving rows built" in init.stdout and "pgfeatures materialize" not in init.stderr


def test_materialize_errors(defs, dsn):
    assert "unknown feature service(s): nope; valid services: fraud, plain" in error_line(
        cli("materialize", "nope", "--dsn", dsn, "-d", defs)
    )
    line = error_line(cli("materialize", "plain", "--dsn", dsn, "-d", defs))
    assert "service 'plain' is not declared materialize = true: add materialize = true to [services.plain]" in line
    assert "(materialized services: fraud)" in line
    line = error_line(cli("materialize", "fraud", "--dsn", dsn, "-d", defs))  # before init: no tables
    assert "does not exist" in line and "pgfeatures apply" in line, line


# -- load --overwrite-newer -----------------------------------------------------------------------


@pytest.mark.skipif(
    "overwrite_newer" not in {f.name for f in dataclasses.fields(LoadOptions)},
    reason="LoadOptions.overwrite_newer (newest-wins bulk loads) is not in this tree yet",
)
def test_load_overwrite_newer(loaded, dsn, defs, tmp_path, conn):
    data = tmp_path / "old.csv"
    data.write_text("uid,clicks,ctr,updated_at\n42,100,0.5,1000\n")  # far older than the stored row
    kept = cli("load", "user_stats", str(data), "--key-column", "uid", "--dsn", dsn, "-d", defs, "-q", "--json")
    assert kept.returncode == 0, kept.stderr
    assert get(dsn, defs, "-t", "user_stats", "42")["features"]["user_stats"]["clicks"] == 3  # newest wins
    done = cli(
        "load",
        "user_stats",
        str(data),
        "--key-column",
        "uid",
        "--overwrite-newer",
        "--dsn",
        dsn,
        "-d",
        defs,
        "-q",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    stored = conn.execute(
        sql.SQL("SELECT clicks, extract(epoch FROM updated_at)::int8 FROM {} WHERE uid = 42").format(
            sql.Identifier(loaded.schema, "user_stats")
        )
    ).fetchone()
    assert stored == (100, 1000)


def test_a_row_stamped_infinity_does_not_break_the_inventory(loaded, dsn, defs, conn, schema):
    """A row whose updated_at is 'infinity' (written around pgfeatures) has no age: the newest row is the newest
    finite one, and `pgfeatures tables` still answers."""
    conn.execute(
        sql.SQL("INSERT INTO {} (uid, clicks, ctr, updated_at) VALUES (99, 1, 0.5, 'infinity')").format(
            sql.Identifier(schema, "user_stats")
        )
    )
    done = cli("tables", "--dsn", dsn, "-d", defs, "--json")
    assert done.returncode == 0, done.stderr
    (users,) = [t for t in json.loads(done.stdout)["tables"] if t["name"] == "user_stats"]
    assert 59 <= users["newest_age"] < 120, users
