"""Bulk loads of strings, timestamps, lists and embeddings (issue 22): every rich type from Arrow tables,
Parquet, Arrow IPC, pandas, polars and CSV (lists and embeddings as JSON arrays in a field), by every
apply strategy, compared with the table read back by plain SQL; and bad input for each rule, naming
file, row, column and the rule, with nothing loaded.

Expected values are computed from the input here (float32 rounding with numpy, datetimes with the
standard library), never with the loader's code.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
from array import array
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from cli_run import cli
from pgfeatures import AsyncFeatureStore, FeatureStore
from pgfeatures.definitions import Registry
from pgfeatures.errors import LoadInputError
from pgfeatures.load import load
from pgfeatures.schema import apply_schema

FEATURES: dict[str, Any] = {
    "country": {"type": "string", "max_length": 4},
    "last_login": "timestamp",
    "cats": {"type": "list<string>", "max_length": 5},
    "ids": "list<bigint>",
    "amounts": "list<real>",
    "scores": "list<double>",
    "small": "list<integer>",
    "emb": {"type": "embedding", "dim": 4},
    "score": "real",
}
VECTORS: dict[str, Any] = {
    "e_vec": {"type": "embedding", "dim": 3, "storage": "vector"},
    "e_half": {"type": "embedding", "dim": 3, "storage": "halfvec"},
    "e_arr": {"type": "embedding", "dim": 3, "storage": "array"},
}
ARROW_TYPES = {
    "user_id": pa.int64(),
    "country": pa.string(),
    "last_login": pa.timestamp("us", tz="UTC"),
    "cats": pa.list_(pa.string()),
    "ids": pa.list_(pa.int64()),
    "amounts": pa.list_(pa.float32()),
    "scores": pa.large_list(pa.float64()),
    "small": pa.list_(pa.int32()),
    "emb": pa.list_(pa.float32(), 4),
    "score": pa.float32(),
}
T0 = dt.datetime(2026, 5, 1, 12, 30, 15, 250001, tzinfo=dt.UTC)


def registry_of(schema: str, vectors: bool = False) -> Registry:
    tables: dict[str, Any] = {"profile": {"entity": "user", "features": FEATURES}}
    if vectors:
        tables["vecs"] = {"entity": "user", "features": VECTORS}
    return Registry.from_dict(
        {"schema": schema, "entities": {"user": {"key": "bigint", "column": "user_id"}}, "tables": tables}
    )


def has_pgvector(conn: psycopg.Connection) -> bool:
    return bool(conn.execute("SELECT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'vector')").fetchone()[0])  # type: ignore[index]


def rows_of(ids: range, seed: int = 0) -> list[dict[str, Any]]:
    """Rows as Python values: NULLs in every column, empty lists, multi-byte strings at max_length."""
    rng = np.random.default_rng(seed)
    words = ["DE", "ÄÖÜß", "", "NULL", 'a"b', "a,b", "\\N", "😀😀😀😀", "x y"]
    rows = []
    for i in ids:
        row: dict[str, Any] = {"user_id": i}
        row["country"] = None if i % 7 == 3 else words[int(rng.integers(len(words)))]
        row["last_login"] = None if i % 5 == 2 else T0 + dt.timedelta(seconds=int(rng.integers(-(10**8), 10**6)))
        row["cats"] = None if i % 6 == 1 else [words[int(k)] for k in rng.integers(len(words), size=i % 6)]
        row["ids"] = None if i % 4 == 1 else [int(x) for x in rng.integers(-(2**63), 2**63 - 1, size=i % 3)]
        row["amounts"] = [float(np.float32(x)) for x in rng.normal(0, 1e3, size=i % 4)]
        row["scores"] = None if i % 9 == 4 else [float(x) for x in rng.normal(0, 1e12, size=2)]
        row["small"] = [int(x) for x in rng.integers(-(2**31), 2**31, size=1 + i % 2)]
        row["emb"] = None if i % 8 == 5 else [float(np.float32(x)) for x in rng.normal(0, 1, size=4)]
        row["score"] = float(np.float32(rng.normal()))
        rows.append(row)
    rows[0]["ids"] = [2**63 - 1, -(2**63), 0]
    rows[0]["country"] = "😀😀😀😀"  # 4 characters, 16 bytes: max_length counts characters
    # The edges a search can still rank: an element whose square is just within float32 (pgvector's distances
    # are float32: a larger squared norm is refused, tests/unit/test_rich_values.py), a subnormal, signed zeros.
    rows[0]["emb"] = [float(np.float32(1.8e19)), -1.401298464324817e-45, 0.0, -0.0]
    return rows


def arrow_of(rows: list[dict[str, Any]], types: dict[str, pa.DataType] | None = None) -> pa.Table:
    types = {**ARROW_TYPES, **(types or {})}
    return pa.table({name: pa.array([r[name] for r in rows], types[name]) for name in rows[0]})


def csv_of(rows: list[dict[str, Any]], path: Path) -> Path:
    """The documented CSV form: strings quoted (an unquoted empty field is NULL, ``""`` the empty string),
    timestamps RFC 3339 with a zone, lists and embeddings JSON arrays in a field."""
    lines = [",".join(rows[0])]
    for r in rows:
        cells: list[str] = []
        for value in r.values():
            if value is None:
                cells.append("")  # unquoted: NULL
            elif isinstance(value, (int, float)):
                cells.append(repr(value))
            else:
                if isinstance(value, list):
                    value = json.dumps(value, ensure_ascii=False)
                elif isinstance(value, dt.datetime):
                    zone = dt.timezone(dt.timedelta(hours=2)) if r["user_id"] % 2 else dt.UTC
                    value = value.astimezone(zone).isoformat().replace("+00:00", "Z")
                cells.append('"' + value.replace('"', '""') + '"')
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def expected_of(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    out = {}
    for r in rows:
        row = {k: v for k, v in r.items() if k != "user_id"}
        if row["amounts"] is not None:
            row["amounts"] = [float(np.float32(x)) for x in row["amounts"]]
        if row["emb"] is not None:
            row["emb"] = [float(np.float32(x)) for x in row["emb"]]
        row["score"] = None if row["score"] is None else float(np.float32(row["score"]))
        out[r["user_id"]] = row
    return out


def stored(
    conn: psycopg.Connection, schema: str, registry: Registry, table: str = "profile"
) -> dict[int, dict[str, Any]]:
    """The table as plain SQL reads it: embeddings as text, parsed here; real values as the float32 they are."""
    features = registry.table(table).features
    cols = sql.SQL(", ").join(
        sql.SQL("{}::text").format(sql.Identifier(f.name)) if f.type.kind == "embedding" else sql.Identifier(f.name)
        for f in features
    )
    query = sql.SQL("SELECT user_id, {} FROM {}").format(cols, sql.Identifier(schema, table))
    out = {}
    for key, *values in conn.cursor(binary=True).execute(query).fetchall():
        row = {}
        for f, v in zip(features, values):
            if f.type.kind == "embedding" and v is not None:  # printed shortest for its float width
                width = np.float16 if f.type.storage == "halfvec" else np.float32
                v = [float(width(x)) for x in v.strip("[]{}").split(",")]
            if isinstance(v, dt.datetime):
                v = v.astimezone(dt.UTC)
            row[f.name] = v
        out[key] = row
    return out


def listed(values: dict[str, Any] | None) -> dict[str, Any] | None:
    """A read's values with its embeddings (``array("f")``) as lists, as ``stored`` gives them."""
    return None if values is None else {k: list(v) if isinstance(v, array) else v for k, v in values.items()}


