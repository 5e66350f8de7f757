"""Bad input and broken loads: each fails with an error naming the file, column and row where it can,
and the table keeps exactly its previous contents (compared in full, before and after).

Databases that die mid-load are simulated by terminating the loading backend from another
connection (pg_terminate_backend), at three points: mid-COPY, blocked inside the merge
statement, and blocked on the final swap.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from pgfeatures.errors import (
    LoadError,
    LoadInputError,
    LoadInterruptedError,
    SchemaDriftError,
    UnknownTableError,
)
from pgfeatures.load import load
from pgfeatures.schema import drift
from test_load import keys_for, make_registry, mixed_table, snapshot


@pytest.fixture()
def base(conn: psycopg.Connection, schema: str) -> Iterator[Any]:
    """Both tables preloaded; yields the registry; asserts after the test that nothing changed."""
    reg = make_registry(schema)
    load(conn, reg, "mixed", mixed_table(range(50), seed=1))
    load(conn, reg, "plain", plain(range(50)))
    before = {t: snapshot(conn, schema, t) for t in ("mixed", "plain")}
    yield reg
    with psycopg.connect(conn.info.dsn, autocommit=True) as fresh:
        assert {t: snapshot(fresh, schema, t) for t in ("mixed", "plain")} == before


def plain(ids: Any, **overrides: Any) -> pa.Table:
    columns: dict[str, Any] = {
        "hashkey": pa.array(keys_for(ids), pa.binary(32)),
        **{f"f{j}": np.full(len(ids), 9.0, np.float32) for j in range(4)},
    }
    columns.update(overrides)
    return pa.table(columns)


def parquet(tmp_path: Path, table: pa.Table, name: str = "bad.parquet", **kwargs: Any) -> Path:
    pq.write_table(table, tmp_path / name, **kwargs)
    return tmp_path / name


def fails(error: type[Exception], *fragments: str, **where: Any) -> Callable[[Callable[[], Any]], LoadError]:
    """Run the load; check the error type, message fragments and where-attributes (source/column/row)."""

    def check(run: Callable[[], Any]) -> Any:
        with pytest.raises(error) as info:
            run()
        message = str(info.value)
        for fragment in fragments:
            assert fragment in message, message
        for attr, value in where.items():
            assert getattr(info.value, attr) == value, (attr, message)
        return info.value

    return check


# -- columns and types -----------------------------------------------------------------------------


def test_missing_column(conn, base, tmp_path):
    path = parquet(tmp_path, plain(range(5)).drop_columns(["f3"]))
    err = fails(LoadInputError, f"{path}: missing column(s) f3", "--partial", source=str(path), column="f3")(
        lambda: load(conn, base, "plain", path)
    )
    assert "is unchanged" in str(err)


def test_extra_column(conn, base, tmp_path):
    path = parquet(tmp_path, plain(range(5), extra=pa.array([1] * 5)))
    fails(LoadInputError, f"{path}: unexpected column(s) extra", "--ignore-extra", column="extra")(
        lambda: load(conn, base, "plain", path)
    )


def test_wrong_type(conn, base, tmp_path):
    path = parquet(tmp_path, plain(range(5), f1=pa.array(["a", "b", "c", "d", "e"])))
    fails(LoadInputError, f"{path}: column 'f1' is string, which cannot load into real", column="f1")(
        lambda: load(conn, base, "plain", path)
    )


def test_csv_value_that_is_not_a_number_names_its_row(conn, base, tmp_path):
    path = tmp_path / "bad.csv"
    ks = keys_for(range(4))
    path.write_text(
        "hashkey,f0,f1,f2,f3\n" + "".join(f"{k.hex()},1,{'abc' if i == 2 else 2},3,4\n" for i, k in enumerate(ks))
    )
    fails(
        LoadInputError, f"{path}: row 3, column 'f1': 'abc' is not a valid number", source=str(path), column="f1", row=3
    )(lambda: load(conn, base, "plain", path))


@pytest.mark.parametrize(
    "column,values,message",
    [
        (
            "s",
            pa.array([1, 2, 3, 4, 5, 6, 40000, 8], pa.int32()),
            "row 7, column 's': 40000 is out of range for smallint (-32768..32767)",
        ),
        (
            "i",
            pa.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 3e9, 8.0]),
            "row 7, column 'i': 3000000000.0 is out of range for integer",
        ),
        ("i", pa.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 1.5, 8.0]), "row 7, column 'i': 1.5 is not an integer"),
        ("r", pa.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 1e39, 8.0]), "row 7, column 'r': 1e+39 is out of range for real"),
        (
            "r",
            pa.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, float("nan"), 8.0]),
            "row 7, column 'r': NaN is not allowed (nan='null'",
        ),
        (
            "b",
            pa.array([1, 2, 3, 4, 5, 6, 2**63, 8], pa.uint64()),
            "row 7, column 'b': 9223372036854775808 is out of range for bigint",
        ),
    ],
)
def test_values_out_of_range_or_nan(conn, base, tmp_path, column, values, message):
    data = mixed_table(range(8), seed=2, nulls=False).drop_columns([column]).append_column(column, values)
    path = parquet(tmp_path, data)
    fails(LoadInputError, f"{path}: {message}", source=str(path), column=column, row=7)(
        lambda: load(conn, base, "mixed", path, batch_rows=3)
    )


@pytest.mark.parametrize(
    "keys,message",
    [
        (
            pa.array([b"\x01" * 32] * 4 + [b"\x02" * 31], pa.binary()),
            "row 5, column 'hashkey': key is 31 bytes; keys must be 32 bytes",
        ),
        (pa.array(["ab" * 32] * 4 + ["ab" * 31 + "a"]), "row 5, column 'hashkey': key 'abab"),
        (pa.array(["ab" * 32] * 4 + ["zz" * 32]), "row 5, column 'hashkey': key 'zzzz"),
        (pa.array([b"\x01" * 32] * 4 + [None], pa.binary(32)), "row 5, column 'hashkey': key is null"),
    ],
)
def test_malformed_keys(conn, base, tmp_path, keys, message):
    path = parquet(tmp_path, plain(range(5), hashkey=keys))
    fails(LoadInputError, f"{path}: {message}", row=5, column="hashkey")(lambda: load(conn, base, "plain", path))


def test_key_of_the_wrong_fixed_width(conn, base, tmp_path):
    path = parquet(tmp_path, plain(range(3), hashkey=pa.array([b"x" * 16] * 3, pa.binary(16))))
    fails(LoadInputError, "key column 'hashkey' is fixed_size_binary[16]", "--hash-keys")(
        lambda: load(conn, base, "plain", path)
    )


def test_duplicate_keys_rejected(conn, base, tmp_path):
    ids = [0, 1, 2, 3, 1, 5]
    path = parquet(tmp_path, plain(ids))
    fails(
        LoadInputError,
        f"1 key(s) appear more than once, the first at {path} row 2, {path} row 5",
        "--on-duplicate last",
    )(lambda: load(conn, base, "plain", path, on_duplicate="reject", batch_rows=2))


def test_invalid_rows_all_skipped_is_still_an_error(conn, base, tmp_path):
    path = parquet(tmp_path, plain(range(3), f0=pa.array([float("nan")] * 3)))
    fails(LoadInputError, "every row was rejected (3)", "NaN is not allowed")(
        lambda: load(conn, base, "plain", path, on_invalid="skip", mode="replace")
    )


# -- files -----------------------------------------------------------------------------------------


def test_empty_files(conn, base, tmp_path):
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    fails(LoadInputError, f"{empty}: empty file (0 bytes)")(lambda: load(conn, base, "plain", empty))
    header_only = tmp_path / "header.csv"
    header_only.write_text("hashkey,f0,f1,f2,f3\n")
    fails(LoadInputError, f"{header_only}: no rows", "would empty the table")(
        lambda: load(conn, base, "plain", header_only, mode="replace")
    )
    no_rows = parquet(tmp_path, plain([]), "none.parquet")
    fails(LoadInputError, f"{no_rows}: no rows")(lambda: load(conn, base, "plain", no_rows))
    no_batches = iter([pa.RecordBatch.from_pylist([], schema=plain([]).schema)])
    fails(LoadInputError, "<list_iterator>: no rows")(lambda: load(conn, base, "plain", no_batches))


def test_truncated_parquet(conn, base, tmp_path):
    path = parquet(tmp_path, plain(range(1000)))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    fails(LoadInputError, f"{path}: not a readable Parquet file")(lambda: load(conn, base, "plain", path))


def test_corrupt_parquet_fails_mid_stream(conn, base, tmp_path):
    # Several row groups with page checksums; a byte flipped in the last group's data: the first
    # groups are already COPYed when the corruption is found.
    data = plain(range(4000), f0=np.arange(4000, dtype=np.float32))
    path = parquet(tmp_path, data, row_group_size=1000, write_page_checksum=True, compression="none")
    meta = pq.ParquetFile(path).metadata
    column = meta.row_group(3).column(1)
    raw = bytearray(path.read_bytes())
    offset = (column.dictionary_page_offset or column.data_page_offset) + column.total_compressed_size - 100
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))
    rows_seen: list[int] = []
    fails(LoadInputError, f"{path}: cannot read the rows after row 3,000", "CRC")(
        lambda: load(conn, base, "plain", path, batch_rows=500, progress=lambda p: rows_seen.append(p.rows))
    )
    assert max(rows_seen) == 3000


def test_file_problems(conn, base, tmp_path):
    fails(LoadInputError, f"{tmp_path / 'nope.parquet'}: no such file")(
        lambda: load(conn, base, "plain", tmp_path / "nope.parquet")
    )
    odd = tmp_path / "data.xlsx"
    odd.write_bytes(b"x")
    fails(LoadInputError, "cannot tell the format", "--format")(lambda: load(conn, base, "plain", odd))
    a = parquet(tmp_path, plain(range(3)), "a.parquet")
    b = parquet(tmp_path, plain(range(3)).drop_columns(["f3"]), "b.parquet")
    fails(LoadInputError, f"{b} has columns f0, f1, f2 but {a} has f0, f1, f2, f3")(
        lambda: load(conn, base, "plain", [a, b], partial=True)
    )


def test_bad_options_and_unknown_table(conn, base):
    fails(LoadInputError, "invalid mode='upsert'; valid: merge, replace")(
        lambda: load(conn, base, "plain", plain(range(2)), mode="upsert")
    )
    fails(LoadInputError, "unknown load option(s): colour")(
        lambda: load(conn, base, "plain", plain(range(2)), colour=1)
    )
    fails(LoadInputError, "partial=True")(
        lambda: load(conn, base, "plain", plain(range(2)), partial=True, mode="replace")
    )
    fails(UnknownTableError, "unknown feature table(s): nope; valid tables: mixed, plain")(
        lambda: load(conn, base, "nope", plain(range(2)))
    )


# -- the table itself ------------------------------------------------------------------------------


def test_drifted_table_is_not_loaded(conn, schema, base):
    conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN surprise int").format(sql.Identifier(schema, "plain")))
    # the same comparison, and the same words, as schema.drift (pgfeatures init)
    err = fails(SchemaDriftError, "column surprise (integer) is not in the definition", "nothing was loaded")(
        lambda: load(conn, base, "plain", plain(range(3)))
    )
    assert (
        err.problems
        == {"plain": drift(conn, schema, base.table("plain"))}
        == {"plain": ["column surprise (integer) is not in the definition"]}
    )
    conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN surprise").format(sql.Identifier(schema, "plain")))


def test_replace_refuses_when_the_swap_would_lose_a_view(conn, schema, base):
    conn.execute(
        sql.SQL("CREATE VIEW {} AS SELECT * FROM {}").format(
            sql.Identifier(schema, "v"), sql.Identifier(schema, "plain")
        )
    )
    fails(LoadError, f"it has view {schema}.v", "strategy='upsert'")(
        lambda: load(conn, base, "plain", plain(range(3)), mode="replace")
    )
    # An upsert still works; it writes the row's own values and stamp back, so the table is as before.
    stamp = {bytes(r[0]): r[-1] for r in snapshot(conn, schema, "plain")}[keys_for([0])[0]]
    summary = load(conn, base, "plain", plain(range(1)), strategy="upsert", vacuum="never", updated_at=stamp)
    assert (summary.strategy, summary.updated) == ("upsert", 1)
    conn.execute(sql.SQL("DROP VIEW {}").format(sql.Identifier(schema, "v")))


# -- the database goes away mid-load ---------------------------------------------------------------


def _loader(dsn: str) -> tuple[psycopg.Connection, str]:
    name = f"loader-{uuid.uuid4().hex[:8]}"
    return psycopg.connect(dsn, autocommit=True, application_name=name), name


def _terminate(dsn: str, name: str, waiting_for_lock: bool = False, timeout: float = 20.0) -> None:
    """Terminate the backend of connection ``name`` (once it waits on a lock, if asked)."""
    condition = "AND wait_event_type = 'Lock'" if waiting_for_lock else ""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as admin:
        while time.monotonic() < deadline:
            done = admin.execute(
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s {condition}",
                [name],
            ).fetchall()
            if done:
                return
            time.sleep(0.02)
    raise AssertionError(f"{name} never showed up{' waiting on a lock' if waiting_for_lock else ''}")


def test_connection_killed_mid_copy(dsn, base, tmp_path):
    loader, name = _loader(dsn)
    killed = []

    def kill_after_a_few_batches(p: Any) -> None:
        if p.phase == "reading" and p.rows >= 300 and not killed:
            killed.append(p.rows)
            _terminate(dsn, name)

    path = parquet(tmp_path, plain(range(2000), f0=np.zeros(2000, np.float32)))
    with loader:
        err = fails(LoadInterruptedError, "database connection lost (reading", str(path), "is unchanged")(
            lambda: load(loader, base, "plain", path, batch_rows=100, progress=kill_after_a_few_batches)
        )
    assert killed and err.committed is False


def _load_in_thread(run: Callable[[], Any]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, errors


def test_connection_killed_inside_the_merge(dsn, schema, base):
    loader, name = _loader(dsn)
    with loader, psycopg.connect(dsn) as blocker:
        # A row lock the upsert needs: the merge statement blocks on it, mid-statement.
        blocker.execute(
            sql.SQL("SELECT 1 FROM {} WHERE hashkey = %s FOR UPDATE").format(sql.Identifier(schema, "plain")),
            [keys_for([10])[0]],
        )
        thread, errors = _load_in_thread(
            lambda: load(loader, base, "plain", plain(range(100), f0=np.ones(100, np.float32)), strategy="upsert")
        )
        _terminate(dsn, name, waiting_for_lock=True)
        thread.join(30)
        blocker.rollback()
    assert len(errors) == 1 and isinstance(errors[0], LoadInterruptedError), errors
    assert "(merging)" in str(errors[0]) and "is unchanged" in str(errors[0])


@pytest.mark.parametrize("mode,strategy", [("replace", "auto"), ("merge", "rebuild")])
def test_connection_killed_waiting_to_swap(dsn, schema, base, mode, strategy):
    loader, name = _loader(dsn)
    with loader, psycopg.connect(dsn) as reader:
        # An open transaction that has read the table holds ACCESS SHARE: the swap must wait for it.
        reader.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "plain")))
        thread, errors = _load_in_thread(
            lambda: load(loader, base, "plain", plain(range(30, 90)), mode=mode, strategy=strategy)
        )
        _terminate(dsn, name, waiting_for_lock=True)
        thread.join(30)
        reader.rollback()
    assert len(errors) == 1 and isinstance(errors[0], LoadInterruptedError), errors
    assert "is unchanged" in str(errors[0])


def test_lock_timeout_at_the_swap(dsn, schema, base):
    with psycopg.connect(dsn) as reader:
        reader.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "plain")))
        with psycopg.connect(dsn, autocommit=True) as loader:
            fails(LoadError, "could not lock", "within 0.3s (swapping)", "is unchanged")(
                lambda: load(loader, base, "plain", plain(range(5)), mode="replace", lock_timeout=0.3)
            )
        reader.rollback()
