"""Bulk loads that succeed: every source format and key form, every apply strategy, read back exactly.

Expected contents are computed from the input independently of the loader
(numpy/pyarrow values, hashlib for keys) and compared with full-table reads.
The helpers here are shared by the other write-path test files.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from pgfeatures import AsyncFeatureStore, FeatureStore
from pgfeatures.cli import main as cli_main
from pgfeatures.definitions import FeatureTable, Registry
from pgfeatures.load import LoadSummary, encode_copy_rows, find_duplicates, load
from pgfeatures.schema import apply_schema, drift

MIXED = {"r": "real", "d": "double precision", "s": "smallint", "i": "integer", "b": "bigint", "ok": "boolean"}


def make_registry(schema: str, covering: bool = False) -> Registry:
    return Registry.of(
        [
            FeatureTable.of("mixed", MIXED, covering_index=covering),
            FeatureTable.of("plain", {f"f{j}": "real" for j in range(4)}, covering_index=covering),
        ],
        schema=schema,
    )


def keys_for(ids: range | list[int], prefix: bytes = b"k") -> list[bytes]:
    return [hashlib.sha256(prefix + b"%d" % i).digest() for i in ids]


def snapshot(conn: psycopg.Connection, schema: str, table: str) -> list[tuple[Any, ...]]:
    """Every row, every column, in key order: compared before/after to prove nothing changed."""
    query = sql.SQL("SELECT * FROM {} ORDER BY hashkey").format(sql.Identifier(schema, table))
    return conn.execute(query, binary=True).fetchall()


def contents(conn: psycopg.Connection, schema: str, table: str, columns: list[str]) -> dict[bytes, tuple[Any, ...]]:
    # updated_at (a timestamptz) as epoch seconds, which the tests write it as
    cols = [
        sql.SQL("extract(epoch FROM {})::float8").format(sql.Identifier(c)) if c == "updated_at" else sql.Identifier(c)
        for c in columns
    ]
    query = sql.SQL("SELECT hashkey, {} FROM {}").format(sql.SQL(", ").join(cols), sql.Identifier(schema, table))
    # binary results: a real comes back as the exact float32 value, not its shortest decimal text
    return {bytes(r[0]): tuple(r[1:]) for r in conn.execute(query, binary=True).fetchall()}


def mixed_table(ids: range | list[int], seed: int = 0, nulls: bool = True, key_type: str = "fixed") -> pa.Table:
    """Random mixed-type rows (10% NULLs per column when ``nulls``), keys in the given form."""
    rng = np.random.default_rng(seed)
    n = len(ids)
    keys = keys_for(ids)
    if key_type == "fixed":
        key = pa.array(keys, pa.binary(32))
    elif key_type == "binary":
        key = pa.array(keys, pa.binary())
    else:
        key = pa.array([k.hex() for k in keys], pa.string())

    def col(values: np.ndarray, typ: pa.DataType) -> pa.Array:
        mask = rng.random(n) < 0.1 if nulls else None
        return pa.array(values, typ, mask=mask)

    return pa.table(
        {
            "hashkey": key,
            "r": col(rng.uniform(-1e6, 1e6, n).astype(np.float32), pa.float32()),
            "d": col(rng.uniform(-1e12, 1e12, n), pa.float64()),
            "s": col(rng.integers(-(2**15), 2**15, n), pa.int16()),
            "i": col(rng.integers(-(2**31), 2**31, n), pa.int32()),
            "b": col(rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64), pa.int64()),
            "ok": col(rng.random(n) < 0.5, pa.bool_()),
        }
    )


def expected_rows(table: pa.Table) -> dict[bytes, tuple[Any, ...]]:
    """What PostgreSQL must hold for ``table`` (keys decoded from hex if needed, real as float32)."""
    out = {}
    cols = [table.column(c).to_pylist() for c in MIXED]
    for i, key in enumerate(table.column("hashkey").to_pylist()):
        key = bytes.fromhex(key) if isinstance(key, str) else key
        row = [c[i] for c in cols]
        row[0] = None if row[0] is None else float(np.float32(row[0]))
        out[key] = tuple(row)
    return out


def write_source(table: pa.Table, path: Path, fmt: str) -> Path:
    if fmt == "parquet":
        pq.write_table(table, path.with_suffix(".parquet"))
        return path.with_suffix(".parquet")
    if fmt == "csv":
        pcsv.write_csv(table, path.with_suffix(".csv"))
        return path.with_suffix(".csv")
    with pa.OSFile(str(path.with_suffix(".arrow")), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=70)
    return path.with_suffix(".arrow")


@pytest.fixture()
def reg(conn: psycopg.Connection, schema: str) -> Registry:
    registry = make_registry(schema)
    apply_schema(conn, registry)
    return registry


# -- formats, keys, strategies ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt,key_type", [("parquet", "fixed"), ("parquet", "binary"), ("csv", "hex"), ("arrow", "hex"), ("table", "fixed")]
)
def test_formats_read_back_exactly(conn, schema, reg, tmp_path, fmt, key_type):
    data = mixed_table(range(300), seed=1, key_type=key_type)
    source: Any = data if fmt == "table" else write_source(data, tmp_path / "mixed", fmt)
    summary = load(conn, reg, "mixed", source, batch_rows=64)
    assert contents(conn, schema, "mixed", list(MIXED)) == expected_rows(data)
    assert (summary.rows_read, summary.inserted, summary.updated, summary.rejected) == (300, 300, 0, 0)


@pytest.mark.parametrize("strategy", ["upsert", "rebuild"])
def test_merge_inserts_updates_and_keeps_other_rows(conn, schema, reg, strategy):
    first = mixed_table(range(0, 200), seed=2)
    load(conn, reg, "mixed", first)
    second = mixed_table(range(150, 260), seed=3)  # 50 updates, 60 inserts
    summary = load(conn, reg, "mixed", second, strategy=strategy)
    assert summary.strategy == strategy
    assert (summary.inserted, summary.updated) == (60, 50)
    expected = expected_rows(first)
    expected.update(expected_rows(second))
    assert contents(conn, schema, "mixed", list(MIXED)) == expected
    assert drift(conn, schema, reg.table("mixed")) == []


def structure(conn: psycopg.Connection, schema: str, table: str) -> dict[str, Any]:
    """Everything about a table but its rows: columns, defaults, constraints, indexes, grants, options."""
    name = sql.Identifier(schema, table).as_string(conn)
    return {
        "columns": conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull, pg_get_expr(adbin, adrelid) FROM pg_attribute "
            "LEFT JOIN pg_attrdef ON adrelid = attrelid AND adnum = attnum "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            [name],
        ).fetchall(),
        "constraints": conn.execute(
            "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = %s::regclass ORDER BY 1",
            [name],
        ).fetchall(),
        "indexes": conn.execute(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = %s::regclass ORDER BY 1", [name]
        ).fetchall(),
        "table": conn.execute(
            "SELECT relacl::text, reloptions, relpersistence, pg_get_userbyid(relowner) FROM pg_class "
            "WHERE oid = %s::regclass",
            [name],
        ).fetchone(),
    }


@pytest.mark.parametrize("mode,strategy", [("replace", "auto"), ("merge", "rebuild")])
def test_swaps_keep_the_table_exactly_as_schema_py_made_it(conn, schema, mode, strategy):
    reg = make_registry(schema, covering=True)
    apply_schema(conn, reg)
    table = sql.Identifier(schema, "mixed")
    conn.execute(sql.SQL("GRANT SELECT ON {} TO PUBLIC").format(table))
    conn.execute(sql.SQL("ALTER TABLE {} SET (fillfactor = 90, autovacuum_enabled = true)").format(table))
    before = structure(conn, schema, "mixed")
    assert len(before["indexes"]) == 3 and "=r/" in before["table"][0]  # key, covering, updated_at
    load(conn, reg, "mixed", mixed_table(range(0, 100), seed=4))
    data = mixed_table(range(50, 120), seed=5)
    summary = load(conn, reg, "mixed", data, mode=mode, strategy=strategy)
    assert summary.strategy == ("replace" if mode == "replace" else "rebuild")
    assert structure(conn, schema, "mixed") == before
    assert drift(conn, schema, reg.table("mixed")) == []
    expected = (
        expected_rows(data)
        if mode == "replace"
        else {**expected_rows(mixed_table(range(0, 100), seed=4)), **expected_rows(data)}
    )
    assert contents(conn, schema, "mixed", list(MIXED)) == expected
    assert (summary.rows_before, summary.rows_after) == (100, 70 if mode == "replace" else 120)
    assert (summary.inserted, summary.updated) == ((70, 0) if mode == "replace" else (20, 50))
    with pytest.raises(psycopg.errors.CheckViolation):  # the key-length CHECK came along
        conn.execute(sql.SQL("INSERT INTO {} (hashkey) VALUES ('\\x00')").format(table))
    leftovers = conn.execute(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname LIKE '\\_pgf%%'",
        [schema],
    ).fetchone()[0]
    assert leftovers == 0  # no stage, new table or index left behind


@pytest.fixture()
def tablespace(conn, schema) -> Any:
    """A real tablespace: a directory under PGFEATURES_HOME owned by the server's OS user (the
    embedded server runs as ``pgfeatures`` when the tests run as root). Dropped afterwards, with
    the test's schema (whose tables it holds)."""
    import os
    import pwd
    import shutil
    import uuid

    from pgfeatures import embedded

    name = f"ts_{uuid.uuid4().hex[:10]}"
    directory = embedded.home() / "tablespaces" / name
    directory.mkdir(parents=True)
    if os.geteuid() == 0:
        user = pwd.getpwnam(embedded.SERVICE_USER)
        for path in (directory.parent, directory):
            os.chown(path, user.pw_uid, user.pw_gid)
    conn.execute(sql.SQL("CREATE TABLESPACE {} LOCATION {}").format(sql.Identifier(name), sql.Literal(str(directory))))
    try:
        yield name
    finally:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("DROP TABLESPACE IF EXISTS {}").format(sql.Identifier(name)))
        shutil.rmtree(directory, ignore_errors=True)


