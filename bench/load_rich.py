"""Bulk loads of rich types against all-numeric ones: rows/s of a table with one ``string`` and one 128-dim
``embedding`` next to a table of 8 ``real`` features, the same row count, from Parquet (and CSV: lists and
embeddings as JSON arrays), in one run, rounds interleaved.

Each load is ``mode="replace"`` of the whole file (read, validate, encode, COPY, build the new table and
its primary key, swap); the figure is the loader's own (``LoadSummary.seconds``), split by phase with the
progress callback: *stage* (read, check, encode, COPY into the stage) and *apply* (fill the new table,
index, analyze, swap); B/row is the loaded table's size per row (``pg_table_size``), MB/s that size loaded
per second (a rich row is ten times a numeric one). Every loaded table is compared with the file once (``count(*)`` and a checksum of
one column). Run it::

    PYTHONPATH=src python bench/load_rich.py --rows 200000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from pgfeatures.connections import resolve_dsn
from pgfeatures.definitions import Registry
from pgfeatures.load import LoadProgress, load
from pgfeatures.schema import apply_schema

SCHEMA = "bench_load_rich"
DIM = 128


def registry() -> Registry:
    return Registry.from_dict(
        {
            "schema": SCHEMA,
            "entities": {"user": {"key": "bigint", "column": "user_id"}},
            "tables": {
                "numeric": {"entity": "user", "features": {f"f{j}": "real" for j in range(8)}},
                "rich": {
                    "entity": "user",
                    "features": {
                        "name": {"type": "string", "max_length": 32},
                        "emb": {"type": "embedding", "dim": DIM},
                    },
                },
            },
        }
    )


def tables(rows: int) -> dict[str, pa.Table]:
    rng = np.random.default_rng(0)
    ids = pa.array(np.arange(rows, dtype=np.int64))
    numeric = pa.table({"user_id": ids, **{f"f{j}": rng.random(rows, dtype=np.float32) for j in range(8)}})
    emb = rng.standard_normal((rows, DIM), dtype=np.float32)
    rich = pa.table(
        {
            "user_id": ids,
            "name": pa.array([f"user-{i:08d}-{i % 977}" for i in range(rows)], pa.string()),
            "emb": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), DIM),
        }
    )
    return {"numeric": numeric, "rich": rich}


def write_csv(table: pa.Table, path: Path) -> None:
    if "emb" not in table.column_names:
        pcsv.write_csv(table, path)
        return
    emb = table.column("emb").combine_chunks().flatten().to_numpy().reshape(len(table), DIM)
    with path.open("w") as fh:
        fh.write("user_id,name,emb\n")
        for key, name, row in zip(table.column("user_id").to_pylist(), table.column("name").to_pylist(), emb):
            fh.write(f'{key},"{name}","[{", ".join(map(repr, row.tolist()))}]"\n')


def one_load(conn: psycopg.Connection, reg: Registry, table: str, path: Path) -> dict[str, float]:
    marks: list[tuple[str, float]] = []

    def progress(p: LoadProgress) -> None:
        if not marks or marks[-1][0] != p.phase:
            marks.append((p.phase, time.perf_counter()))

    start = time.perf_counter()
    summary = load(conn, reg, table, path, mode="replace", vacuum="never", progress=progress)
    phases = dict(marks)
    staged = phases.get("filling the new table", start) - start
    return {"rows": summary.rows_read, "seconds": summary.seconds, "stage": staged, "apply": summary.seconds - staged}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dsn", help="default: $PGFEATURES_DSN, else the embedded server")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--csv-rows", type=int, default=50_000, help="rows of the CSV files (0: no CSV)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    dsn = resolve_dsn(args.dsn)
    reg = registry()
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp, psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        apply_schema(conn, reg)
        columns = dict(
            conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass "
                "AND attnum > 0",
                [f"{SCHEMA}.rich"],
            ).fetchall()
        )
        files: dict[tuple[str, str], Path] = {}
        data = {"parquet": tables(args.rows)}
        for name, table in data["parquet"].items():
            files[(name, "parquet")] = Path(tmp) / f"{name}.parquet"
            pq.write_table(table, files[(name, "parquet")])
        if args.csv_rows:
            data["csv"] = tables(args.csv_rows)
            for name, table in data["csv"].items():
                files[(name, "csv")] = Path(tmp) / f"{name}.csv"
                write_csv(table, files[(name, "csv")])
        for _ in range(args.rounds):
            for (name, fmt), path in files.items():
                results.setdefault((name, fmt), []).append(one_load(conn, reg, name, path))
                rows, size = conn.execute(
                    f"SELECT count(*), pg_table_size('{SCHEMA}.{name}') FROM {SCHEMA}.{name}"
                ).fetchone()  # type: ignore[misc]
                assert rows == results[(name, fmt)][-1]["rows"], (name, fmt, rows)
                results[(name, fmt)][-1]["bytes"] = size / rows
        sample = conn.execute(f"SELECT name, emb::text FROM {SCHEMA}.rich WHERE user_id = 7").fetchone()
        expected = data["csv" if args.csv_rows else "parquet"]["rich"]  # the last one loaded
        want = expected.column("emb")[7].as_py()
        assert sample is not None and sample[0] == expected.column("name")[7].as_py(), sample
        assert [float(np.float32(x)) for x in sample[1].strip("[]").split(",")] == want
        conn.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
    out: list[dict[str, Any]] = []
    for (name, fmt), runs in results.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        rows = runs[0]["rows"]
        out.append(
            {
                "table": name,
                "format": fmt,
                "rows": int(rows),
                "seconds": round(seconds, 3),
                "rows_per_s": round(rows / seconds),
                "stage_s": round(statistics.median(r["stage"] for r in runs), 3),
                "apply_s": round(statistics.median(r["apply"] for r in runs), 3),
                "table_bytes_per_row": round(runs[-1]["bytes"]),
                "mb_per_s": round(runs[-1]["bytes"] * rows / seconds / 1e6, 1),
            }
        )
    if args.json:
        json.dump({"embedding_column": columns.get("emb"), "results": out}, sys.stdout, indent=2)
        return
    print(f"rich: name varchar(32), emb {columns.get('emb')}; numeric: 8 real; medians of {args.rounds} rounds")
    print(
        f"{'table':8} {'format':8} {'rows':>9} {'seconds':>8} {'rows/s':>10} {'stage s':>8} {'apply s':>8} "
        f"{'B/row':>6} {'MB/s':>6}"
    )
    for r in out:
        print(
            f"{r['table']:8} {r['format']:8} {r['rows']:>9,} {r['seconds']:>8.3f} {r['rows_per_s']:>10,} "
            f"{r['stage_s']:>8.3f} {r['apply_s']:>8.3f} {r['table_bytes_per_row']:>6} {r['mb_per_s']:>6}"
        )


if __name__ == "__main__":
    main()
