"""What rich types cost on a read: 30 tables with one string and one embedding each, against all-numeric.

Standalone (issue 22's target row). Two schemas of 30 tables, ``--rows`` rows each, keys ``0..rows-1``
(bigint), filled with ``COPY``:

- ``numeric``: 8 ``real`` features per table (the demo's shape);
- ``rich``: 6 ``real``, one ``string`` (12 characters) and one ``embedding`` of ``--dim`` (128) per table.

With ``--psycopg-records`` a third form reads the rich schema with psycopg's own record loader put back on
its read connection (``rich_psycopg``): what the compiled record parsers (``reader/records.py``) save.

Both are prewarmed (``pgfeatures warmup``'s pg_prewarm) and read through ``FeatureStore.get_features`` (all 30 tables, one statement, one round-trip: the
reader is checked to be the ``single`` strategy with one statement), interleaved round by round in one
run, sequential caller, loopback. Reports p50/p99 (ms), client CPU per request (ms) and the ratio
rich / numeric. Run it::

    PYTHONPATH=src python bench/rich_read.py --rows 20000 --rounds 10 --requests 300
"""

from __future__ import annotations

import argparse
import json
import random

import psycopg
from psycopg import sql
from psycopg.types.composite import RecordBinaryLoader

from pgfeatures.connections import resolve_dsn
from pgfeatures.definitions import Entity, FeatureTable, Registry
from pgfeatures.schema import apply_schema
from pgfeatures.store import FeatureStore
from pgfeatures.store.base import READ_CURSOR
from pgfeatures.timing import measure_interleaved
from pgfeatures.warmup.prewarm import warm_store

USER = Entity("user", key_type="bigint", column="user_id")


def registries(tables: int, dim: int) -> dict[str, Registry]:
    numeric = [FeatureTable.of(f"t{i:02d}", {f"f{j}": "real" for j in range(8)}, entity=USER) for i in range(tables)]
    rich = [
        FeatureTable.of(
            f"t{i:02d}",
            {
                **{f"f{j}": "real" for j in range(6)},
                "label": {"type": "string", "max_length": 32},
                "embedding": {"type": "embedding", "dim": dim},
            },
            entity=USER,
        )
        for i in range(tables)
    ]
    return {
        "numeric": Registry.of(numeric, "bench_rich_numeric"),
        "rich": Registry.of(rich, "bench_rich_rich"),
    }


def fill(conn: psycopg.Connection, registry: Registry, rows: int, dim: int) -> None:
    rng = random.Random(7)
    for table in registry.tables.values():
        ident = sql.Identifier(registry.schema, table.name)
        if conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ident)).fetchone() == (rows,):
            continue
        conn.execute(sql.SQL("TRUNCATE {}").format(ident))
        names = [f.name for f in table.features]
        with conn.cursor().copy(
            sql.SQL("COPY {} ({}) FROM STDIN").format(
                ident, sql.SQL(", ").join(map(sql.Identifier, ["user_id", *names]))
            )
        ) as copy:
            for key in range(rows):
                values: list[object] = [key]
                for f in table.features:
                    if f.type.kind == "string":
                        values.append(f"label-{key % 997:06d}")
                    elif f.type.kind == "embedding":
                        values.append("[" + ",".join(f"{rng.random():.6f}" for _ in range(dim)) + "]")
                    else:
                        values.append(rng.random())
                copy.write_row(values)
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(ident))


def psycopg_records(store: FeatureStore) -> None:
    """Put psycopg's record loader back on the store's read connection (the reader then gets tuples)."""
    pool = store.reads.router.order()[0].pool
    conn = pool.getconn()
    try:
        getattr(conn, READ_CURSOR).adapters.register_loader("record", RecordBinaryLoader)
    finally:
        pool.putconn(conn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default=None, help="default: PGFEATURES_DSN, else the embedded server")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--tables", type=int, default=30)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=300, help="timed requests per form")
    parser.add_argument(
        "--psycopg-records", action="store_true", help="also read the rich schema with psycopg's record loader"
    )
    args = parser.parse_args()
    dsn = resolve_dsn(args.dsn)
    regs = registries(args.tables, args.dim)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for registry in regs.values():
            apply_schema(conn, registry)
        for registry in regs.values():
            fill(conn, registry, args.rows, args.dim)
    stores = {name: FeatureStore(registry, dsn) for name, registry in regs.items()}
    if args.psycopg_records:  # one connection, so the loader put back is the one every read uses
        stores["rich_psycopg"] = FeatureStore(regs["rich"], dsn, pool_size=1)
    try:
        for store in stores.values():  # both in shared buffers (pg_prewarm): a cache miss is not a type's cost
            warm_store(store)
        for name, store in stores.items():
            reader = store.readers.reader(None, None, store.strategy)
            assert len(reader.statements) == 1, f"{name}: {len(reader.statements)} statements"
            assert all(v is not None for v in store.get_features(1).values()), name
        if args.psycopg_records:
            psycopg_records(stores["rich_psycopg"])
            assert stores["rich_psycopg"].get_features(1) == stores["rich"].get_features(1)
        calls = {name: (lambda key, s=store: s.get_features(key)) for name, store in stores.items()}
        stats = measure_interleaved(calls, list(range(args.rows)), args.requests, rounds=args.rounds)
    finally:
        for store in stores.values():
            store.close()
    numeric, rich = stats["numeric"], stats["rich"]
    report = {
        "command": "PYTHONPATH=src python bench/rich_read.py "
        f"--rows {args.rows} --tables {args.tables} --dim {args.dim} --rounds {args.rounds} --requests {args.requests}"
        + (" --psycopg-records" if args.psycopg_records else ""),
        **{name: s.as_dict() for name, s in stats.items()},
        "ratio_p50": rich.p50_ms / numeric.p50_ms,
        "ratio_p99": rich.p99_ms / numeric.p99_ms,
        "ratio_cpu": rich.cpu_ms / numeric.cpu_ms,
    }
    if "rich_psycopg" in stats:
        report["ratio_p50_psycopg_records"] = stats["rich_psycopg"].p50_ms / numeric.p50_ms
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