def tablespaces(conn: psycopg.Connection, schema: str, table: str) -> dict[str, str | None]:
    """The tablespace of the table and of each of its indexes (None: the database's default)."""
    rows = conn.execute(
        "SELECT c.relname::text, t.spcname::text FROM pg_class c LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace "
        "WHERE c.oid = %s::regclass OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = %s::regclass)",
        [f"{schema}.{table}"] * 2,
    ).fetchall()
    return {("table" if name == table else name): spc for name, spc in rows}


@pytest.mark.parametrize("mode,strategy", [("replace", "auto"), ("merge", "rebuild")])
def test_swaps_keep_the_tablespaces_of_the_table_and_its_indexes(conn, schema, tablespace, mode, strategy):
    """A swap built the new table and its indexes in the default tablespace: a table moved to its
    own tablespace by an operator was silently moved back by the next rebuild or replace."""
    reg = make_registry(schema, covering=True)
    apply_schema(conn, reg)
    load(conn, reg, "mixed", mixed_table(range(0, 100), seed=4))
    table = sql.Identifier(schema, "mixed")
    conn.execute(sql.SQL("ALTER TABLE {} SET TABLESPACE {}").format(table, sql.Identifier(tablespace)))
    conn.execute(
        sql.SQL("ALTER INDEX {} SET TABLESPACE {}").format(
            sql.Identifier(schema, "mixed_pkey"), sql.Identifier(tablespace)
        )
    )
    before = tablespaces(conn, schema, "mixed")
    covering = next(name for name in before if name not in ("table", "mixed_pkey", "mixed_updated_at"))
    # the covering index and the index on updated_at stay in the default
    assert before == {"table": tablespace, "mixed_pkey": tablespace, covering: None, "mixed_updated_at": None}
    summary = load(conn, reg, "mixed", mixed_table(range(50, 120), seed=5), mode=mode, strategy=strategy)
    assert summary.strategy == ("replace" if mode == "replace" else "rebuild")
    assert tablespaces(conn, schema, "mixed") == before
    conn.execute(
        sql.SQL("ALTER INDEX {} SET TABLESPACE {}").format(sql.Identifier(schema, covering), sql.Identifier(tablespace))
    )
    conn.execute(sql.SQL("ALTER INDEX {} SET TABLESPACE pg_default").format(sql.Identifier(schema, "mixed_pkey")))
    conn.execute(
        sql.SQL("ALTER INDEX {} SET TABLESPACE {}").format(
            sql.Identifier(schema, "mixed_updated_at"), sql.Identifier(tablespace)
        )
    )
    before = tablespaces(conn, schema, "mixed")
    assert before == {"table": tablespace, "mixed_pkey": None, covering: tablespace, "mixed_updated_at": tablespace}
    load(conn, reg, "mixed", mixed_table(range(60, 130), seed=6), mode=mode, strategy=strategy)
    assert tablespaces(conn, schema, "mixed") == before