def columns_of(conn: psycopg.Connection, schema: str, table: str) -> dict[str, str]:
    return dict(
        conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            [f"{schema}.{table}"],
        ).fetchall()
    )


@pytest.fixture()
def reg(conn: psycopg.Connection, schema: str) -> Registry:
    registry = registry_of(schema)
    apply_schema(conn, registry)
    return registry


ROWS = rows_of(range(1, 301))


def _source(fmt: str, rows: list[dict[str, Any]], tmp_path: Path) -> Any:
    table = arrow_of(rows)
    if fmt == "table":
        return table
    if fmt == "batches":
        return table.to_batches(max_chunksize=37)
    if fmt == "parquet":
        pq.write_table(table, tmp_path / "rich.parquet", row_group_size=100)
        return tmp_path / "rich.parquet"
    if fmt == "arrow":
        with pa.OSFile(str(tmp_path / "rich.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table, max_chunksize=70)
        return tmp_path / "rich.arrow"
    if fmt == "pandas":
        pytest.importorskip("pandas")
        return table.to_pandas()  # lists become object columns of arrays, timestamps datetime64[ns, UTC]
    if fmt == "polars":
        polars = pytest.importorskip("polars")
        return polars.from_arrow(table)
    assert fmt == "csv"
    return csv_of(rows, tmp_path / "rich.csv")


@pytest.mark.parametrize("fmt", ["table", "batches", "parquet", "arrow", "pandas", "polars", "csv"])
def test_every_rich_type_round_trips_from_every_source(
    conn: psycopg.Connection, schema: str, reg: Registry, tmp_path: Path, fmt: str
) -> None:
    summary = load(conn, reg, "profile", _source(fmt, ROWS, tmp_path), batch_rows=64)
    assert summary.rows_read == len(ROWS) and summary.inserted == len(ROWS)
    assert stored(conn, schema, reg) == expected_of(ROWS)


def test_a_first_load_creates_the_table_with_its_rich_columns(conn: psycopg.Connection, schema: str) -> None:
    registry = registry_of(schema)
    load(conn, registry, "profile", arrow_of(ROWS[:20]))
    assert stored(conn, schema, registry) == expected_of(ROWS[:20])
    columns = columns_of(conn, schema, "profile")
    assert columns["country"] == "character varying(4)" and columns["cats"] == "character varying(256)[]"
    assert columns["emb"] == ("vector(4)" if has_pgvector(conn) else "real[]")


@pytest.mark.parametrize("how", [{"strategy": "upsert"}, {"strategy": "rebuild"}, {"mode": "replace"}])
def test_every_apply_strategy_keeps_rich_columns(
    conn: psycopg.Connection, schema: str, reg: Registry, how: dict[str, str]
) -> None:
    load(conn, reg, "profile", arrow_of(ROWS[:200]))
    changed = rows_of(range(150, 301), seed=1)
    summary = load(conn, reg, "profile", arrow_of(changed), **how)
    assert summary.strategy == how.get("strategy", "replace")
    expected = (
        expected_of(changed) if how.get("mode") == "replace" else {**expected_of(ROWS[:200]), **expected_of(changed)}
    )
    assert stored(conn, schema, reg) == expected


def test_a_partial_load_of_rich_columns_leaves_the_others(conn: psycopg.Connection, schema: str, reg: Registry) -> None:
    load(conn, reg, "profile", arrow_of(ROWS[:50]))
    part = arrow_of(rows_of(range(1, 51), seed=2)).select(["user_id", "emb", "cats"])
    load(conn, reg, "profile", part, partial=True)
    expected = expected_of(ROWS[:50])
    for key, emb, cats in zip(*(part.column(c).to_pylist() for c in ("user_id", "emb", "cats"))):
        expected[key]["emb"] = None if emb is None else [float(np.float32(x)) for x in emb]
        expected[key]["cats"] = cats
    assert stored(conn, schema, reg) == expected


def test_other_arrow_forms_of_each_type(conn: psycopg.Connection, schema: str, reg: Registry) -> None:
    """Dictionary-encoded and large strings, nanosecond timestamps in another zone (rounded to microseconds as PostgreSQL rounds them),
    ISO 8601 strings with a zone into a timestamp, large lists, fixed-size lists of doubles and variable
    lists into an embedding, integers into list<real>."""
    rows = ROWS[:40]
    stamps = [
        None if r["last_login"] is None else r["last_login"].astimezone(dt.timezone(dt.timedelta(hours=-5)))
        for r in rows
    ]
    table = pa.table(
        {
            "user_id": pa.array([r["user_id"] for r in rows], pa.int32()),
            "country": pa.array([r["country"] for r in rows], pa.large_string()).dictionary_encode(),
            "last_login": pa.array([None if s is None else s.isoformat() for s in stamps], pa.string()),
            "cats": pa.array([r["cats"] for r in rows], pa.large_list(pa.large_string())),
            "ids": pa.array([r["ids"] for r in rows], pa.large_list(pa.int64())),
            "amounts": pa.array([[int(x) for x in r["amounts"]] for r in rows], pa.list_(pa.int16())),
            "scores": pa.array([r["scores"] for r in rows], pa.list_(pa.float64())),
            "small": pa.array([r["small"] for r in rows], pa.large_list(pa.int64())),
            "emb": pa.array([r["emb"] for r in rows], pa.list_(pa.float64())),
            "score": pa.array([r["score"] for r in rows], pa.float64()),
        }
    )
    load(conn, reg, "profile", table)
    expected = expected_of(rows)
    for r in expected.values():
        r["amounts"] = [float(int(x)) for x in r["amounts"]]
    assert stored(conn, schema, reg) == expected
    nanos = pa.table(
        {
            "user_id": pa.array([1, 2], pa.int64()),
            "last_login": pa.array([1_700_000_000_123_456_789, -1], pa.timestamp("ns", tz="Europe/Berlin")),
            "emb": pa.array([[1, 2, 3, 4], [0.5, 0.25, 0.125, 1e-3]], pa.list_(pa.float64(), 4)),
        }
    )
    load(conn, reg, "profile", nanos, partial=True)
    got = stored(conn, schema, reg)
    assert got[1]["last_login"] == dt.datetime(2023, 11, 14, 22, 13, 20, 123457, tzinfo=dt.UTC)  # .123456789
    assert got[2]["last_login"] == dt.datetime(1970, 1, 1, tzinfo=dt.UTC)  # 1 ns before: .999999999 rounds up
    assert got[2]["emb"] == [0.5, 0.25, 0.125, float(np.float32(1e-3))]


def test_a_zoneless_timestamp_column_loads_in_the_declared_zone(
    conn: psycopg.Connection, schema: str, reg: Registry
) -> None:
    table = pa.table(
        {
            "user_id": pa.array([1], pa.int64()),
            "last_login": pa.array([dt.datetime(2026, 7, 1, 12)], pa.timestamp("ms")),
        }
    )
    load(conn, reg, "profile", table, partial=True, event_time_zone="Europe/Berlin")
    assert stored(conn, schema, reg)[1]["last_login"] == dt.datetime(2026, 7, 1, 10, tzinfo=dt.UTC)


def test_embeddings_of_every_storage(conn: psycopg.Connection, schema: str, tmp_path: Path) -> None:
    if not has_pgvector(conn):
        pytest.skip("the server has no pgvector")
    registry = registry_of(schema, vectors=True)
    apply_schema(conn, registry)
    values = [[0.1, -2.5, 1e-3], [65504.0, -65504.0, 0.0], None, [1.0, 2.0, 3.0]]
    table = pa.table(
        {
            "user_id": pa.array([1, 2, 3, 4], pa.int64()),
            **{name: pa.array(values, pa.list_(pa.float32(), 3)) for name in VECTORS},
        }
    )
    load(conn, registry, "vecs", table)
    csv_path = tmp_path / "vecs.csv"
    csv_path.write_text('user_id,e_vec,e_half,e_arr\n5,"[1, 2, 3]","[0.5,0.25,0.125]","[-1e-3, 7, 8]"\n')
    load(conn, registry, "vecs", csv_path)
    got = stored(conn, schema, registry, "vecs")
    for key, value in enumerate([*values, None], start=1):
        if value is None:
            continue
        assert got[key]["e_vec"] == [float(np.float32(x)) for x in value]
        assert got[key]["e_arr"] == [float(np.float32(x)) for x in value]
        assert got[key]["e_half"] == [float(np.float16(np.float32(x))) for x in value]
    assert got[3] == {"e_vec": None, "e_half": None, "e_arr": None}
    assert got[5] == {
        "e_vec": [1.0, 2.0, 3.0],
        "e_half": [0.5, 0.25, 0.125],
        "e_arr": [float(np.float32(-1e-3)), 7.0, 8.0],
    }
    assert columns_of(conn, schema, "vecs")["e_half"] == "halfvec(3)"


def test_loaded_rich_values_are_read_back_by_the_store(conn: psycopg.Connection, schema: str, reg: Registry) -> None:
    load(conn, reg, "profile", arrow_of(ROWS[:30]))
    truth = stored(conn, schema, reg)
    with FeatureStore(reg, conn.info.dsn) as store:
        assert [listed(store.get_features(k)["profile"]) for k in (1, 2, 3)] == [truth[1], truth[2], truth[3]]
        assert store.write_features("profile", arrow_of(ROWS[30:40])).inserted == 10


def test_the_async_store_loads_rich_columns(conn: psycopg.Connection, schema: str, reg: Registry) -> None:
    import asyncio

    async def main() -> None:
        async with AsyncFeatureStore(reg, conn.info.dsn) as store:
            await store.write_features("profile", arrow_of(ROWS[:25]))

    asyncio.run(main())
    assert stored(conn, schema, reg) == expected_of(ROWS[:25])


# -- bad input: file, row, column and the rule named; nothing loaded --------------------------------


def _bad(rows: list[dict[str, Any]], row: int, **values: Any) -> list[dict[str, Any]]:
    out = [dict(r) for r in rows]
    out[row - 1].update(values)
    return out


BAD = [
    # (column, row, bad value, arrow type override, message fragment)
    ("country", 4, "ABCDE", None, "5 characters is longer than max_length 4"),
    ("country", 3, "😀😀😀😀😀", None, "5 characters is longer than max_length 4"),
    ("country", 5, "a\x00b", None, "NUL"),
    ("emb", 6, [1.0, 2.0, 3.0], pa.list_(pa.float32()), "3 values where the embedding has dim 4"),
    ("emb", 2, [1.0, float("nan"), 2.0, 3.0], None, "must be finite"),
    ("emb", 2, [1.0, float("inf"), 2.0, 3.0], None, "must be finite"),
    ("emb", 7, [1.0, None, 2.0, 3.0], None, "element 1 is null"),
    ("ids", 8, [1, None], None, "element 1 is null"),
    ("cats", 9, list("abcdef"), None, "6 elements where max_length is 5"),
    ("cats", 9, ["ok", "x" * 257], None, "longer than max_length 256"),
    ("cats", 9, ["ok", "\x00"], None, "NUL"),
    ("amounts", 10, [1.0, float("nan")], pa.list_(pa.float64()), "finite"),
    ("amounts", 10, [1e39], pa.list_(pa.float64()), "out of range for real"),
    ("small", 11, [2**31], pa.list_(pa.int64()), "out of range for integer"),
    ("small", 11, [1.5], pa.list_(pa.float64()), "not an integer"),
]


@pytest.mark.parametrize("column, row, value, arrow_type, message", BAD)
@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_bad_values_are_refused_naming_file_row_column_and_rule(
    conn: psycopg.Connection,
    schema: str,
    reg: Registry,
    tmp_path: Path,
    fmt: str,
    column: str,
    row: int,
    value: Any,
    arrow_type: pa.DataType | None,
    message: str,
) -> None:
    if fmt == "csv" and isinstance(value, str) and "\x00" in value:
        pytest.skip("a CSV field with a NUL byte: tested with a list element instead")
    load(conn, reg, "profile", arrow_of(ROWS[:20]))
    before = stored(conn, schema, reg)
    rows = _bad(ROWS[:20], row, **{column: value})
    if fmt == "parquet":
        path = tmp_path / "bad.parquet"
        pq.write_table(arrow_of(rows, {column: arrow_type} if arrow_type else None), path)
    else:
        path = csv_of(rows, tmp_path / "bad.csv")
    with pytest.raises(LoadInputError) as err:
        load(conn, reg, "profile", path)
    text = str(err.value)
    assert f"{path}: row {row}, column {column!r}" in text, text
    assert message in text, text
    assert "nothing was loaded" in text and "unchanged" in text, text
    assert (err.value.source, err.value.row, err.value.column) == (str(path), row, column)
    assert stored(conn, schema, reg) == before


def test_bad_rows_are_skipped_and_counted_with_on_invalid_skip(
    conn: psycopg.Connection, schema: str, reg: Registry
) -> None:
    rows = _bad(_bad(ROWS[:20], 3, country="TOO LONG"), 5, emb=[1.0, float("nan"), 0.0, 0.0])
    summary = load(conn, reg, "profile", arrow_of(rows), on_invalid="skip")
    assert summary.rejected == 2 and summary.inserted == 18
    assert "row 3, column 'country'" in summary.examples[0] and "row 5, column 'emb'" in summary.examples[1]
    expected = expected_of(rows)
    del expected[3], expected[5]
    assert stored(conn, schema, reg) == expected


@pytest.mark.parametrize(
    "field, message",
    [
        ("2026-05-01T12:00:00", "has no time zone"),
        ("2026-05-01 12:00", "has no time zone"),
        ("yesterday", "write ISO 8601 with a zone"),
    ],
)
def test_a_csv_timestamp_without_a_zone_is_refused(
    conn: psycopg.Connection, schema: str, reg: Registry, tmp_path: Path, field: str, message: str
) -> None:
    path = tmp_path / "times.csv"
    path.write_text(f"user_id,last_login\n1,2026-05-01T12:00:00Z\n2,{field}\n")
    with pytest.raises(LoadInputError) as err:
        load(conn, reg, "profile", path, partial=True)
    assert f"{path}: row 2, column 'last_login'" in str(err.value) and message in str(err.value)
    assert stored(conn, schema, reg) == {}


def test_an_arrow_timestamp_without_a_zone_is_refused_before_any_row(
    conn: psycopg.Connection, schema: str, reg: Registry, tmp_path: Path
) -> None:
    path = tmp_path / "naive.parquet"
    pq.write_table(
        pa.table({"user_id": [1], "last_login": pa.array([dt.datetime(2026, 1, 1)], pa.timestamp("us"))}), path
    )
    with pytest.raises(LoadInputError) as err:
        load(conn, reg, "profile", path, partial=True)
    assert f"{path}: column 'last_login'" in str(err.value) and "no time zone" in str(err.value)
    assert "event_time_zone" in str(err.value) and err.value.column == "last_login"
    assert stored(conn, schema, reg) == {}


@pytest.mark.parametrize(
    "field, column, message",
    [
        ("[1, 2", "ids", "is not a JSON array"),
        ("1, 2", "ids", "is not a JSON array"),
        ('{"a": 1}', "ids", "is not a JSON array"),
        ("[1.5]", "ids", "not an integer"),
        ('["1"]', "ids", "not an integer"),
        ("[99999999999999999999]", "ids", "out of range for bigint"),
        ("[1, 2]", "cats", "element 0 is 1, not a string"),
        ('["a", null]', "cats", "element 1 is null"),
        ("[1, 2, 3]", "emb", "3 values where the embedding has dim 4"),
        ("[1, NaN, 2, 3]", "emb", "must be finite"),
        ('[1], "x": [2]', "emb", "is not a JSON array"),
        ('[1,2,3,4]}{"v":[5,6,7,8]', "emb", "is not a JSON array"),
        ('[1,\n2,3,"x"]', "emb", "element 3 is 'x', not a number"),
    ],
)
def test_a_bad_csv_list_is_refused_naming_row_and_column(
    conn: psycopg.Connection, schema: str, reg: Registry, tmp_path: Path, field: str, column: str, message: str
) -> None:
    path = tmp_path / "lists.csv"
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["user_id", column])
        out.writerow([1, "[]" if column != "emb" else "[0, 0, 0, 0]"])
        out.writerow([2, field])
    with pytest.raises(LoadInputError) as err:
        load(conn, reg, "profile", path, partial=True)
    assert f"{path}: row 2, column {column!r}" in str(err.value), str(err.value)
    assert message in str(err.value), str(err.value)
    assert stored(conn, schema, reg) == {}


@pytest.mark.parametrize(
    "column, arrow_type, message",
    [
        ("country", pa.int64(), "cannot load into string"),
        ("cats", pa.list_(pa.int64()), "cannot load into list<string>"),
        ("ids", pa.list_(pa.string()), "cannot load into list<bigint>"),
        ("emb", pa.list_(pa.string()), "cannot load into embedding"),
        ("emb", pa.float32(), "cannot load into embedding"),
        ("last_login", pa.bool_(), "cannot load into timestamp: a timestamp, an ISO 8601 string"),
        ("score", pa.list_(pa.float32()), "cannot load into real"),
    ],
)
def test_a_column_of_another_type_is_refused_before_any_row(
    conn: psycopg.Connection, schema: str, reg: Registry, column: str, arrow_type: pa.DataType, message: str
) -> None:
    table = pa.table({"user_id": pa.array([1], pa.int64()), column: pa.array([None], arrow_type)})
    with pytest.raises(LoadInputError) as err:
        load(conn, reg, "profile", table, partial=True)
    assert f"column {column!r}" in str(err.value) and message in str(err.value), str(err.value)
    assert err.value.column == column


def test_a_halfvec_value_beyond_its_range_is_refused(conn: psycopg.Connection, schema: str) -> None:
    if not has_pgvector(conn):
        pytest.skip("the server has no pgvector")
    registry = registry_of(schema, vectors=True)
    apply_schema(conn, registry)
    table = pa.table(
        {
            "user_id": pa.array([1, 2], pa.int64()),
            "e_half": pa.array([[1.0, 2.0, 3.0], [1.0, 70000.0, 3.0]], pa.list_(pa.float32(), 3)),
        }
    )
    with pytest.raises(LoadInputError, match=r"row 2, column 'e_half': element 1 is 70000.0, out of range for halfvec"):
        load(conn, registry, "vecs", table, partial=True)
    assert stored(conn, schema, registry, "vecs") == {}


def test_csv_strings_nulls_and_quoting(conn: psycopg.Connection, schema: str, reg: Registry, tmp_path: Path) -> None:
    """An unquoted empty field is NULL; a quoted one the empty string; quoted "NULL" is the string."""
    path = tmp_path / "strings.csv"
    path.write_text('user_id,country,cats\n1,,\n2,"",[]\n3,"NULL","[""a,b"", ""\\\\N""]"\n4,NULL,null\n')
    load(conn, reg, "profile", path, partial=True)
    got = {k: (v["country"], v["cats"]) for k, v in stored(conn, schema, reg).items()}
    assert got == {1: (None, None), 2: ("", []), 3: ("NULL", ["a,b", "\\N"]), 4: (None, None)}


def test_embedding_dimension_is_checked_on_the_fast_path_for_every_row(
    conn: psycopg.Connection, schema: str, reg: Registry
) -> None:
    """A fixed-size list of the wrong size is refused before any row."""
    table = pa.table({"user_id": pa.array([1], pa.int64()), "emb": pa.array([[1.0, 2.0]], pa.list_(pa.float32(), 2))})
    with pytest.raises(LoadInputError, match="fixed-size lists of 2 values; the embedding has dim 4"):
        load(conn, reg, "profile", table, partial=True)


def test_nan_in_an_embedding_is_refused_whatever_the_nan_policy(
    conn: psycopg.Connection, schema: str, reg: Registry
) -> None:
    table = pa.table(
        {"user_id": pa.array([1], pa.int64()), "emb": pa.array([[1.0, math.nan, 0, 0]], pa.list_(pa.float32(), 4))}
    )
    with pytest.raises(LoadInputError, match="element 1 is nan; an embedding's values must be finite numbers"):
        load(conn, reg, "profile", table, partial=True, nan="null", inf="keep")


def test_list_columns_are_verified_like_the_others(
    conn: psycopg.Connection, schema: str, reg: Registry, tmp_path: Path
) -> None:
    """A list's pages carry checksums like any column's (require_checksums loads the file), and without
    them its elements are checked against the statistics of its leaf, not left unchecked."""
    path = tmp_path / "crc.parquet"
    pq.write_table(arrow_of(ROWS[:50]), path, write_page_checksum=True)
    summary = load(conn, reg, "profile", path, require_checksums=True)
    assert summary.integrity[str(path)].startswith("page checksums")
    plain = tmp_path / "plain.parquet"
    pq.write_table(arrow_of(ROWS[:50]), plain)
    summary = load(conn, reg, "profile", plain)
    assert "unchecked" not in summary.integrity[str(plain)] and not summary.notes, summary.integrity
    assert stored(conn, schema, reg) == expected_of(ROWS[:50])


TOML = """
schema = "{schema}"
[entities.user]
key = "bigint"
column = "user_id"
[tables.profile]
entity = "user"
[tables.profile.features]
country = {{ type = "string", max_length = 4 }}
last_login = "timestamp"
cats = {{ type = "list<string>", max_length = 5 }}
ids = "list<bigint>"
amounts = "list<real>"
scores = "list<double>"
small = "list<integer>"
emb = {{ type = "embedding", dim = 4 }}
score = "real"
"""


def test_the_cli_loads_a_csv_of_every_rich_type(conn: psycopg.Connection, schema: str, tmp_path: Path) -> None:
    definitions = tmp_path / "features.toml"
    definitions.write_text(TOML.format(schema=schema))
    registry = Registry.from_toml(definitions)
    assert [f.type for f in registry.table("profile").features] == [
        f.type for f in registry_of(schema).table("profile").features
    ]
    path = csv_of(ROWS[:40], tmp_path / "rich.csv")
    done = cli("load", "profile", str(path), "--dsn", conn.info.dsn, "-d", str(definitions), "-q")
    assert done.returncode == 0, done.stderr
    assert stored(conn, schema, registry) == expected_of(ROWS[:40])
    bad = csv_of(_bad(ROWS[:40], 7, emb=[1.0, 2.0]), tmp_path / "bad.csv")
    done = cli("load", "profile", str(bad), "--dsn", conn.info.dsn, "-d", str(definitions), "-q")
    assert done.returncode != 0
    assert f"{bad}: row 7, column 'emb': 2 values where the embedding has dim 4" in done.stderr, done.stderr
    assert stored(conn, schema, registry) == expected_of(ROWS[:40])


def test_pushes_of_rich_values_are_live_updates(conn: psycopg.Connection, schema: str, tmp_path: Path) -> None:
    """POST /v1/push/{table} does not go through the loader: it is update_features_batch, which takes the
    rich types as JSON values (strings, RFC 3339 times, arrays) and refuses a bad one naming the feature."""
    from pgfeatures.server import ServerConfig
    from support.inprocess import running_app

    definitions = tmp_path / "features.toml"
    definitions.write_text(TOML.format(schema=schema))
    registry = Registry.from_toml(definitions)
    apply_schema(conn, registry)
    config = ServerConfig(dsn=conn.info.dsn, definitions=str(definitions), prewarm=False, pool_size=2)
    row = {
        "country": "ÄÖÜß",
        "last_login": "2026-05-01T14:30:15.250001+02:00",
        "cats": ["a", 'b "c"'],
        "ids": [2**62, -1],
        "amounts": [0.1],
        "scores": [1e300],
        "small": [],
        "emb": [0.5, -0.25, 0.125, 1e-3],
        "score": 0.5,
    }
    with running_app(config) as client:
        done = client.post("/v1/push/profile", json={"key": 1, "features": row})
        assert done.status_code == 200, done.text
        refused = client.post("/v1/push/profile", json={"key": 2, "features": {"emb": [1, 2]}})
        assert refused.status_code == 400 and "emb" in refused.text and "dim 4" in refused.text, refused.text
    got = stored(conn, schema, registry)
    assert got == {
        1: {
            **row,
            "last_login": dt.datetime(2026, 5, 1, 12, 30, 15, 250001, tzinfo=dt.UTC),
            "amounts": [float(np.float32(0.1))],
            "emb": [0.5, -0.25, 0.125, float(np.float32(1e-3))],
        }
    }


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(
        st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=4),
        min_size=1,
        max_size=5,
    ),
    floats=st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=4, max_size=4),
)
def test_any_strings_and_embedding_floats_load_exactly(
    conn: psycopg.Connection, schema: str, reg: Registry, tmp_path: Path, texts: list[str], floats: list[float]
) -> None:
    """Any unicode (empty, at max_length, astral), any float32 (subnormals, ±0, the extremes), through
    Arrow and CSV alike; an embedding whose squared norm float32 cannot hold (pgvector could not rank it)
    is refused by both, nothing loaded."""
    squares = math.fsum(float(x) ** 2 for x in floats)
    if squares >= 3.4028234663852886e38 or 0 < squares < 2.0**-126:
        table = pa.table({"user_id": pa.array([1], pa.int64()), "emb": pa.array([floats], pa.list_(pa.float32(), 4))})
        for source in (table, csv_of([{"user_id": 1, "emb": floats}], tmp_path / "n.csv")):
            with pytest.raises(LoadInputError, match="squared norm"):
                load(conn, reg, "profile", source, partial=True)
        return
    rows = [
        {"user_id": i, "country": text, "cats": texts, "emb": floats[i % 4 :] + floats[: i % 4]}
        for i, text in enumerate(texts)
    ]
    table = pa.table(
        {
            "user_id": pa.array([r["user_id"] for r in rows], pa.int64()),
            "country": pa.array([r["country"] for r in rows], pa.string()),
            "cats": pa.array([r["cats"] for r in rows], pa.list_(pa.string())),
            "emb": pa.array([r["emb"] for r in rows], pa.list_(pa.float32(), 4)),
        }
    )
    expected = {r["user_id"]: {"country": r["country"], "cats": r["cats"], "emb": r["emb"]} for r in rows}
    for source in (table, csv_of(rows, tmp_path / "h.csv")):
        conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(schema, "profile")))
        load(conn, reg, "profile", source, partial=True)
        got = {k: {c: v[c] for c in ("country", "cats", "emb")} for k, v in stored(conn, schema, reg).items()}
        assert got == expected


