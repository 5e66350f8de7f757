"""The ``pgfeatures`` command line. Each subcommand is a thin layer over the library.

Common options: ``--dsn`` (else ``$PGFEATURES_DSN``, else the embedded
server, started on demand) and ``--definitions`` (a TOML file, else
``$PGFEATURES_DEFINITIONS``, else the demo layout: 30 tables ``t00..t29`` of
8 ``real`` features in schema ``demo``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from .definitions import Registry, demo_registry
from .errors import PgFeaturesError

console = Console()
DEFINITIONS_ENV = "PGFEATURES_DEFINITIONS"


# -- shared options -------------------------------------------------------------------------------


def add_dsn(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dsn", help="PostgreSQL connection string (default: $PGFEATURES_DSN, else the embedded server)")


def add_definitions(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--definitions", "-d",
        help=f"feature-table definitions (TOML; default: ${DEFINITIONS_ENV}, else the demo layout)",
    )


def load_registry(path: str | None) -> Registry:
    path = path or os.environ.get(DEFINITIONS_ENV)
    return Registry.from_toml(path) if path else demo_registry()


def dsn_of(args: argparse.Namespace) -> str:
    from .connections import resolve_dsn

    return resolve_dsn(args.dsn)


# -- db -------------------------------------------------------------------------------------------


def _db(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("db", help="manage the embedded PostgreSQL server")
    p.add_argument("action", choices=["start", "stop", "status", "dsn"])
    p.set_defaults(func=cmd_db)


def cmd_db(args: argparse.Namespace) -> int:
    from . import embedded

    if args.action == "start":
        dsn = embedded.ensure_running()
        console.print(f"embedded PostgreSQL running: {dsn}")
    elif args.action == "stop":
        stopped = embedded.stop()
        console.print("stopped" if stopped else "not running")
    elif args.action == "dsn":
        print(embedded.ensure_running())
    else:
        st = embedded.status()
        console.print(f"home: {st.home}\ninitialized: {st.initialized}\nrunning: {st.running}"
                      + (f" (pid {st.pid})" if st.pid else "") + (f"\ndsn: {st.dsn}" if st.dsn else ""))
        return 0 if st.running else 3
    return 0


# -- init -----------------------------------------------------------------------------------------


def _init(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="create the schema and feature tables (idempotent; reports drift)")
    add_dsn(p)
    add_definitions(p)
    p.add_argument("--print-sql", action="store_true", help="print the DDL instead of running it")
    p.set_defaults(func=cmd_init)


def cmd_init(args: argparse.Namespace) -> int:
    import psycopg

    from .schema import apply_schema, ddl

    registry = load_registry(args.definitions)
    if args.print_sql:
        for stmt in ddl(registry):
            print(stmt.as_string(None) + ";")
        return 0
    with psycopg.connect(dsn_of(args), autocommit=True) as conn:
        report = apply_schema(conn, registry, raise_on_drift=False)
    console.print(report.describe(), markup=False)
    if not report.ok:
        console.print("[red]schema drift: the tables above disagree with their definitions; nothing was changed for them[/red]")
        return 2
    return 0


# -- get ------------------------------------------------------------------------------------------


def _get(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("get", help="read features for one or more keys (hex) and print JSON")
    add_dsn(p)
    add_definitions(p)
    p.add_argument("keys", nargs="+", help="64-character hex keys")
    p.add_argument("--tables", "-t", help="comma-separated tables (default: all)")
    p.add_argument("--features", "-f", help="comma-separated table.feature names")
    p.add_argument("--strategy", "-s", help="read strategy (default: single)")
    p.set_defaults(func=cmd_get)


def cmd_get(args: argparse.Namespace) -> int:
    from .store import FeatureStore

    tables = args.tables.split(",") if args.tables else None
    features = args.features.split(",") if args.features else None
    with FeatureStore(load_registry(args.definitions), dsn_of(args), pool_size=1, write_pool_size=1) as store:
        if len(args.keys) == 1:
            out = store.get_features(args.keys[0], tables, features, strategy=args.strategy)
        else:
            out = store.get_features_batch(args.keys, tables, features)
    print(json.dumps(out, indent=2))
    return 0


# -- demo -----------------------------------------------------------------------------------------


def _demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="load 30 demo tables and compare read strategies at 10, 20 and 30 tables")
    add_dsn(p)
    p.add_argument("--entities", type=int, default=100_000, help="synthetic entities (default 100000)")
    p.add_argument("--requests", type=int, default=1000, help="timed requests per strategy and table count")
    p.add_argument("--table-counts", default="10,20,30")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--schema", default="demo", help="schema of the demo tables (default: demo)")
    p.add_argument("--json", dest="json_out", help="also write the figures to this JSON file")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    import platform
    import time

    import psycopg
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import demo
    from .bench.runner import measure_interleaved
    from .reader import Strategy
    from .store import FeatureStore

    registry = demo_registry(schema=args.schema)
    dsn = dsn_of(args)
    console.print(f"[bold]pgfeatures demo[/bold]: {len(registry.tables)} tables x 8 real features, "
                  f"{args.entities:,} entities, server {dsn}")
    t0 = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        server_version = conn.info.server_version
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            task = progress.add_task("loading tables (COPY binary)", total=len(registry.tables))
            rows = [0]

            def step(name: str, n: int) -> None:
                rows[0] += n
                if name.startswith("vacuum"):
                    progress.update(task, description=f"loaded {rows[0]:,} rows; {name}")
                else:
                    progress.advance(task)

            loaded = demo.load_demo(conn, registry, args.entities, args.seed, progress=step)
    elapsed = time.perf_counter() - t0
    console.print(f"data {'loaded' if loaded else 'already present, reused'} in {elapsed:.1f}s")

    keys = demo.entity_keys(args.entities)
    counts = [int(c) for c in args.table_counts.split(",")]
    strategies = [Strategy.SEQUENTIAL, Strategy.PIPELINE, Strategy.JOIN, Strategy.UNION, Strategy.SINGLE]
    results = []
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=1) as store:
        for count in counts:
            names = list(registry.tables)[:count]
            calls = {s.value: (lambda r: (lambda k: store.read(r, k)))(store.reader(names, strategy=s)) for s in strategies}
            batch = store.batch_reader(names)
            batches = [keys[i : i + 100] for i in range(0, len(keys) - 100, 100)]
            stats = measure_interleaved(calls, keys, args.requests, seed=args.seed)
            stats.update(measure_interleaved({"batch x100 (per key)": lambda ks: store.read_batch(batch, ks)},
                                             batches, max(50, args.requests // 20), per={"batch x100 (per key)": 100}))
            results.append((count, stats))
        sample_key = keys[1]
        sample = store.get_features(sample_key, ["t00", "t01"], {"t00": ["f0", "f1", "f2"], "t01": ["f0", "updated_at"]})
        missing = store.get_features(bytes(32), ["t00"])
        miss_table = store.get_features(keys[49], ["t01"])  # entity 49 is absent from t01 by construction

    table = Table(title=f"read latency per request, loopback TCP, PostgreSQL {server_version // 10000}, "
                        f"Python {platform.python_version()}, {args.requests} requests per strategy (interleaved)")
    for col in ["tables", "strategy", "p50 ms", "p99 ms", "mean ms", "client CPU ms", "p50 vs sequential"]:
        table.add_column(col, justify="right" if col != "strategy" else "left")
    figures = []
    for count, stats in results:
        base = stats["sequential"].p50_ms
        for name, s in stats.items():
            table.add_row(str(count), name, f"{s.p50_ms:.3f}", f"{s.p99_ms:.3f}", f"{s.mean_ms:.3f}", f"{s.cpu_ms:.3f}",
                          f"{base / s.p50_ms:.1f}x faster" if name != "sequential" else "1.0x")
            figures.append({"tables": count, **s.as_dict()})
        table.add_section()
    console.print(table)
    console.print("sequential = one round-trip per table; every other row is one round-trip per request.")
    console.print(f"\nsample read for entity 1 ({sample_key.hex()[:16]}...):")
    console.print(sample)
    console.print(f"absent key: {missing}; entity 49 is absent from t01: {miss_table}")
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump({"server_version": server_version, "entities": args.entities, "figures": figures}, fh, indent=2)
    return 0


# -- main -----------------------------------------------------------------------------------------

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_db, _init, _get, _demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgfeatures", description="Online feature serving on PostgreSQL.")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except PgFeaturesError as exc:
        console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