def test_concurrent_rebuilds_queue_instead_of_deadlocking(dsn, conn, schema, reg):
    ids = range(3000)
    load(
        conn,
        reg,
        "plain",
        pa.table(
            {
                "hashkey": pa.array(keys_for(ids), pa.binary(32)),
                **{f"f{j}": np.zeros(3000, np.float32) for j in range(4)},
            }
        ),
    )
    first_locked, second_started = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def run(name: str, value: float, progress: Any, after: threading.Event | None = None) -> None:
        data = pa.table(
            {
                "hashkey": pa.array(keys_for(ids), pa.binary(32)),
                **{f"f{j}": np.full(3000, value, np.float32) for j in range(4)},
            }
        )
        if after is not None:
            after.wait(20)
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                results[name] = load(c, reg, "plain", data, strategy="rebuild", progress=progress)
        except Exception as exc:  # noqa: BLE001 - checked below
            results[name] = exc

    def hold(p: Any) -> None:  # the first load, holding its lock, waits until the second one is about to ask for it
        if p.phase == "indexing":
            first_locked.set()
            second_started.wait(20)

    first = threading.Thread(target=run, args=("first", 1.0, hold))
    second = threading.Thread(
        target=run, args=("second", 2.0, lambda p: p.phase == "deduplicating" and second_started.set(), first_locked)
    )
    first.start()
    second.start()
    first.join(60)
    second.join(60)
    assert len(results) == 2 and all(isinstance(r, LoadSummary) for r in results.values()), results
    assert {v for row in contents(conn, schema, "plain", ["f0", "f1", "f2", "f3"]).values() for v in row} == {2.0}


