"""The ``pgfeatures bench*`` commands and ``pgfeatures proxy``, registered with the core's command line
through the ``pgfeatures.cli`` entry point group (pgfeatures-bench's pyproject): ``bench`` (reads at
0/2/20 ms round-trip), ``bench-http`` (the HTTP service against the library), ``bench-hot-path`` (the
public API against the same reads by hand), ``bench-serve-path`` (``serve`` against its floor), ``bench-load`` (the
write path), ``bench-schema`` (what the doctor's advice buys), ``bench-soak`` (``serve`` through faults)
and ``proxy`` (the latency-injecting TCP proxy).

The flags are turned into each benchmark's settings dataclass here: the benchmarks never see argparse.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from pgfeatures.cli.common import (
    CliError,
    Command,
    Flag,
    add_dsn,
    add_json,
    add_settings,
    connect,
    csv,
    dsn_of,
    dsn_with_credentials,
    given,
)
from pgfeatures.cli.output import Output

# Help for the BenchConfig fields (pgfeatures_bench.reads has no field metadata), and the flags
# whose names are not the field's.
BENCH_FLAGS = {
    "rtts_ms": Flag(
        "round-trips in ms, 0 = direct loopback, others through a latency proxy", option="--rtt", parse=csv(float)
    ),
    "jitter_ms": Flag("extra U(0, jitter) ms per round-trip through the proxy", option="--jitter"),
    "table_counts": Flag("table counts", option="--tables", parse=csv(int)),
    "strategies": Flag("strategies: sequential,pipeline,single,union,join,batch,parallel"),
    "requests": Flag("most timed requests per row and cell"),
    "min_requests": Flag("fewest timed requests per row and cell"),
    "row_seconds": Flag("time budget per row and cell (x3 for select1 and the default)"),
    "batch_size": Flag("keys per batch call"),
    "parallel": Flag("connections the parallel strategy splits tables across"),
    "clients": Flag("concurrent clients for throughput (empty to skip)", parse=csv(int)),
    "client_seconds": Flag("seconds per client count"),
    "client_modes": Flag("threads,async"),
    "instrument": Flag("strategies to break down into components (empty to skip)"),
    "explain_every": Flag("EXPLAIN (ANALYZE) twin every N instrumented requests"),
    "variants": Flag("variants of the default read: entities,ttl,pooler,unprepared (empty to skip)"),
    "materialized": Flag("measure a materialized feature service over every table against the same one unmaterialized"),
    "service_clients": Flag("async clients for the materialized-service throughput (empty to skip)", parse=csv(int)),
    "cold_entities": Flag("entities of the materialized-service cold-read test on a private cluster (0 to skip)"),
    "cold_requests": Flag("requests timed after each cold start"),
    "drop_os_cache": Flag(
        "also empty the OS page cache before each cold start (root only; affects the whole host: "
        "every process's cached files)"
    ),
    "redis_url": Flag("also measure the same data in Redis (e.g. redis://127.0.0.1:6379/0); skipped when absent"),
    "schema": Flag("schema of the demo tables (loaded if absent, reused if present)"),
    "entities": Flag("demo entities"),
    "sample": Flag("distinct entities the keys are drawn from"),
    "seed": Flag("seed of the data and of the key choice"),
}
DATA_FIELDS = ("schema", "entities", "sample", "seed")

S = TypeVar("S")


def settings_of(args: argparse.Namespace, settings: type[S]) -> S:
    """The settings dataclass from the parsed flags of the same names (every field has one; a repeated
    flag's list becomes the field's tuple)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(settings)}  # type: ignore[arg-type]
    return settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def configure_bench(p: argparse.ArgumentParser) -> None:
    from .reads import BenchConfig

    add_dsn(p)
    g = p.add_argument_group("what to measure (defaults: the reference run, about 2.5 minutes)")
    add_settings(g, BenchConfig, BENCH_FLAGS, skip=DATA_FIELDS)
    g.add_argument(
        "--quick",
        action="store_true",
        help="a ~2 min smoke run (108 s measured on 2 busy cores): loopback and 20 ms, 30 tables, short rows",
    )
    add_settings(p.add_argument_group("data"), BenchConfig, BENCH_FLAGS, only=DATA_FIELDS)
    o = p.add_argument_group("output")
    o.add_argument(
        "--save",
        default="pgfeatures-bench.json",
        metavar="FILE",
        help="save the results here, for --from-json (default pgfeatures-bench.json)",
    )
    o.add_argument("--report", metavar="FILE", help="write a self-contained HTML report with plots here")
    o.add_argument("--from-json", metavar="FILE", help="measure nothing: print (and --report) a saved result")
    add_json(o)


