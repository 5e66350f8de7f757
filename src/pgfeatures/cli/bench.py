"""``pgfeatures bench`` (reads at 0/2/20 ms round-trip), ``bench-schema`` (what the doctor's advice
buys) and ``proxy`` (the latency-injecting TCP proxy)."""

from __future__ import annotations

import argparse
import sys

from .common import (
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
from .output import Output

# Help for the BenchConfig fields (pgfeatures.bench.reads has no field metadata), and the flags
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


def configure_bench(p: argparse.ArgumentParser) -> None:
    from ..bench.reads import BenchConfig

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
    from ..bench import reads
    from ..bench.report import write_report

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
    from ..bench.schema_effects import add_arguments

    add_arguments(p)
    add_json(p)


def run_bench_schema(args: argparse.Namespace, out: Output) -> int:
    from ..bench.schema_effects import main

    figures = main(args, out.console())
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
    from ..bench.soak import SoakConfig

    add_settings(p, SoakConfig, SOAK_FLAGS)
    add_json(p)


def run_bench_soak(args: argparse.Namespace, out: Output) -> int:
    from ..bench.soak import SoakConfig, print_report, run_soak

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
    from ..bench.proxy import LatencyProxy, Link, dsn_target, parse_address, proxied_dsn, serve

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


COMMANDS = (
    Command(
        "bench",
        "read latency per strategy, table count and round-trip; throughput; breakdown; report",
        configure_bench,
        run_bench,
        needs=("bench",),
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