def test_covering_index_gets_vacuumed_for_index_only_scans(conn, schema):
    reg = make_registry(schema, covering=True)
    summary = load(
        conn,
        reg,
        "plain",
        pa.table(
            {
                "hashkey": pa.array(keys_for(range(2000)), pa.binary(32)),
                **{f"f{j}": np.arange(2000, dtype=np.float32) for j in range(4)},
            }
        ),
    )
    assert summary.maintenance.startswith("VACUUM (ANALYZE)") and "index-only" in summary.maintenance
    name = sql.Identifier(schema, "plain").as_string(conn)
    pages, visible = conn.execute(
        "SELECT relpages, relallvisible FROM pg_class WHERE oid = %s::regclass", [name]
    ).fetchone()
    assert pages > 0 and visible == pages
    conn.execute("SET enable_seqscan = off")
    plan = conn.execute(
        sql.SQL("EXPLAIN (FORMAT JSON) SELECT f0, f1, f2, f3, updated_at FROM {} WHERE hashkey = %s").format(
            sql.Identifier(schema, "plain")
        ),
        [keys_for([7])[0]],
    ).fetchone()[0]
    assert plan[0]["Plan"]["Node Type"] == "Index Only Scan"


def test_first_load_creates_the_table(conn, schema):
    reg = make_registry(schema)  # no apply_schema
    data = mixed_table(range(20), seed=6)
    load(conn, reg, "mixed", data)
    assert contents(conn, schema, "mixed", list(MIXED)) == expected_rows(data)
    assert drift(conn, schema, reg.table("mixed")) == []