def run_bench(args: argparse.Namespace, out: Output) -> int:
    from . import reads
    from .report import write_report

    console = out.console()
    if args.from_json:
        result = reads.load(args.from_json)
    else:
        settings = given(args, reads.BenchConfig)
        config = reads.BenchConfig.quick(**settings) if args.quick else reads.BenchConfig(**settings)
        dsn = dsn_of(args)
        connect(args, "pgfeatures-bench", dsn).close()  # a down database fails here, with a clear message
        result = reads.run_benchmark(
            dsn_with_credentials(args, dsn), config, argv=["pgfeatures", *sys.argv[1:]], progress=console.print
        )
        reads.save(result, args.save)
    if args.json:
        out.json(result)
    else:
        reads.print_result(result, console)
    if not args.from_json:
        out.say(f"results saved to {args.save}")
    if args.report:
        out.say(f"report written to {write_report(result, args.report)}")
    return 0


def configure_bench_schema(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int, default=100_000, help="rows per table (default 100000)")
    p.add_argument("--requests", type=int, default=2000, help="timed requests per variant (default 2000)")
    p.add_argument("--tables", type=int, default=30, help="tables read by the first-request case (default 30)")
    p.add_argument("--rounds", type=int, default=5, help="restarts per first-request case (default 5)")
    p.add_argument(
        "--drop-os-cache",
        action="store_true",
        help="also measure with the OS page cache dropped (root only; affects the whole host)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the keys drawn (default 0)")
    add_json(p)


def run_bench_schema(args: argparse.Namespace, out: Output) -> int:
    from .schema_effects import SchemaBenchConfig, main

    figures = main(settings_of(args, SchemaBenchConfig), out.console())
    if args.json:
        out.json(figures)
    return 0


SOAK_FLAGS = {
    "requests": Flag("requests per phase (direct, then replica)"),
    "concurrency": Flag("concurrent HTTP clients"),
    "tables": Flag("feature tables (8 real features each)"),
    "entities": Flag("entities per table"),
    "outage": Flag("seconds the primary stays down in the restart and kill -9 faults"),
    "replica_down": Flag("seconds the replica stays down"),
    "pool_size": Flag("read connections of the service"),
    "seed": Flag("seed of the keys and passwords"),
}


def configure_bench_soak(p: argparse.ArgumentParser) -> None:
    from .soak import SoakConfig

    add_settings(p, SoakConfig, SOAK_FLAGS)
    add_json(p)


def run_bench_soak(args: argparse.Namespace, out: Output) -> int:
    from .soak import SoakConfig, print_report, run_soak

    console = out.console()
    report = run_soak(SoakConfig(**given(args, SoakConfig)), progress=lambda line: console.print(line, highlight=False))
    print_report(report, console)
    if args.json:
        out.json(report)
    return 0


def configure_proxy(p: argparse.ArgumentParser) -> None:
    add_dsn(p, credentials=False)  # the DSN only says where to forward: the proxy never logs in
    p.add_argument("--target", help="host:port to forward to (default: the host and port of --dsn)")
    p.add_argument("--listen", default="127.0.0.1:0", help="host:port to listen on (default 127.0.0.1:0, a free port)")
    p.add_argument(
        "--rtt", type=float, default=20.0, help="round-trip delay in ms, split evenly between directions (default 20)"
    )
    p.add_argument(
        "--jitter", type=float, default=0.0, help="extra U(0, jitter) ms per round-trip, split between directions"
    )
    p.add_argument(
        "--to-server-ms", type=float, help="one-way delay client -> server (overrides --rtt for that direction)"
    )
    p.add_argument(
        "--to-client-ms", type=float, help="one-way delay server -> client (overrides --rtt for that direction)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the jitter")


