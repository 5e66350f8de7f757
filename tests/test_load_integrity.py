"""Damaged Parquet files never load silently.

Real files written by pyarrow are damaged on disk the way storage damages them (bytes
overwritten inside column chunks, a truncated tail, a garbled footer), then loaded into a table
that already holds rows. A damaged file must fail with CorruptFileError naming the file, the row
group and the column, and the table must be byte-identical afterwards; a file that carries no
integrity information loads with a note saying so.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pgfeatures.cli import main as cli_main
from pgfeatures.errors import CorruptFileError, LoadInputError
from pgfeatures.load import load
from pgfeatures.load.integrity import ParquetIntegrity, has_page_checksum
from test_load import make_registry, snapshot

ROWS = 100_000
GROUP = 25_000
STATISTICS_ONLY = (
    "column statistics only (decoded values within the recorded min/max, null counts as recorded: "
    "a value changed inside that range loads undetected)"
)


def data(rows: int = ROWS, seed: int = 0, nulls: bool = False) -> pa.Table:
    rng = np.random.default_rng(seed)
    keys = np.frombuffer(rng.bytes(32 * rows), np.uint8).reshape(rows, 32)
    cols: dict[str, Any] = {
        "hashkey": pa.FixedSizeBinaryArray.from_buffers(pa.binary(32), rows, [None, pa.py_buffer(keys.tobytes())])
    }
    for j in range(4):
        mask = rng.random(rows) < 0.1 if nulls else None
        cols[f"f{j}"] = pa.array(rng.random(rows, dtype=np.float32), pa.float32(), mask=mask)
    return pa.table(cols)


@pytest.fixture()
def table(conn: psycopg.Connection, schema: str) -> Any:
    """The "plain" table preloaded with other rows; asserts afterwards that it is byte-identical."""
    reg = make_registry(schema)
    load(conn, reg, "plain", data(2000, seed=99), vacuum="never")
    before = snapshot(conn, schema, "plain")
    yield reg
    with psycopg.connect(conn.info.dsn, autocommit=True) as fresh:
        assert snapshot(fresh, schema, "plain") == before


def damaged(tmp_path: Path, name: str, offset: int, size: int = 4096, seed: int = 1, **write: Any) -> Path:
    """A fresh file with ``size`` random bytes written over it at ``offset``."""
    path = tmp_path / name
    pq.write_table(data(), path, row_group_size=GROUP, **write)
    raw = bytearray(path.read_bytes())
    raw[offset : offset + size] = np.random.default_rng(seed).bytes(size)
    path.write_bytes(bytes(raw))
    return path


def chunk(path: Path, group: int, column: int) -> tuple[int, int]:
    """(first byte, size) of a column chunk in a pristine file written like ``damaged`` writes it."""
    meta = pq.ParquetFile(path).metadata.row_group(group).column(column)
    start = meta.dictionary_page_offset if meta.has_dictionary_page else meta.data_page_offset
    return start, meta.total_compressed_size


def layout(tmp_path: Path, **write: Any) -> Path:
    path = tmp_path / "pristine.parquet"
    pq.write_table(data(), path, row_group_size=GROUP, **write)
    return path


# -- without page checksums (pyarrow's default): column statistics -------------------------------------


@pytest.mark.parametrize("group,column,where", [(0, 1, 0.5), (1, 2, 0.3), (2, 3, 0.9), (3, 4, 0.6)])
def test_damage_in_a_float_column_is_refused_by_its_statistics(conn, table, tmp_path, group, column, where):
    start, size = chunk(layout(tmp_path), group, column)
    path = damaged(tmp_path, "bad.parquet", start + int(size * where))
    with pytest.raises(CorruptFileError) as info:
        load(conn, table, "plain", path)
    err = info.value
    assert (err.source, err.row_group, err.column) == (str(path), group, f"f{column - 1}"), str(err)
    assert f"{path}: " in str(err) and f"row group {group} " in str(err) and f"column 'f{column - 1}'" in str(err)
    assert "the file is corrupt" in str(err) and "is unchanged" in str(err)
    assert isinstance(err, LoadInputError)


@pytest.mark.parametrize("where", [0.6, 0.75, 0.9])
def test_the_production_case_4kb_overwritten_in_one_row_group(conn, table, tmp_path, where):
    # The reported case, scaled down: snappy, dictionary pages, one row group, no checksums;
    # 4 KB overwritten among the float columns (the second half of this file: the 32-byte keys
    # fill the first) decodes into garbage floats, and used to load.
    path = tmp_path / "mid.parquet"
    pq.write_table(data(), path)
    raw = bytearray(path.read_bytes())
    middle = int(len(raw) * where)
    raw[middle : middle + 4096] = np.random.default_rng(7).bytes(4096)
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match=r"row group 0 \(rows 1\.\.100,000\), column 'f"):
        load(conn, table, "plain", path)


def test_an_invalid_value_in_a_damaged_row_group_is_reported_as_damage(conn, table, tmp_path):
    # Uncompressed PLAIN floats: overwrite two values in place. Row 10 becomes NaN (which the
    # statistics cannot rule out, and which the NaN policy rejects first, in the first batch);
    # row 900 becomes 1e30, outside the recorded range, in the second batch.
    clean = data(1000)
    path = tmp_path / "plain.parquet"
    pq.write_table(clean, path, compression="none", use_dictionary=False)
    raw = bytearray(path.read_bytes())
    for row, value in ((10, float("nan")), (900, 1e30)):
        original = struct.pack("<f", clean.column("f2")[row].as_py())
        at = raw.find(original)
        assert at > 0 and raw.count(original) == 1
        raw[at : at + 4] = struct.pack("<f", value)
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="column 'f2': decoded values span") as info:
        load(conn, table, "plain", path, batch_rows=500)
    assert info.value.row_group == 0


def test_garbage_inside_the_recorded_range_is_not_detectable_without_checksums(conn, schema, tmp_path):
    # The limit of statistics, stated rather than hidden: one float changed to another value
    # inside [min, max] decodes, passes, and loads. Only page checksums catch that.
    clean = data(1000)
    path = tmp_path / "plain.parquet"
    pq.write_table(clean, path, compression="none", use_dictionary=False)
    raw = bytearray(path.read_bytes())
    original = struct.pack("<f", clean.column("f0")[5].as_py())
    at = raw.find(original)
    raw[at : at + 4] = struct.pack("<f", 0.5)
    path.write_bytes(bytes(raw))
    summary = load(conn, make_registry(schema), "plain", path)
    assert summary.integrity == {str(path): STATISTICS_ONLY}
    with_checksums = tmp_path / "crc.parquet"
    pq.write_table(clean, with_checksums, compression="none", use_dictionary=False, write_page_checksum=True)
    raw = bytearray(with_checksums.read_bytes())
    at = raw.find(original)
    raw[at : at + 4] = struct.pack("<f", 0.5)
    with_checksums.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="CRC"):
        load(conn, make_registry(schema), "plain", with_checksums)


# -- with page checksums ---------------------------------------------------------------------------


@pytest.mark.parametrize("group,column,where", [(0, 0, 0.5), (1, 0, 0.02), (2, 1, None), (3, 4, 0.7)])
def test_damage_anywhere_is_refused_by_page_checksums(conn, table, tmp_path, group, column, where):
    # column 0 is the key: random keys among random keys, which only a checksum can tell apart;
    # where=None hits the dictionary page, past its header.
    start, size = chunk(layout(tmp_path, write_page_checksum=True), group, column)
    offset = start + 100 if where is None else start + int(size * where)
    path = damaged(tmp_path, "bad.parquet", offset, size=512, write_page_checksum=True)
    with pytest.raises(CorruptFileError) as info:
        load(conn, table, "plain", path)
    err = info.value
    name = "hashkey" if column == 0 else f"f{column - 1}"
    assert (err.row_group, err.column) == (group, name), str(err)
    assert "CRC" in str(err) and f"cannot read the rows after row {group * GROUP:,}" in str(err)


# -- files pyarrow cannot decode at all --------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "footer", "page header"])
def test_undecodable_files_are_called_corrupt(conn, table, tmp_path, damage):
    path = layout(tmp_path)
    raw = bytearray(path.read_bytes())
    if damage == "truncated":
        raw = raw[: len(raw) * 2 // 3]
    elif damage == "footer":
        raw[-200:-8] = np.random.default_rng(3).bytes(192)
    else:
        start, _ = chunk(path, 1, 2)
        raw[start : start + 16] = b"\xff" * 16
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError) as info:
        load(conn, table, "plain", path)
    message = str(info.value)
    assert "corrupt" in message and "cannot load into" not in message
    if damage == "page header":
        assert (info.value.row_group, info.value.column) == (1, "f1"), message


# -- what the summary says -----------------------------------------------------------------------------


def test_the_summary_says_what_a_file_was_verified_against(conn, schema, tmp_path):
    reg = make_registry(schema)
    plain_file, crc_file, bare_file = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"
    pq.write_table(data(1000, seed=1), plain_file)
    pq.write_table(data(1000, seed=2), crc_file, write_page_checksum=True)
    pq.write_table(data(1000, seed=3), bare_file, write_statistics=False)
    summary = load(conn, reg, "plain", [plain_file, crc_file, bare_file])
    assert summary.integrity == {
        str(plain_file): STATISTICS_ONLY,
        str(crc_file): "page checksums (every data page's bytes)",
        str(bare_file): "nothing: the file has no page checksums and no column statistics",
    }
    assert summary.notes == [
        f"{bare_file} carries no integrity information (no page checksums, no column statistics): "
        "damage that still decodes cannot be detected; write it with page checksums "
        "(pyarrow: write_page_checksum=True)"
    ]
    text = summary.describe()
    assert (
        "no integrity information" in text
        and f"verified against: page checksums (every data page's bytes) ({crc_file})" in text
    )
    assert f"verified against: {STATISTICS_ONLY} ({plain_file})" in text
    assert summary.rows_read == 3000 and summary.inserted == 3000
    some = tmp_path / "d.parquet"
    pq.write_table(data(1000, seed=4), some, write_statistics=["hashkey", "f0", "f1"])
    summary = load(conn, reg, "plain", some)
    assert summary.notes == [
        f"{some}: column(s) f2, f3 carry neither page checksums nor statistics: damage in them "
        "that still decodes cannot be detected"
    ]


def test_null_counts_must_match_the_statistics(tmp_path):
    # The null-count half of the check, against a real file's metadata: batches with nulls the
    # writer did not record (as damaged definition levels would decode) are refused.
    path = tmp_path / "n.parquet"
    clean = data(1000).select(["hashkey", "f0"])
    pq.write_table(clean, path)
    file = pq.ParquetFile(path)
    check = ParquetIntegrity(str(path), path, file.metadata, file.schema_arrow, ["hashkey", "f0"])
    holes = clean.set_column(1, "f0", pa.array(clean.column("f0").to_numpy(), mask=np.arange(1000) % 7 == 3))
    for batch in holes.to_batches(max_chunksize=400):
        check.check_batch(0, batch)
    with pytest.raises(CorruptFileError, match=r"column 'f0': 143 nulls decoded, the writer recorded 0"):
        check.finish_group(0)


def test_page_header_crc_detection(tmp_path):
    for checksums in (False, True):
        path = tmp_path / f"{checksums}.parquet"
        pq.write_table(data(100), path, write_page_checksum=checksums)
        meta = pq.ParquetFile(path).metadata.row_group(0).column(1)
        raw = path.read_bytes()
        assert has_page_checksum(raw[meta.dictionary_page_offset :][:64]) is checksums
        assert has_page_checksum(raw[meta.data_page_offset :][:64]) is checksums
    assert not has_page_checksum(b"") and not has_page_checksum(b"\x00")


def test_a_damaged_arrow_ipc_file_is_called_corrupt(conn, table, tmp_path):
    path = tmp_path / "data.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, data(4000).schema) as writer:
        writer.write_table(data(4000), max_chunksize=1000)
    raw = bytearray(path.read_bytes())
    truncated = tmp_path / "truncated.arrow"
    truncated.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(CorruptFileError, match="not a readable Arrow IPC file"):
        load(conn, table, "plain", truncated)
    stream = tmp_path / "data.arrows"
    with pa.OSFile(str(stream), "wb") as sink, pa.ipc.new_stream(sink, data(4000).schema) as writer:
        writer.write_table(data(4000), max_chunksize=1000)
    raw = stream.read_bytes()
    stream.write_bytes(raw[: len(raw) * 3 // 4])  # the stream format opens from its head: the damage shows mid-way
    with pytest.raises(CorruptFileError, match="cannot read the rows after row 2,000: the file is corrupt"):
        load(conn, table, "plain", stream, batch_rows=500)


# -- single-bit flips: what each kind of file catches, and --require-checksums ----------------------


FLIPS = 40


def flipped(clean: Path, tmp_path: Path, seed: int) -> tuple[Path, int]:
    """A copy of ``clean`` with one random bit flipped, and where."""
    raw = bytearray(clean.read_bytes())
    rng = np.random.default_rng(seed)
    at = int(rng.integers(4, len(raw) - 8))  # past the magic, before the footer length and magic
    raw[at] ^= 1 << int(rng.integers(8))
    path = tmp_path / "flipped.parquet"
    path.write_bytes(bytes(raw))
    return path, at


@pytest.mark.parametrize("checksums", [False, True])
def test_single_bit_flips_never_load_wrong_values_under_a_claim_of_verification(conn, schema, tmp_path, checksums):
    # Without page checksums most flips load wrong values (random keys among random keys, floats
    # inside [0, 1)); the summary must say the file was checked against statistics only, and
    # require_checksums refuses it. With checksums no flip loads a wrong value.
    reg = make_registry(schema)
    clean = data(2000, seed=5)
    pristine = tmp_path / "pristine.parquet"
    pq.write_table(clean, pristine, write_page_checksum=checksums)
    wrong = 0
    for seed in range(FLIPS):
        path, at = flipped(pristine, tmp_path, seed)
        try:
            summary = load(conn, reg, "plain", path, mode="replace", vacuum="never")
        except LoadInputError:
            continue
        if contents_of(conn, schema) != expected_of(clean):
            wrong += 1
            assert not checksums, f"a flip at byte {at} loaded wrong values from a checksummed file"
            assert summary.integrity == {str(path): STATISTICS_ONLY}, summary.integrity
            assert f"verified against: {STATISTICS_ONLY}" in summary.describe()
            with pytest.raises(
                LoadInputError,
                match=r"require_checksums \(--require-checksums\): column\(s\) "
                r"hashkey, f0, f1, f2, f3 have no page checksums",
            ):
                load(conn, reg, "plain", path, require_checksums=True)
    print(f"{wrong} of {FLIPS} single-bit flips loaded wrong values (page checksums: {checksums})")
    assert wrong > FLIPS // 2 if not checksums else wrong == 0, wrong


def contents_of(conn: psycopg.Connection, schema: str) -> dict[bytes, tuple[Any, ...]]:
    from test_load import contents

    return contents(conn, schema, "plain", ["f0", "f1", "f2", "f3"])


def expected_of(clean: pa.Table) -> dict[bytes, tuple[Any, ...]]:
    keys = clean.column("hashkey").to_pylist()
    columns = [clean.column(f"f{j}").to_pylist() for j in range(4)]
    return {k: tuple(c[i] for c in columns) for i, k in enumerate(keys)}


def test_require_checksums_refuses_every_unverifiable_file_before_loading(conn, table, tmp_path, dsn, schema, capsys):
    crc = tmp_path / "crc.parquet"
    pq.write_table(data(500, seed=6), crc, write_page_checksum=True)
    assert load(conn, table, "plain", crc, require_checksums=True).inserted == 500
    conn.execute(
        f'DELETE FROM "{schema}".plain WHERE hashkey = ANY(%s)', [data(500, seed=6).column("hashkey").to_pylist()]
    )
    plain = tmp_path / "plain.parquet"
    pq.write_table(data(500, seed=7), plain)
    some = tmp_path / "some.parquet"  # one column written without: still refused
    pq.write_table(data(500, seed=8), some, write_page_checksum=True)
    csv = tmp_path / "rows.csv"
    csv.write_text("hashkey,f0,f1,f2,f3\n" + "ab" * 32 + ",1,2,3,4\n")
    ipc = tmp_path / "rows.arrow"
    with pa.ipc.new_file(ipc, data(10).schema) as writer:
        writer.write_table(data(10))
    for path, why in [
        (plain, "column(s) hashkey, f0, f1, f2, f3 have no page checksums"),
        (csv, "CSV files carry no checksums"),
        (ipc, "Arrow IPC files carry no checksums"),
    ]:
        with pytest.raises(LoadInputError) as info:
            load(conn, table, "plain", [crc, path], require_checksums=True)
        assert str(info.value).startswith(f"{path}: require_checksums (--require-checksums): {why}"), str(info.value)
        assert str(info.value).endswith(
            f"so damage that still decodes could not be detected; refusing to load it; "
            f'nothing was loaded, "{schema}"."plain" is unchanged'
        )
    assert load(conn, table, "plain", data(10, seed=9), require_checksums=True).inserted == 10  # in memory: no file
    conn.execute(
        f'DELETE FROM "{schema}".plain WHERE hashkey = ANY(%s)', [data(10, seed=9).column("hashkey").to_pylist()]
    )
    defs = tmp_path / "defs.toml"
    defs.write_text(
        f'schema = "{schema}"\n[tables.plain.features]\nf0 = "real"\nf1 = "real"\nf2 = "real"\nf3 = "real"\n'
    )
    assert cli_main(["load", "plain", str(plain), "--dsn", dsn, "-d", str(defs), "--require-checksums", "-q"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {plain}: require_checksums (--require-checksums): column(s)")


# -- CSV text that is not UTF-8 --------------------------------------------------------------------


def test_csv_that_is_not_utf8_names_the_file_row_and_encoding(conn, table, tmp_path, dsn, schema, capsys):
    key = "ab" * 32
    bad_value = tmp_path / "value.csv"
    bad_value.write_bytes(b"hashkey,f0,f1,f2,f3\n" + key.encode() + b",1,2,3,4\n" + b"caf\xe9" + b",1,2,3,4\n")
    bad_header = tmp_path / "header.csv"
    bad_header.write_bytes("hashkey,f0,f1,f2,f3,r\xe9sum\xe9\n".encode("latin-1") + key.encode() + b",1,2,3,4,x\n")
    hint = "pgfeatures reads CSV files as UTF-8: convert the file first, e.g. iconv -f latin1 -t utf-8 IN > OUT"
    with pytest.raises(LoadInputError) as info:
        load(conn, table, "plain", bad_value)
    assert str(info.value).startswith(
        f"{bad_value}: row 2, column 'hashkey': b'caf\\xe9' is not UTF-8 text (byte 0xe9 at byte 4); {hint}"
    ), str(info.value)
    assert (info.value.row, info.value.column) == (2, "hashkey")
    with pytest.raises(LoadInputError) as info:
        load(conn, table, "plain", bad_header, ignore_extra=True)
    assert str(info.value).startswith(
        f"{bad_header}: the header row is not UTF-8 text (column name b'r\\xe9sum\\xe9': byte 0xe9 at byte 2); {hint}"
    ), str(info.value)
    defs = tmp_path / "defs.toml"
    defs.write_text(
        f'schema = "{schema}"\n[tables.plain.features]\nf0 = "real"\nf1 = "real"\nf2 = "real"\nf3 = "real"\n'
    )
    for path in (bad_value, bad_header):
        assert cli_main(["load", "plain", str(path), "--dsn", dsn, "-d", str(defs), "--ignore-extra", "-q"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {path}: ") and hint in err and "internal error" not in err, err