def test_natural_ids_are_hashed_with_sha256(conn, schema, reg, tmp_path):
    ids = ["user-1", "user-2", "ünïcode"]
    load(
        conn,
        reg,
        "plain",
        pa.table({"user_id": ids, **{f"f{j}": [1.0, 2.0, 3.0] for j in range(4)}}),
        key_column="user_id",
        hash_keys=True,
    )
    got = contents(conn, schema, "plain", ["f0"])
    assert got == {hashlib.sha256(s.encode()).digest(): (float(v),) for s, v in zip(ids, [1, 2, 3])}
    # integers hash as their decimal text, in Parquet and CSV alike
    path = tmp_path / "ints.csv"
    path.write_text("uid,f0,f1,f2,f3\n42,1,2,3,4\n")
    load(conn, reg, "plain", path, key_column="uid", hash_keys=True)
    pq.write_table(
        pa.table({"uid": pa.array([43], pa.int64()), **{f"f{j}": [5.0] for j in range(4)}}), tmp_path / "i.parquet"
    )
    load(conn, reg, "plain", tmp_path / "i.parquet", key_column="uid", hash_keys=True)
    got = contents(conn, schema, "plain", ["f0"])
    assert got[hashlib.sha256(b"42").digest()] == (1.0,) and got[hashlib.sha256(b"43").digest()] == (5.0,)


def test_updated_at_is_load_time_unless_given(conn, schema, reg):
    t0 = int(time.time())
    load(
        conn,
        reg,
        "plain",
        pa.table({"hashkey": pa.array(keys_for(range(3)), pa.binary(32)), **{f"f{j}": [0.5] * 3 for j in range(4)}}),
    )
    stamps = {r[0] for r in contents(conn, schema, "plain", ["updated_at"]).values()}
    assert len(stamps) == 1 and t0 <= stamps.pop() <= time.time()  # the load's transaction time, to the microsecond
    load(
        conn,
        reg,
        "plain",
        pa.table(
            {
                "hashkey": pa.array(keys_for(range(3)), pa.binary(32)),
                **{f"f{j}": [0.5] * 3 for j in range(4)},
                "updated_at": pa.array([1_700_000_000, None, 1_700_000_002], pa.int64()),
            }
        ),
        updated_at=1_600_000_000,
        overwrite_newer=True,
    )  # older than the stored load-time stamps
    got = contents(conn, schema, "plain", ["updated_at"])
    assert [got[k][0] for k in keys_for(range(3))] == [1_700_000_000, 1_600_000_000, 1_700_000_002]


def test_duplicate_keys_last_row_wins_across_files(conn, schema, reg, tmp_path):
    ks = keys_for(range(4))
    a = pa.table(
        {"hashkey": pa.array([ks[0], ks[1], ks[0]], pa.binary(32)), **{f"f{j}": [1.0, 2.0, 3.0] for j in range(4)}}
    )
    b = pa.table({"hashkey": pa.array([ks[1], ks[2]], pa.binary(32)), **{f"f{j}": [4.0, 5.0] for j in range(4)}})
    pq.write_table(a, tmp_path / "a.parquet")
    pq.write_table(b, tmp_path / "b.parquet")
    summary = load(conn, reg, "plain", [tmp_path / "a.parquet", tmp_path / "b.parquet"])
    assert (summary.rows_read, summary.superseded, summary.inserted) == (5, 2, 3)
    assert contents(conn, schema, "plain", ["f0"]) == {ks[0]: (3.0,), ks[1]: (4.0,), ks[2]: (5.0,)}


