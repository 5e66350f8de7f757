"""The binary COPY codec both ways: what the encoder writes PostgreSQL reads, what PostgreSQL
writes the decoder reads (with and without NULLs), and malformed streams are refused."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from pgfeatures.load import COPY_HEADER, COPY_TRAILER, CopyFormatError, decode_copy, encode_copy_rows
from pgfeatures_bench.load import read_back

KINDS = [(32,), np.float32, np.float64, np.int16, np.int32, np.int64, np.bool_]
SQL_TYPES = "k bytea, a real, b double precision, c smallint, d integer, e bigint, f boolean"


def columns(n: int, seed: int, nulls: bool) -> list[tuple[np.ndarray, np.ndarray | None]]:
    rng = np.random.default_rng(seed)
    values = [
        np.frombuffer(rng.bytes(32 * n), np.uint8).reshape(n, 32),
        rng.standard_normal(n).astype(np.float32),
        rng.standard_normal(n) * 1e300,
        rng.integers(-(2**15), 2**15, n).astype(np.int16),
        rng.integers(-(2**31), 2**31, n).astype(np.int32),
        rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64),
        rng.random(n) < 0.5,
    ]
    return [(v, (rng.random(n) < 0.3) if nulls and j else None) for j, v in enumerate(values)]


def same(got: list, want: list) -> None:
    assert len(got) == len(want)
    for (gv, gm), (wv, wm) in zip(got, want):
        assert (gm is None) == (wm is None or not wm.any())
        mask = np.zeros(len(wv), bool) if wm is None else wm
        if gm is not None:
            assert np.array_equal(gm, mask)
        # bit for bit on the non-NULL values (views as raw bytes: -0.0 and NaN payloads count)
        assert np.array_equal(
            np.ascontiguousarray(gv[~mask]).view(np.uint8), np.ascontiguousarray(wv[~mask]).view(np.uint8)
        )


@pytest.mark.parametrize("nulls", [False, True])
def test_encode_decode_round_trip(nulls):
    cols = columns(300, seed=1, nulls=nulls)
    stream = COPY_HEADER + bytes(encode_copy_rows(cols)) + COPY_TRAILER
    same(decode_copy(stream, KINDS), cols)


@pytest.mark.parametrize("nulls", [False, True])
def test_postgres_reads_the_encoder_and_the_decoder_reads_postgres(conn, nulls):
    cols = columns(500, seed=2, nulls=nulls)
    conn.execute(f"CREATE TEMP TABLE codec ({SQL_TYPES}, seq integer)")
    order = (np.arange(500, dtype=np.int32), None)
    with conn.cursor().copy("COPY codec FROM STDIN (FORMAT BINARY)") as copy:
        for part in (COPY_HEADER, encode_copy_rows([*cols, order]), COPY_TRAILER):
            copy.write(part)
    # PostgreSQL's own reading of the values against numpy's
    first = conn.execute("SELECT a, c, e, f FROM codec WHERE seq = 0", binary=True).fetchone()
    want = [None if cols[j][1] is not None and cols[j][1][0] else cols[j][0][0].item() for j in (1, 3, 5, 6)]
    assert list(first) == want
    buffer = bytearray()
    with conn.cursor().copy(
        "COPY (SELECT k, a, b, c, d, e, f FROM codec ORDER BY seq) TO STDOUT (FORMAT BINARY)"
    ) as copy:
        for chunk in copy:
            buffer += chunk
    same(decode_copy(buffer, KINDS), cols)


def test_bench_read_back_uses_the_codec(conn, schema):
    conn.execute(f'CREATE SCHEMA "{schema}"')
    conn.execute(f'CREATE TABLE "{schema}".loaded (hashkey bytea, f0 real, f1 real)')
    keys = [bytes([i]) * 32 for i in (3, 1, 2)]
    conn.cursor().executemany(
        f'INSERT INTO "{schema}".loaded VALUES (%s, %s, %s)', [(k, i + 0.5, -i) for i, k in enumerate(keys)]
    )
    got_keys, got_values = read_back(conn, schema, 2)
    assert [bytes(k) for k in got_keys] == sorted(keys)
    assert got_values.tolist() == [[1.5, -1.0], [2.5, -2.0], [0.5, 0.0]]


def test_header_extension_is_skipped_and_malformed_streams_refused():
    cols = columns(3, seed=3, nulls=False)
    body = bytes(encode_copy_rows(cols))
    extended = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">iI", 0, 5) + b"12345" + body + COPY_TRAILER
    same(decode_copy(extended, KINDS), cols)
    with pytest.raises(CopyFormatError, match="signature"):
        decode_copy(b"COPY" + body, KINDS)
    with pytest.raises(CopyFormatError, match="truncated"):
        decode_copy(COPY_HEADER + body, KINDS)
    with pytest.raises(CopyFormatError, match="fields"):
        decode_copy(COPY_HEADER + body + COPY_TRAILER, KINDS[:-1])