def run_proxy(args: argparse.Namespace, out: Output) -> int:
    from .harness.proxy import LatencyProxy, Link, dsn_target, parse_address, proxied_dsn, serve

    try:
        listen = parse_address(args.listen)
        dsn = None if args.target else dsn_of(args)
        target = parse_address(args.target) if args.target else dsn_target(dsn or "")
        half = args.jitter / 2
        to_server = Link(args.to_server_ms, half) if args.to_server_ms is not None else None
        to_client = Link(args.to_client_ms, half) if args.to_client_ms is not None else None
        proxy = LatencyProxy(
            target, args.rtt, args.jitter, listen=listen, to_server=to_server, to_client=to_client, seed=args.seed
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None

    def announce(line: str) -> None:
        print(line, file=out.stdout, flush=True)  # first line, machine-read by ProxyProcess
        if dsn and proxy.address:
            print(f"dsn: {proxied_dsn(dsn, proxy.address)}", file=out.stdout, flush=True)

    try:
        serve(proxy, announce)
    except OSError as exc:
        raise CliError(f"cannot listen on {args.listen}: {exc.strerror or exc}") from None
    return 0


def configure_bench_hot_path(p: argparse.ArgumentParser) -> None:
    from .hot_path import HotPathConfig

    add_dsn(p)
    add_settings(p, HotPathConfig)
    add_json(p)


def run_bench_hot_path(args: argparse.Namespace, out: Output) -> int:
    from . import hot_path

    return _show(
        hot_path.run(dsn_with_credentials(args), hot_path.HotPathConfig(**given(args, hot_path.HotPathConfig))),
        hot_path.report,
        args,
        out,
    )


def configure_bench_serve_path(p: argparse.ArgumentParser) -> None:
    from .serve_path import ServePathConfig

    add_dsn(p)
    add_settings(p, ServePathConfig)
    add_json(p)


def run_bench_serve_path(args: argparse.Namespace, out: Output) -> int:
    from . import serve_path

    try:
        config = serve_path.ServePathConfig(**given(args, serve_path.ServePathConfig))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return _show(serve_path.run(dsn_with_credentials(args), config), serve_path.report, args, out)


def _show(
    result: dict[str, Any], report: Callable[[dict[str, Any]], list[str]], args: argparse.Namespace, out: Output
) -> int:
    """A benchmark's result: one JSON document with ``--json``, else its report's lines."""
    if args.json:
        out.json(result)
    else:
        for line in report(result):
            out.say(line)
    return 0


HTTP_MODES = ("standard", "batch", "memory", "services")  # pgfeatures_bench.http.MODES, without importing it


def _http_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=2000, help="one-client latency: timed requests per variant")
    p.add_argument(
        "--concurrency", type=csv(int), default=(1, 8, 32), help="concurrent clients for the throughput runs"
    )
    p.add_argument("--seconds", type=float, default=1.0, help="length of one throughput round per variant")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds per concurrency level")
    p.add_argument("--pool-size", type=int, default=4, help="read connections (servers and library alike)")
    p.add_argument("--workers", type=int, default=1, help="server worker processes")
    p.add_argument("--window-us", type=int, default=0, help="coalescing window of the coalescing server (µs)")
    p.add_argument("--entities", type=int, default=100_000, help="demo entities keys are drawn from")
    p.add_argument("--seed", type=int, default=0, help="seed of the keys drawn (default 0)")
    p.add_argument(
        "--mode",
        choices=HTTP_MODES,
        default="standard",
        help="standard: latency, throughput, coalescing; batch: single-key latency alongside big batches; "
        "memory: server RSS around one huge batch; services: a materialized 30-table feature service "
        "against the same service unmaterialized (dict and vector output)",
    )
    p.add_argument(
        "--services-schema",
        default="bench_services",
        help="services mode: schema of its copy of the demo data and its two services (loaded and "
        "materialized once, then reused)",
    )
    p.add_argument("--batch-singles", type=int, default=8, help="batch mode: single-key clients")
    p.add_argument("--batch-keys", type=int, default=1000, help="batch mode: keys per batch of the batch client")
    p.add_argument("--memory-keys", type=int, default=100_000, help="memory mode: keys of the huge batch")
    p.add_argument(
        "--baseline-src",
        help="also run a server (coalescing off) from this source tree: a 'src' "
        "directory, e.g. of a checkout of main; variant 'baseline'",
    )
    p.add_argument(
        "--serve-flag",
        action="append",
        default=[],
        metavar="FLAG",
        help="batch/memory modes: an extra flag for the 'chunked' server, e.g. --serve-flag=--batch-chunk-keys=50",
    )


def configure_bench_http(p: argparse.ArgumentParser) -> None:
    add_dsn(p)
    _http_arguments(p)
    add_json(p)


def run_bench_http(args: argparse.Namespace, out: Output) -> int:
    from .http import HttpBenchConfig, main, report

    try:
        config = settings_of(args, HttpBenchConfig)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    # the servers it starts and its own stores take a DSN: the credential is asked for once, merged in
    figures = main(config, dsn_with_credentials(args))
    if args.json:
        out.json(figures)
    else:
        report(figures, config, out.console())
    return 0