def test_partial_merge_changes_only_the_given_columns(conn, schema, reg):
    full = mixed_table(range(10), seed=7, nulls=False)
    load(conn, reg, "mixed", full)
    ks = keys_for([3, 4, 99])
    summary = load(
        conn,
        reg,
        "mixed",
        pa.table({"hashkey": pa.array(ks, pa.binary(32)), "s": pa.array([1, 2, 3], pa.int16())}),
        partial=True,
    )
    assert (summary.inserted, summary.updated) == (1, 2)
    got = contents(conn, schema, "mixed", list(MIXED))
    before = expected_rows(full)
    assert got[ks[0]] == (before[ks[0]][0], before[ks[0]][1], 1, *before[ks[0]][3:])
    assert got[ks[2]] == (None, None, 3, None, None, None)
    assert got[keys_for([5])[0]] == before[keys_for([5])[0]]


def test_nan_null_policy_and_skip_invalid_rows(conn, schema, reg):
    data = pa.table(
        {
            "hashkey": pa.array(keys_for(range(4)), pa.binary(32)),
            "r": pa.array([1.0, float("nan"), 3.0, 4.0], pa.float64()),
            "d": [1.0] * 4,
            "s": pa.array([1, 2, 70000, 4], pa.int64()),
            "i": [1] * 4,
            "b": [1] * 4,
            "ok": [True] * 4,
        }
    )
    summary = load(conn, reg, "mixed", data, nan="null", on_invalid="skip")
    assert (summary.rows_read, summary.rejected, summary.inserted) == (4, 1, 3)
    assert "row 3, column 's'" in summary.examples[0] and "out of range for smallint" in summary.examples[0]
    got = contents(conn, schema, "mixed", ["r", "s"])
    ks = keys_for(range(4))
    assert got == {ks[0]: (1.0, 1), ks[1]: (None, 2), ks[3]: (4.0, 4)}


def test_frames_and_batch_iterables(conn, schema, reg):
    data = mixed_table(range(100), seed=8)
    load(conn, reg, "mixed", iter(data.to_batches(max_chunksize=30)))
    assert contents(conn, schema, "mixed", list(MIXED)) == expected_rows(data)
    load(conn, reg, "mixed", data.to_batches(max_chunksize=30)[0])
    load(conn, reg, "mixed", pa.RecordBatchReader.from_batches(data.schema, data.to_batches()))
    assert len(snapshot(conn, schema, "mixed")) == 100


@pytest.mark.parametrize("module", ["pandas", "polars"])
def test_dataframes(conn, schema, reg, module):
    lib = pytest.importorskip(module)
    data = mixed_table(range(50), seed=9, nulls=False, key_type="hex")
    frame = data.to_pandas() if module == "pandas" else lib.from_arrow(data)
    load(conn, reg, "mixed", frame)
    assert contents(conn, schema, "mixed", list(MIXED)) == expected_rows(data)


# -- stores and CLI --------------------------------------------------------------------------------


def test_store_write_features_sync_and_async(dsn, conn, schema, reg):
    data = mixed_table(range(40), seed=10)
    with FeatureStore(reg, dsn, pool_size=1, write_pool_size=1) as store:
        summary = store.write_features("mixed", data)
        assert summary.inserted == 40
        key = keys_for([3])[0]
        assert store.get_features(key, ["mixed"])["mixed"] == dict(zip(MIXED, expected_rows(data)[key]))

    async def run() -> Any:
        async with AsyncFeatureStore(reg, dsn, pool_size=1, write_pool_size=1) as store:
            return await store.write_features(
                "mixed", mixed_table(range(20, 60), seed=11), mode="replace", progress=lambda p: phases.append(p.phase)
            )

    phases: list[str] = []
    summary = asyncio.run(run())
    assert (summary.strategy, summary.rows_after) == ("replace", 40)
    assert contents(conn, schema, "mixed", list(MIXED)) == expected_rows(mixed_table(range(20, 60), seed=11))
    assert phases[0] == "reading" and "swapping" in phases and phases[-1] == "done"