@pytest.mark.parametrize("how", [{"strategy": "upsert"}, {"strategy": "rebuild"}, {"mode": "replace"}])
def test_a_materialized_service_of_rich_features_follows_loads(
    conn: psycopg.Connection, schema: str, tmp_path: Path, how: dict[str, str]
) -> None:
    definitions = tmp_path / "features.toml"
    definitions.write_text(
        TOML.format(schema=schema)
        + "[services.served]\nmaterialize = true\n"
        + 'features = ["profile.country", "profile.last_login", "profile.cats", "profile.emb", "profile.score"]\n'
    )
    registry = Registry.from_toml(definitions)
    load(conn, registry, "profile", arrow_of(ROWS[:60]))
    done = cli("materialize", "served", "--dsn", conn.info.dsn, "-d", str(definitions))
    assert done.returncode == 0, done.stderr
    changed = rows_of(range(40, 101), seed=3)
    summary = load(conn, registry, "profile", arrow_of(changed), **how)
    assert summary.strategy == how.get("strategy", "replace")
    truth = stored(conn, schema, registry)
    with FeatureStore(registry, conn.info.dsn) as store:
        for key in (1, 39, 40, 77, 100, 101):
            row = truth.get(key)
            expected = None if row is None else {n: row[n] for n in ("country", "last_login", "cats", "emb", "score")}
            assert listed(store.get_service("served", key)["profile"]) == expected, key
