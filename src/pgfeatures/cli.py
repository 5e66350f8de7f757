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


# -- proxy ----------------------------------------------------------------------------------------


def _proxy(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("proxy", help="TCP proxy adding network latency (e.g. 20 ms round-trip) in front of PostgreSQL")
    add_dsn(p)
    p.add_argument("--target", help="host:port to forward to (default: the host and port of --dsn)")
    p.add_argument("--listen", default="127.0.0.1:0", help="host:port to listen on (default 127.0.0.1:0, a free port)")
    p.add_argument("--rtt", type=float, default=20.0, help="round-trip delay in ms, split evenly between directions (default 20)")
    p.add_argument("--jitter", type=float, default=0.0, help="extra U(0, jitter) ms per round-trip, split between directions")
    p.add_argument("--to-server-ms", type=float, help="one-way delay client -> server (overrides --rtt for that direction)")
    p.add_argument("--to-client-ms", type=float, help="one-way delay server -> client (overrides --rtt for that direction)")
    p.add_argument("--seed", type=int, default=0, help="seed of the jitter")
    p.set_defaults(func=cmd_proxy)


def cmd_proxy(args: argparse.Namespace) -> int:
    from .bench.proxy import LatencyProxy, Link, dsn_target, parse_address, proxied_dsn, serve

    try:
        listen = parse_address(args.listen)
        dsn = None if args.target else dsn_of(args)
        target = parse_address(args.target) if args.target else dsn_target(dsn or "")
        half = args.jitter / 2
        to_server = Link(args.to_server_ms, half) if args.to_server_ms is not None else None
        to_client = Link(args.to_client_ms, half) if args.to_client_ms is not None else None
        proxy = LatencyProxy(target, args.rtt, args.jitter, listen=listen, to_server=to_server, to_client=to_client, seed=args.seed)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2

    def announce(line: str) -> None:
        print(line, flush=True)  # first line, machine-read by ProxyProcess
        if dsn and proxy.address:
            print(f"dsn: {proxied_dsn(dsn, proxy.address)}", flush=True)

    try:
        serve(proxy, announce)
    except OSError as exc:
        console.print(f"[red]error:[/red] cannot listen on {args.listen}: {exc.strerror or exc}")
        return 2
    return 0


# -- serve / bench-http ---------------------------------------------------------------------------


def _serve(sub: argparse._SubParsersAction) -> None:
    from .server.config import CONFIG_FILE_ENV, SETTINGS, env_name, flag_name

    p = sub.add_parser(
        "serve", help="serve features over HTTP (settings: flags > PGFEATURES_<NAME> env > --config file > defaults)"
    )
    p.add_argument("--config", help=f"TOML file of settings (default: ${CONFIG_FILE_ENV})")
    for f in SETTINGS:
        if f.name == "dsn":
            add_dsn(p)
        elif f.name == "definitions":
            add_definitions(p)
        else:
            kind = argparse.BooleanOptionalAction if isinstance(f.default, bool) else "store"
            p.add_argument(flag_name(f.name), dest=f.name, action=kind, default=None,
                           help=f"{f.metadata['help']} (${env_name(f.name)}; default {f.default})")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from .connections import resolve_dsn
    from .server import load_config, run
    from .server.config import NAMES

    config = load_config({name: getattr(args, name) for name in NAMES}, config_file=args.config)
    registry = config.registry()  # a bad definitions file fails here, not in every worker
    config = config.replace(dsn=resolve_dsn(config.dsn))  # the embedded server starts once, here
    console.print(f"pgfeatures serve: http://{config.host}:{config.port} ({config.workers} worker(s), "
                  f"{len(registry.tables)} tables in schema {registry.schema!r}, coalescing "
                  f"{'on' if config.coalesce else 'off'})", highlight=False)
    run(config)
    return 0


def _bench_http(sub: argparse._SubParsersAction) -> None:
    from .bench.http import add_arguments

    p = sub.add_parser("bench-http", help="benchmark the HTTP service against the library (demo data)")
    add_dsn(p)
    add_arguments(p)
    p.set_defaults(func=cmd_bench_http)


def cmd_bench_http(args: argparse.Namespace) -> int:
    from .bench.http import main

    return main(args, dsn_of(args))


# -- doctor / warmup / bench-schema ---------------------------------------------------------------


def _add_cache_target(p: argparse.ArgumentParser) -> None:
    add_dsn(p)
    add_definitions(p)
    p.add_argument("--schema", help="schema of the feature tables (overrides the definitions' schema)")
    p.add_argument("--hot-keys", help="file of 64-character hex keys, one per line ('#' comments allowed)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _cache_target(args: argparse.Namespace) -> tuple[Registry, list[bytes]]:
    import dataclasses

    from .warmup import load_hot_keys

    registry = load_registry(args.definitions)
    if args.schema:
        registry = dataclasses.replace(registry, schema=args.schema)
    return registry, load_hot_keys(args.hot_keys) if args.hot_keys else []


def _doctor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check the database is set up for hot reads (exit 1 when a check fails)")
    _add_cache_target(p)
    p.add_argument("--verbose", "-v", action="store_true", help="list every passing table, not one line per check")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import CHECKS, Status, diagnose

    registry, hot_keys = _cache_target(args)
    report = diagnose(registry, dsn_of(args), hot_keys=hot_keys)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
        return 1 if report.status is Status.FAIL else 0
    colour = {Status.PASS: "green", Status.WARN: "yellow", Status.FAIL: "red"}
    table = Table(title=f"pgfeatures doctor: schema {registry.schema!r}, {len(registry.tables)} tables", show_lines=True)
    for col in ("check", "subject", "status", "measured", "advice"):
        table.add_column(col, overflow="fold")
    for check in CHECKS:
        findings = report.by_check(check)
        passing = [f for f in findings if f.status is Status.PASS]
        shown = findings if args.verbose or len(passing) < 2 else [f for f in findings if f.status is not Status.PASS]
        for f in shown:
            table.add_row(check, f.subject, f"[{colour[f.status]}]{f.status.value}[/]", f.value, f.advice)
        if len(shown) < len(findings):
            others = "all" if len(passing) == len(findings) else "the other"
            tables = [f for f in passing if f.subject != "server"]
            subject = f"{others} {len(tables)} tables" + (" + server" if len(tables) < len(passing) else "")
            table.add_row(check, subject, "[green]pass[/]", f"e.g. {tables[0].value if tables else passing[0].value}", "")
    console.print(table)
    if report.fixes:
        console.print("[bold]fix[/bold] (safe to run as-is):")
        for statement in report.fixes:
            console.print(f"  {statement};", markup=False, highlight=False)
    return 1 if report.status is Status.FAIL else 0


def _warmup(sub: argparse._SubParsersAction) -> None:
    from .warmup import Method

    p = sub.add_parser("warmup", help="load feature tables and indexes into the buffer cache, read hot keys, report hit ratios")
    _add_cache_target(p)
    p.add_argument("--method", choices=[m.value for m in Method], default="auto",
                   help="auto: pg_prewarm when possible, else full index reads (default auto)")
    p.set_defaults(func=cmd_warmup)


def cmd_warmup(args: argparse.Namespace) -> int:
    from .warmup import connect, warmup

    registry, hot_keys = _cache_target(args)
    with connect(dsn_of(args), "pgfeatures-warmup") as conn:
        report = warmup(conn, registry, hot_keys, method=args.method)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
        return 0
    blocks = sum(w.blocks or 0 for w in report.warmed)
    loaded = f"{blocks:,} blocks" if report.method == "pg_prewarm" else f"{sum(w.rows or 0 for w in report.warmed):,} rows read"
    console.print(f"{report.method}: {len(report.warmed)} relations, {loaded}, {report.hot_keys:,} hot keys, "
                  f"in {report.seconds:.2f}s", highlight=False)
    if report.note:
        console.print(report.note, markup=False)

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    console.print(f"buffer hit ratio of lookups ({report.before.places}): "
                  f"before {pct(report.before.ratio)}, after {pct(report.after.ratio)}", highlight=False)
    if not report.fits:
        console.print(f"[yellow]the tables and indexes ({report.working_set_bytes / 2**20:,.0f} MB) exceed shared_buffers "
                      f"({report.shared_buffers_bytes / 2**20:,.0f} MB): only part of them stays cached[/yellow]")
    if report.missing:
        console.print(f"[yellow]missing tables (not warmed): {', '.join(report.missing)}[/yellow]")
    return 0


def _bench_schema(sub: argparse._SubParsersAction) -> None:
    from .bench.schema_effects import add_arguments

    p = sub.add_parser("bench-schema", help="measure what the doctor's advice buys (private embedded cluster)")
    add_arguments(p)
    p.set_defaults(func=cmd_bench_schema)


def cmd_bench_schema(args: argparse.Namespace) -> int:
    from .bench.schema_effects import main

    return main(args)


# -- bench ----------------------------------------------------------------------------------------


def _bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="read latency per strategy, table count and round-trip; throughput; breakdown; report")
    add_dsn(p)
    g = p.add_argument_group("what to measure (defaults: the reference run, about 2.5 minutes)")
    g.add_argument("--rtt", help="round-trips in ms, 0 = direct loopback, others through a latency proxy (default 0,2,20)")
    g.add_argument("--jitter", type=float, help="extra U(0, jitter) ms per round-trip through the proxy (default 0)")
    g.add_argument("--tables", help="table counts (default 10,20,30)")
    g.add_argument("--strategies", help="sequential,pipeline,single,union,join,batch,parallel (default all)")
    g.add_argument("--requests", type=int, help="most timed requests per row and cell (default 1000)")
    g.add_argument("--min-requests", type=int, help="fewest timed requests per row and cell (default 5)")
    g.add_argument("--row-seconds", type=float, help="time budget per row and cell (default 0.5; x3 for select1 and the default)")
    g.add_argument("--batch-size", type=int, help="keys per batch call (default 100)")
    g.add_argument("--parallel", type=int, help="connections the parallel strategy splits tables across (default 3)")
    g.add_argument("--clients", help="concurrent clients for throughput (default 1,2,4,8; empty to skip)")
    g.add_argument("--client-seconds", type=float, help="seconds per client count (default 1)")
    g.add_argument("--client-modes", help="threads,async (default both)")
    g.add_argument("--instrument", help="strategies to break down into components (default single,pipeline; empty to skip)")
    g.add_argument("--explain-every", type=int, help="EXPLAIN (ANALYZE) twin every N instrumented requests (default 5)")
    g.add_argument("--variants", help="entities,ttl,pooler,unprepared: variants of the default read (default all; empty to skip)")
    g.add_argument("--redis-url", help="also measure the same data in Redis (e.g. redis://127.0.0.1:6379/0); skipped when absent")
    g.add_argument("--quick", action="store_true", help="a ~50 s smoke run: loopback and 20 ms, 30 tables, short rows")
    d = p.add_argument_group("data")
    d.add_argument("--schema", help="schema of the demo tables (default demo; loaded if absent, reused if present)")
    d.add_argument("--entities", type=int, help="demo entities (default 100000)")
    d.add_argument("--seed", type=int, help="seed of the data and of the key choice (default 0)")
    o = p.add_argument_group("output")
    o.add_argument("--json", dest="json_out", default="pgfeatures-bench.json", help="save results here (default pgfeatures-bench.json)")
    o.add_argument("--report", help="write a self-contained HTML report with plots here")
    o.add_argument("--from-json", help="measure nothing: print (and --report) a saved result")
    p.set_defaults(func=cmd_bench)


def _csv(text: str | None, kind: Callable[[str], object]) -> tuple | None:
    """A comma-separated option as a tuple (empty string: empty tuple; None: not given)."""
    if text is None:
        return None
    try:
        return tuple(kind(x.strip()) for x in text.split(",") if x.strip())
    except ValueError:
        raise PgFeaturesError(f"bad list {text!r}: expected comma-separated numbers") from None


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import reads
    from .bench.report import write_report

    if args.from_json:
        result = reads.load(args.from_json)
    else:
        given = {
            "rtts_ms": _csv(args.rtt, float), "jitter_ms": args.jitter, "table_counts": _csv(args.tables, int),
            "strategies": _csv(args.strategies, str), "requests": args.requests, "min_requests": args.min_requests,
            "row_seconds": args.row_seconds, "batch_size": args.batch_size, "parallel": args.parallel,
            "clients": _csv(args.clients, int), "client_seconds": args.client_seconds,
            "client_modes": _csv(args.client_modes, str), "instrument": _csv(args.instrument, str),
            "explain_every": args.explain_every, "redis_url": args.redis_url, "schema": args.schema,
            "variants": _csv(args.variants, str),
            "entities": args.entities, "seed": args.seed,
        }
        given = {k: v for k, v in given.items() if v is not None}
        config = reads.BenchConfig.quick(**given) if args.quick else reads.BenchConfig(**given)
        result = reads.run_benchmark(dsn_of(args), config, argv=["pgfeatures", *sys.argv[1:]], progress=console.print)
        reads.save(result, args.json_out)
    reads.print_result(result, console)
    if not args.from_json:
        console.print(f"results saved to {args.json_out}")
    if args.report:
        console.print(f"report written to {write_report(result, args.report)}")
    return 0


# -- load / bench-load ----------------------------------------------------------------------------


def _load(sub: argparse._SubParsersAction) -> None:
    # Options left unset keep LoadOptions' defaults; LoadOptions validates the values (and names the
    # valid ones), so building the parser does not import pyarrow.
    p = sub.add_parser("load", help="bulk-load Parquet/CSV/Arrow files into a feature table, atomically (merge or replace)")
    add_dsn(p)
    add_definitions(p)
    p.add_argument("table")
    p.add_argument("files", nargs="+", metavar="FILE", help="Parquet, CSV (header row) or Arrow IPC files, loaded together")
    p.add_argument("--mode", metavar="merge|replace",
                   help="merge: upsert the rows (default); replace: the table becomes exactly these rows")
    p.add_argument("--key-column", help="column holding the entity key (default: hashkey)")
    p.add_argument("--hash-keys", action="store_true", default=None, help="the key column holds natural ids: hash them with SHA-256")
    p.add_argument("--on-duplicate", metavar="last|reject", help="a key seen twice: the last row wins (default), or the load fails")
    p.add_argument("--nan", metavar="reject|null", help="NaN values: fail the load (default), or load them as NULL")
    p.add_argument("--on-invalid", metavar="abort|skip",
                   help="invalid values: fail the load (default), or skip their rows (counted as rejected)")
    p.add_argument("--partial", action="store_true", default=None, help="merge only the feature columns present")
    p.add_argument("--ignore-extra", action="store_true", default=None, help="ignore columns the table does not have")
    p.add_argument("--strategy", metavar="auto|upsert|rebuild",
                   help="merge by upsert or by rebuild-and-swap (default auto: rebuild for large loads)")
    p.add_argument("--vacuum", metavar="auto|always|never", help="after the load (default auto: where it pays)")
    p.add_argument("--format", metavar="parquet|csv|arrow", help="file format (default: from the extension)")
    p.add_argument("--updated-at", type=int, help="epoch seconds for rows without updated_at (default: the load time)")
    p.add_argument("--batch-rows", type=int, help="rows per COPY batch (default 65536)")
    p.add_argument("--lock-timeout", type=float, help="seconds to wait for the table lock (default 10)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_load)


LOAD_OPTIONS = ("mode", "key_column", "hash_keys", "on_duplicate", "nan", "on_invalid", "partial", "ignore_extra",
                "strategy", "vacuum", "format", "updated_at", "batch_rows", "lock_timeout")


def cmd_load(args: argparse.Namespace) -> int:
    import psycopg

    from .connections import WRITE_APP, connection_kwargs
    from .load import load, progress_bar

    registry = load_registry(args.definitions)
    options = {name: getattr(args, name) for name in LOAD_OPTIONS if getattr(args, name) is not None}
    with psycopg.connect(dsn_of(args), **connection_kwargs(WRITE_APP, 10)) as conn:
        with progress_bar(console, enabled=not args.quiet) as progress:
            summary = load(conn, registry, args.table, args.files, progress=progress, **options)
    console.print(summary.describe(), markup=False, highlight=False)
    return 0


def _bench_load(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-load", help="bulk-load throughput (rows/s) and read p99 idle vs during loads")
    add_dsn(p)
    p.add_argument("--rows", type=int, default=1_000_000, help="rows per load (default 1000000)")
    p.add_argument("--features", type=int, default=8, help="real features in the loaded table (default 8)")
    p.add_argument("--read-tables", type=int, default=10, help="tables each read touches, the loaded one included")
    p.add_argument("--readers", type=int, default=1, help="reader processes (each one connection)")
    p.add_argument("--read-rate", type=float, default=1000.0, help="reads/s per reader process; 0: back to back")
    p.add_argument("--seconds", type=float, default=8.0, help="idle read time, half before and half after the loads (default 8)")
    p.add_argument("--schema", default="bench_load", help="scratch schema, dropped afterwards (default bench_load)")
    p.add_argument("--keep", action="store_true", help="keep the scratch schema")
    p.add_argument("--json", dest="json_out", help="also write the figures to this JSON file")
    p.set_defaults(func=cmd_bench_load)


def cmd_bench_load(args: argparse.Namespace) -> int:
    from .bench.load import run

    return run(dsn_of(args), rows=args.rows, features=args.features, read_tables=args.read_tables, readers=args.readers,
               read_rate=args.read_rate, idle_seconds=args.seconds, schema=args.schema, keep=args.keep,
               json_out=args.json_out, console=console)


# -- main -----------------------------------------------------------------------------------------

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_db, _init, _get, _demo, _proxy, _serve, _bench_http,
                                                             _doctor, _warmup, _bench_schema, _bench]
COMMANDS += [_load, _bench_load]


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