def test_cli_load(dsn, conn, schema, tmp_path, capsys):
    definitions = tmp_path / "features.toml"
    definitions.write_text(
        f'schema = "{schema}"\n[tables.plain.features]\n' + "".join(f'f{j} = "real"\n' for j in range(4))
    )
    path = tmp_path / "data.csv"
    ks = keys_for(range(3))
    path.write_text("id,f0,f1,f2,f3\n" + "".join(f"{k.hex()},{i},1,2,3\n" for i, k in enumerate(ks)))
    assert cli_main(["load", "plain", str(path), "--dsn", dsn, "-d", str(definitions), "--key-column", "id"]) == 0
    out = capsys.readouterr().out
    assert "rows read 3" in out and "inserted 3" in out
    assert contents(conn, schema, "plain", ["f0"]) == {k: (float(i),) for i, k in enumerate(ks)}
    assert cli_main(["load", "plain", str(path), "--dsn", dsn, "-d", str(definitions)]) == 2
    assert "no key column 'hashkey'" in " ".join(capsys.readouterr().err.split())
    assert cli_main(["load", "plain", str(path), "--dsn", dsn, "-d", str(definitions), "--mode", "upsert", "-q"]) == 2
    assert "invalid mode='upsert'; valid: merge, replace" in " ".join(capsys.readouterr().err.split())


# -- pure pieces -----------------------------------------------------------------------------------


def test_copy_encoding_with_nulls_round_trips(conn):
    rng = np.random.default_rng(12)
    n = 500
    keys = np.frombuffer(rng.bytes(32 * n), np.uint8).reshape(n, 32)
    f4 = rng.random(n, dtype=np.float32)
    i2 = rng.integers(-100, 100, n).astype(np.int16)
    b1 = rng.random(n) < 0.5
    masks = [rng.random(n) < 0.3 for _ in range(3)]
    conn.execute("CREATE TEMP TABLE enc (k bytea, a real, b smallint, c boolean)")
    from pgfeatures.load import COPY_HEADER, COPY_TRAILER

    payload = encode_copy_rows([(keys, None), (f4, masks[0]), (i2, masks[1]), (b1, masks[2])])
    with conn.cursor().copy("COPY enc FROM STDIN (FORMAT BINARY)") as copy:
        for part in (COPY_HEADER, payload, COPY_TRAILER):
            copy.write(part)
    got = {bytes(r[0]): r[1:] for r in conn.execute("SELECT * FROM enc", binary=True)}
    for i in range(n):
        expect = tuple(None if m[i] else v for m, v in zip(masks, (float(f4[i]), int(i2[i]), bool(b1[i]))))
        assert got[keys[i].tobytes()] == expect


def test_find_duplicates_compares_whole_keys():
    # keys equal in three of four 8-byte words must not be confused; true duplicates are found
    base = np.zeros((6, 32), np.uint8)
    base[:, 31] = [1, 2, 3, 1, 2, 1]
    seqs = np.arange(10, 16, dtype=np.int64)
    dup = find_duplicates(base, seqs)
    assert dup is not None and dup.keys == 2
    assert sorted(dup.superseded.tolist()) == [10, 11, 13]  # key 1 at 10,13,15 -> 15 wins; key 2 at 11,14 -> 14 wins
    assert dup.first.tolist() == [10, 13, 15]
    assert find_duplicates(base[:3], seqs[:3]) is None
