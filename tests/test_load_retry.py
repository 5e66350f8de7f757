"""Whether a load that lost its connection can be run again: ``LoadInterruptedError.committed``
and ``source_rereadable``, with the write connection's backend really terminated
(pg_terminate_backend from another connection).

- mid-COPY: nothing committed; files, Tables, frames and lists of batches can be read again
  (and loading them again on a fresh connection gives exactly the right table), one-shot
  streams cannot (loading the same iterator again would load only what is left of it);
- during COMMIT (a deferred constraint trigger holds the COMMIT until the backend is
  terminated): the outcome is unknown, ``committed`` is None, so a retry is not safe.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from pgfeatures.errors import LoadInputError, LoadInterruptedError
from pgfeatures.load import load
from test_load import contents, keys_for, make_registry
from test_load_bad_input import _load_in_thread, _loader, _terminate

N = 3000


def table(value: float = 1.0) -> pa.Table:
    return pa.table(
        {
            "hashkey": pa.array(keys_for(range(N)), pa.binary(32)),
            **{f"f{j}": np.full(N, value, np.float32) for j in range(4)},
        }
    )


SOURCES: dict[str, tuple[Callable[[Any], Any], bool]] = {
    "parquet path": (lambda tmp: _parquet(tmp), True),
    "pyarrow Table": (lambda tmp: table(), True),
    "pandas DataFrame": (lambda tmp: table().to_pandas(), True),
    "list of RecordBatches": (lambda tmp: table().to_batches(max_chunksize=500), True),
    "generator of RecordBatches": (lambda tmp: (b for b in table().to_batches(max_chunksize=500)), False),
    "RecordBatchReader": (
        lambda tmp: pa.RecordBatchReader.from_batches(table().schema, table().to_batches(max_chunksize=500)),
        False,
    ),
}


def _parquet(tmp: Any) -> str:
    path = tmp / "data.parquet"
    pq.write_table(table(), path)
    return str(path)


@pytest.mark.parametrize("kind", list(SOURCES))
def test_backend_terminated_mid_copy(dsn, conn, schema, tmp_path, kind):
    reg = make_registry(schema)
    load(
        conn,
        reg,
        "plain",
        pa.table({"hashkey": pa.array(keys_for([0]), pa.binary(32)), **{f"f{j}": [7.0] for j in range(4)}}),
    )
    make, rereadable = SOURCES[kind]
    data = make(tmp_path)
    loader, name = _loader(dsn)
    killed: list[int] = []

    def kill(p: Any) -> None:
        if p.phase == "reading" and p.rows >= 1000 and not killed:
            killed.append(p.rows)
            _terminate(dsn, name)

    with loader, pytest.raises(LoadInterruptedError) as info:
        load(loader, reg, "plain", data, batch_rows=500, progress=kill)
    err = info.value
    assert killed and err.committed is False and err.source_rereadable is rereadable
    assert err.retry_safe is rereadable and "database connection lost (reading" in str(err)
    assert contents(conn, schema, "plain", ["f0"]) == {keys_for([0])[0]: (7.0,)}  # unchanged
    # What the attribute promises: the same data, loaded again on a fresh connection.
    if rereadable:
        summary = load(conn, reg, "plain", data, batch_rows=500)
        assert summary.rows_read == N and contents(conn, schema, "plain", ["f0"]) == {
            k: (1.0,) for k in keys_for(range(N))
        }
        return
    try:  # only what the first attempt had not consumed, if anything
        summary = load(conn, reg, "plain", data, batch_rows=500)
    except LoadInputError as exc:
        assert "no record batches" in str(exc) or "no rows" in str(exc)
    else:
        assert summary.rows_read < N


def test_backend_terminated_during_commit(dsn, conn, schema):
    reg = make_registry(schema)
    load(conn, reg, "plain", table(1.0))
    lock = secrets.randbelow(2**31)
    # A deferred constraint trigger runs inside COMMIT; it waits on an advisory lock this test holds.
    conn.execute(
        sql.SQL(
            "CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS "
            "'BEGIN PERFORM pg_advisory_xact_lock({}); RETURN NULL; END'"
        ).format(sql.Identifier(schema, "wait_at_commit"), sql.Literal(lock))
    )
    conn.execute(
        sql.SQL(
            "CREATE CONSTRAINT TRIGGER wait_at_commit AFTER INSERT OR UPDATE ON {} DEFERRABLE INITIALLY "
            "DEFERRED FOR EACH ROW EXECUTE FUNCTION {}()"
        ).format(sql.Identifier(schema, "plain"), sql.Identifier(schema, "wait_at_commit"))
    )
    conn.execute("SELECT pg_advisory_lock(%s)", [lock])
    loader, name = _loader(dsn)
    phases: list[str] = []
    try:
        with loader:
            thread, errors = _load_in_thread(
                lambda: load(
                    loader, reg, "plain", table(2.0), strategy="upsert", progress=lambda p: phases.append(p.phase)
                )
            )
            _terminate(dsn, name, waiting_for_lock=True)
            thread.join(30)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", [lock])
    assert len(errors) == 1 and isinstance(errors[0], LoadInterruptedError), errors
    err = errors[0]
    assert phases[-1] == "committing"
    assert err.committed is None and err.source_rereadable is True and err.retry_safe is False
    assert "during COMMIT" in str(err) and "may or may not have been applied" in str(err)
    assert "is unchanged" not in str(err)
    # (PostgreSQL rolled it back here; the client cannot know that, which is the point.)
    assert contents(conn, schema, "plain", ["f0"]) == {k: (1.0,) for k in keys_for(range(N))}


@pytest.mark.parametrize("kind", ["parquet path", "generator of RecordBatches"])
def test_async_load_says_the_same(dsn, conn, schema, tmp_path, kind):
    import asyncio

    import psycopg

    from pgfeatures.load import load_async

    reg = make_registry(schema)
    make, rereadable = SOURCES[kind]
    data = make(tmp_path)
    name = f"loader-{secrets.token_hex(4)}"

    async def run() -> LoadInterruptedError:
        killed: list[int] = []

        def kill(p: Any) -> None:  # runs on the worker thread that produces the batches
            if p.phase == "reading" and p.rows >= 1000 and not killed:
                killed.append(p.rows)
                _terminate(dsn, name)

        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True, application_name=name) as aconn:
            with pytest.raises(LoadInterruptedError) as info:
                await load_async(aconn, reg, "plain", data, batch_rows=500, progress=kill)
        return info.value

    err = asyncio.run(run())
    assert err.committed is False and err.source_rereadable is rereadable and err.retry_safe is rereadable
