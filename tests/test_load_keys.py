"""Bulk loads into every entity key type (bigint, text, uuid, bytea32, hashed natural ids): every source
form, both merge strategies, partial loads, duplicates, invalid keys (abort and skip), and newest wins
(upsert and rebuild, equal timestamps, ``overwrite_newer``), read back from the real table."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from pgfeatures.cli import main as cli_main
from pgfeatures.definitions import Entity, FeatureTable, Registry, hash_key
from pgfeatures.errors import LoadInputError
from pgfeatures.load import load
from pgfeatures.schema import apply_schema

ENTITIES = {
    "user": Entity("user", "bigint", "uid"),
    "device": Entity("device", "text", max_length=8),
    "session": Entity("session", "uuid"),
    "merchant": Entity("merchant", hash="sha256", column="merchant_key"),
    "entity": Entity("entity"),
}
TABLE = {"user": "users", "device": "devices", "session": "sessions", "merchant": "merchants", "entity": "plain"}
U = [uuid.UUID(int=i * 7919 + 1) for i in range(10)]


def registry_for(schema: str) -> Registry:
    return Registry.of(
        [FeatureTable.of(TABLE[e], {"a": "real", "n": "integer"}, entity=ENTITIES[e]) for e in ENTITIES], schema=schema
    )


@pytest.fixture()
def reg(conn, schema) -> Registry:
    registry = registry_for(schema)
    apply_schema(conn, registry)
    return registry


def rows_of(conn: psycopg.Connection, reg: Registry, table: str) -> dict[Any, tuple[Any, ...]]:
    t = reg.table(table)
    query = sql.SQL("SELECT {}, a, n, extract(epoch FROM updated_at)::int8 FROM {}").format(
        sql.Identifier(t.key_column), sql.Identifier(reg.schema, table)
    )
    return {
        (bytes(r[0]) if isinstance(r[0], (bytes, memoryview)) else r[0]): tuple(r[1:])
        for r in conn.execute(query).fetchall()
    }


def frame(
    key: str,
    keys: list[Any],
    key_type: pa.DataType | None = None,
    *,
    a: list[float] | None = None,
    n: list[int] | None = None,
    stamps: list[int] | None = None,
) -> pa.Table:
    cols: dict[str, Any] = {key: pa.array(keys, key_type)}
    cols["a"] = pa.array(a if a is not None else [float(i) + 0.5 for i in range(len(keys))], pa.float32())
    cols["n"] = pa.array(n if n is not None else list(range(len(keys))), pa.int32())
    if stamps is not None:
        cols["updated_at"] = pa.array(stamps, pa.int64())
    return pa.table(cols)


# (entity, source keys, arrow type, the keys as stored)
CASES = [
    ("user", [5, -(2**63), 2**63 - 1, 0], pa.int64(), [5, -(2**63), 2**63 - 1, 0]),
    ("user", [" 5", "-9223372036854775808", "+9223372036854775807", "007"], pa.string(), [5, -(2**63), 2**63 - 1, 7]),
    ("device", ["d-1", "ünï", "12345678", "x"], pa.string(), ["d-1", "ünï", "12345678", "x"]),
    ("device", [17, 4], pa.int64(), ["17", "4"]),
    ("session", [str(U[0]), U[1].hex, "{" + str(U[2]) + "}", f"urn:uuid:{str(U[3]).upper()}"], pa.string(), U[:4]),
    ("session", [u.bytes for u in U[:3]], pa.binary(16), U[:3]),
    ("merchant", ["m-1", 42, "ünï"], None, [hash_key("m-1"), hash_key(42), hash_key("ünï")]),
    ("merchant", [b"\x00raw", b"m-1"], pa.binary(), [hash_key(b"\x00raw"), hash_key("m-1")]),
    ("entity", [hash_key(i).hex() for i in range(3)], pa.string(), [hash_key(i) for i in range(3)]),
]


@pytest.mark.parametrize("strategy", ["upsert", "rebuild"])
@pytest.mark.parametrize("entity, source, arrow_type, stored", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_every_key_type_loads_exactly(conn, reg, entity, source, arrow_type, stored, strategy):
    table = TABLE[entity]
    if entity == "merchant" and arrow_type is None:  # mixed natural ids: one column each, loaded in turn
        for i, natural in enumerate(source):
            t = pa.array([natural])
            summary = load(
                conn, reg, table, frame("merchant_key", [natural], t.type, a=[i + 0.5], n=[i]), strategy=strategy
            )
            assert (summary.inserted, summary.updated, summary.strategy) == (1, 0, strategy)
    else:
        summary = load(conn, reg, table, frame(ENTITIES[entity].column, source, arrow_type), strategy=strategy)
        assert (summary.inserted, summary.updated, summary.rejected, summary.strategy) == (len(source), 0, 0, strategy)
    got = rows_of(conn, reg, table)
    assert {k: v[:2] for k, v in got.items()} == {k: (i + 0.5, i) for i, k in enumerate(stored)}
    # a second load of the same keys updates them; a key given twice: the last row wins
    again = (
        frame(ENTITIES[entity].column, [source[0], source[-1], source[0]], arrow_type, a=[1.0, 2.0, 3.0], n=[7, 8, 9])
        if arrow_type is not None
        else frame("merchant_key", ["m-1", "m-1"], pa.string(), a=[1.0, 3.0], n=[7, 9])
    )
    summary = load(conn, reg, table, again, strategy=strategy)
    assert (summary.superseded, summary.updated, summary.inserted) == (1, 2 if arrow_type is not None else 1, 0)
    got = rows_of(conn, reg, table)
    assert got[stored[0]][:2] == (3.0, 9)
    if arrow_type is not None:
        assert got[stored[-1]][:2] == (2.0, 8)
    assert len(got) == len(stored)


def test_csv_and_parquet_sources_and_the_default_key_column(conn, reg, tmp_path):
    csv = tmp_path / "users.csv"
    csv.write_text("uid,a,n\n1,0.5,10\n-2,1.5,20\n9223372036854775807,2.5,30\n")
    assert load(conn, reg, "users", str(csv)).inserted == 3  # the key column defaults to the entity's: uid
    path = tmp_path / "devices.parquet"
    pq.write_table(frame("device_id", ["a", "b"]), path)
    assert load(conn, reg, "devices", str(path)).inserted == 2
    assert rows_of(conn, reg, "users")[9223372036854775807][:2] == (2.5, 30)
    assert sorted(rows_of(conn, reg, "devices")) == ["a", "b"]
    # --key-column still overrides; a missing key column names the entity's
    assert load(conn, reg, "users", frame("id", [1]), key_column="id").updated == 1
    with pytest.raises(LoadInputError, match=r"no key column 'uid' \(columns: id, a, n\)"):
        load(conn, reg, "users", frame("id", [1]))


def test_partial_loads_per_key_type(conn, reg):
    load(conn, reg, "sessions", frame("session_id", [str(u) for u in U[:3]]))
    summary = load(
        conn,
        reg,
        "sessions",
        pa.table({"session_id": [str(U[1]), str(U[5])], "n": pa.array([70, 71], pa.int32())}),
        partial=True,
    )
    assert (summary.inserted, summary.updated) == (1, 1)
    got = rows_of(conn, reg, "sessions")
    assert got[U[1]][:2] == (1.5, 70) and got[U[5]][:2] == (None, 71) and got[U[0]][:2] == (0.5, 0)


INVALID = [
    (
        "user",
        ["1", "12x", "99999999999999999999", "9223372036854775808"],
        pa.string(),
        [
            "row 2, column 'uid': key '12x' is not an integer; user keys are an integer (a signed 64-bit bigint), or its decimal text",
            "row 3, column 'uid': key 99999999999999999999 is out of range for bigint (-9223372036854775808..9223372036854775807)",
            "row 4, column 'uid': key 9223372036854775808 is out of range for bigint (-9223372036854775808..9223372036854775807)",
        ],
    ),
    (
        "user",
        [1, 2**63],
        pa.uint64(),
        [
            "row 2, column 'uid': key 9223372036854775808 is out of range for bigint (-9223372036854775808..9223372036854775807)"
        ],
    ),
    (
        "device",
        ["ok", "nine-char", "", "a\x00b", None],
        pa.string(),
        [
            "row 2, column 'device_id': key 'nine-char' is 9 characters; device keys are 1 to 8 characters (the entity's max_length)",
            "row 3, column 'device_id': key '' is 0 characters; device keys are 1 to 8 characters (the entity's max_length)",
            "row 4, column 'device_id': device key must not contain NUL characters",
            "row 5, column 'device_id': key is null",
        ],
    ),
    (
        "session",
        [str(U[0]), "not-a-uuid", str(U[1])[:-1] + "g"],
        pa.string(),
        [
            "row 2, column 'session_id': key 'not-a-uuid' is not a UUID; session keys are a UUID (32 hex digits, hyphens and "
            "braces as PostgreSQL takes them, or urn:uuid:...; 16 bytes, or uuid.UUID)",
            f"row 3, column 'session_id': key '{str(U[1])[:-1]}g' is not a UUID; session keys are a UUID (32 hex digits, "
            "hyphens and braces as PostgreSQL takes them, or urn:uuid:...; 16 bytes, or uuid.UUID)",
        ],
    ),
    (
        "merchant",
        ["m-1", ""],
        pa.string(),
        ["row 2, column 'merchant_key': merchant key: a natural id must not be empty"],
    ),
]


@pytest.mark.parametrize("entity, source, arrow_type, reasons", INVALID, ids=[f"{c[0]}-{c[2]}" for c in INVALID])
def test_invalid_keys_abort_or_are_skipped(conn, reg, entity, source, arrow_type, reasons):
    table, key = TABLE[entity], ENTITIES[entity].column
    data = frame(key, source, arrow_type)
    with pytest.raises(LoadInputError) as caught:
        load(conn, reg, table, data)
    assert str(caught.value) == f'<Table>: {reasons[0]}; nothing was loaded, "{reg.schema}"."{table}" is unchanged'
    assert caught.value.row == int(reasons[0].split(",")[0].split()[1]) and caught.value.column == key
    assert rows_of(conn, reg, table) == {}
    summary = load(conn, reg, table, data, on_invalid="skip")
    assert summary.rejected == len(reasons) and summary.inserted == len(source) - len(reasons)
    assert [e.split(": ", 1)[1] for e in summary.examples] == reasons


def test_wrong_key_column_types_and_hash_keys_name_what_is_valid(conn, reg):
    with pytest.raises(
        LoadInputError,
        match=r"key column 'uid' is double; user keys \(bigint\) are an integer "
        r"\(a signed 64-bit bigint\), or its decimal text",
    ):
        load(conn, reg, "users", frame("uid", [1.5], pa.float64()))
    with pytest.raises(
        LoadInputError,
        match=r"key column 'session_id' is fixed_size_binary\[8\]; session keys \(uuid\) are a "
        r"UUID \(32 hex digits, hyphens and braces as PostgreSQL takes them",
    ):
        load(conn, reg, "sessions", frame("session_id", [b"12345678"], pa.binary(8)))
    with pytest.raises(
        LoadInputError,
        match=r"hash_keys=True \(--hash-keys\) hashes natural ids into 32-byte keys, but table "
        r"users is of entity 'user', keyed by bigint",
    ):
        load(conn, reg, "users", frame("uid", [1]), hash_keys=True)
    # the default entity still takes --hash-keys; a hashed entity hashes with or without it
    load(conn, reg, "plain", frame("hashkey", ["n-1"]), hash_keys=True)
    load(conn, reg, "merchants", frame("merchant_key", ["n-1"]), hash_keys=True)
    assert (
        list(rows_of(conn, reg, "plain")) == list(rows_of(conn, reg, "merchants")) == [hashlib.sha256(b"n-1").digest()]
    )


# -- newest wins ----------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["upsert", "rebuild"])
def test_newest_wins_in_bulk_loads(conn, reg, strategy):
    load(conn, reg, "users", frame("uid", [1, 2, 3, 4], a=[1, 2, 3, 4], n=[1, 2, 3, 4], stamps=[100, 200, 300, 400]))
    summary = load(
        conn,
        reg,
        "users",
        frame("uid", [1, 2, 3, 5], a=[10, 20, 30, 50], n=[10, 20, 30, 50], stamps=[150, 200, 250, 1]),
        strategy=strategy,
    )
    # 1: newer -> written; 2: equal -> written (as live updates: t.updated_at <= EXCLUDED.updated_at);
    # 3: older -> skipped; 5: new key -> inserted
    assert (summary.inserted, summary.updated, summary.skipped_newer, summary.strategy) == (1, 2, 1, strategy)
    assert "skipped 1 row(s): the stored row is newer" in summary.describe()
    assert rows_of(conn, reg, "users") == {
        1: (10.0, 10, 150),
        2: (20.0, 20, 200),
        3: (3.0, 3, 300),
        4: (4.0, 4, 400),
        5: (50.0, 50, 1),
    }
    if strategy == "rebuild":
        assert (summary.rows_before, summary.rows_after) == (4, 5)
    summary = load(
        conn,
        reg,
        "users",
        frame("uid", [3, 4], a=[31, 41], n=[31, 41], stamps=[5, 6]),
        strategy=strategy,
        overwrite_newer=True,
    )
    assert (summary.updated, summary.skipped_newer) == (2, 0)
    assert rows_of(conn, reg, "users")[3] == (31.0, 31, 5)
    # without updated_at in the source: the load time, always written
    summary = load(conn, reg, "users", frame("uid", [3]), strategy=strategy)
    assert (summary.updated, summary.skipped_newer) == (1, 0) and rows_of(conn, reg, "users")[3][:2] == (0.5, 0)


def test_newest_wins_applies_to_partial_loads_and_not_to_replace(conn, reg):
    load(conn, reg, "devices", frame("device_id", ["a", "b"], stamps=[100, 100]))
    summary = load(
        conn,
        reg,
        "devices",
        pa.table({"device_id": ["a", "b"], "n": pa.array([5, 6], pa.int32()), "updated_at": [99, 101]}),
        partial=True,
    )
    assert (summary.updated, summary.skipped_newer) == (1, 1)
    assert rows_of(conn, reg, "devices") == {"a": (0.5, 0, 100), "b": (1.5, 6, 101)}
    summary = load(conn, reg, "devices", frame("device_id", ["a"], stamps=[1]), mode="replace")
    assert (summary.skipped_newer, summary.rows_after) == (0, 1) and rows_of(conn, reg, "devices") == {"a": (0.5, 0, 1)}


def test_cli_reports_skipped_rows(conn, reg, tmp_path, dsn, capsys):
    defs = tmp_path / "features.toml"
    defs.write_text(
        f'schema = "{reg.schema}"\n[entities.user]\nkey = "bigint"\ncolumn = "uid"\n'
        '[tables.users]\nentity = "user"\n[tables.users.features]\na = "real"\nn = "integer"\n'
    )
    load(conn, reg, "users", frame("uid", [1, 2], stamps=[500, 500]))
    csv = tmp_path / "old.csv"
    csv.write_text("uid,a,n,updated_at\n1,9.5,9,400\n2,9.5,9,600\n")
    assert cli_main(["load", "users", str(csv), "--dsn", dsn, "-d", str(defs), "-q", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["skipped_newer"], out["updated"], out["inserted"]) == (1, 1, 0)
    assert cli_main(["load", "users", str(csv), "--dsn", dsn, "-d", str(defs), "-q", "--overwrite-newer"]) == 0
    text = capsys.readouterr().out
    assert "updated 2" in text and "skipped" not in text
    assert rows_of(conn, reg, "users") == {1: (9.5, 9, 400), 2: (9.5, 9, 600)}
    csv.write_text("uid,a,n,updated_at\n1,9.5,9,1\n")
    assert cli_main(["load", "users", str(csv), "--dsn", dsn, "-d", str(defs), "-q"]) == 0
    assert "skipped 1 row(s): the stored row is newer (newest wins; --overwrite-newer" in capsys.readouterr().out


@pytest.mark.parametrize("entity", ["device", "user", "session"])
def test_many_batches_nulls_and_duplicates_across_batches(conn, reg, entity):
    import random

    rng = random.Random(7)
    make = {
        "device": lambda i: "k" + "x" * (i % 6) + str(i % 100),
        "user": lambda i: (i % 997) * 7919 - 2**40,
        "session": lambda i: str(uuid.UUID(int=i % 1013)),
    }[entity]
    keys = [make(rng.randrange(5000)) for _ in range(4000)]
    a = [None if rng.random() < 0.2 else float(rng.randrange(1000)) for _ in keys]
    n = [None if rng.random() < 0.2 else rng.randrange(10**6) for _ in keys]
    data = pa.table({ENTITIES[entity].column: keys, "a": pa.array(a, pa.float32()), "n": pa.array(n, pa.int32())})
    summary = load(conn, reg, TABLE[entity], data, batch_rows=333, strategy="upsert")
    last = {}
    for k, x, y in zip(keys, a, n):
        last[uuid.UUID(k) if entity == "session" else k] = (x, y)
    assert (summary.inserted, summary.superseded) == (len(last), len(keys) - len(last))
    assert {k: v[:2] for k, v in rows_of(conn, reg, TABLE[entity]).items()} == last