def configure_bench_load(p: argparse.ArgumentParser) -> None:
    add_dsn(p)
    p.add_argument("--rows", type=int, default=1_000_000, help="rows per load (default 1000000)")
    p.add_argument("--features", type=int, default=8, help="real features in the loaded table (default 8)")
    p.add_argument("--read-tables", type=int, default=10, help="tables each read touches, the loaded one included")
    p.add_argument("--readers", type=int, default=1, help="reader processes (each one connection)")
    p.add_argument("--read-rate", type=float, default=1000.0, help="reads/s per reader process; 0: back to back")
    p.add_argument(
        "--seconds", type=float, default=8.0, help="idle read time, half before and half after the loads (default 8)"
    )
    p.add_argument("--schema", default="bench_load", help="scratch schema, dropped afterwards (default bench_load)")
    p.add_argument("--keep", action="store_true", help="keep the scratch schema")
    p.add_argument(
        "--part",
        choices=("all", "loads", "write-cost"),
        default="all",
        help="loads: throughput and reads during loads; write-cost: merges into a plain table vs a table of a "
        "materialized 30-table service, and live-update latency (default all)",
    )
    p.add_argument(
        "--service-tables", type=int, default=30, help="write-cost: tables of the materialized service (default 30)"
    )
    add_json(p)


def run_bench_load(args: argparse.Namespace, out: Output) -> int:
    from .load import run

    dsn = dsn_of(args)
    connect(args, "pgfeatures-bench-load", dsn).close()  # a down database fails here, with a clear message
    dsn = dsn_with_credentials(args, dsn)  # the benchmark takes a DSN: the credential is asked for once
    results: dict[str, object] = {}
    if args.part in ("all", "loads"):
        results = run(
            dsn,
            rows=args.rows,
            features=args.features,
            read_tables=args.read_tables,
            readers=args.readers,
            read_rate=args.read_rate,
            idle_seconds=args.seconds,
            schema=args.schema,
            keep=args.keep,
            console=out.console(),
        )
    if args.part in ("all", "write-cost"):
        from .write_cost import run as run_write_cost

        results["write_cost"] = run_write_cost(
            dsn,
            rows=args.rows,
            tables=args.service_tables,
            features=args.features,
            schema=f"{args.schema}_write",
            keep=args.keep,
            console=out.console(),
        )
    if args.json:
        out.json(results)
    return 0


# The commands, in the order ``pgfeatures --help`` lists them; the core finds this tuple through the
# ``pgfeatures.cli`` entry point group. "bench" in ``needs`` checks that the benchmarks' own dependencies
# (rich, redis, matplotlib...) import.
COMMANDS = (
    Command(
        "bench",
        "read latency per strategy, table count and round-trip; throughput; breakdown; report",
        configure_bench,
        run_bench,
        needs=("bench",),
    ),
    Command(
        "bench-http",
        "benchmark the HTTP service against the library (demo data)",
        configure_bench_http,
        run_bench_http,
        needs=("server", "bench"),
    ),
    Command(
        "bench-hot-path",
        "the public API against the same reads hand-written on a bare connection (issue 21's ratios)",
        configure_bench_hot_path,
        run_bench_hot_path,
        needs=("bench",),
    ),
    Command(
        "bench-serve-path",
        "pgfeatures serve's vector read against GET /healthz + the library's read, and a bare ASGI app",
        configure_bench_serve_path,
        run_bench_serve_path,
        needs=("server", "bench"),
    ),
    Command(
        "bench-load",
        "bulk-load throughput (rows/s) and read p99 idle vs during loads",
        configure_bench_load,
        run_bench_load,
        needs=("load", "bench"),
    ),
    Command(
        "bench-schema",
        "measure what the doctor's advice buys (private embedded cluster)",
        configure_bench_schema,
        run_bench_schema,
        needs=("bench", "embedded"),
    ),
    Command(
        "bench-soak",
        "a bounded load test of pgfeatures serve through restarts, kill -9, password rotation and a "
        "replica stop (private clusters)",
        configure_bench_soak,
        run_bench_soak,
        needs=("bench", "embedded"),
    ),
    Command(
        "proxy",
        "TCP proxy adding network latency (e.g. 20 ms round-trip) in front of PostgreSQL",
        configure_proxy,
        run_proxy,
    ),
)
