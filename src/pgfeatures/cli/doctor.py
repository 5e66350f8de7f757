"""``pgfeatures doctor`` (is the database set up for hot reads?) and ``pgfeatures warmup`` (load the cache)."""

from __future__ import annotations

import argparse
import dataclasses

from .common import (
    EXIT_CHECK_FAILED,
    CliError,
    Command,
    add_definitions,
    add_dsn,
    add_json,
    connect,
    dsn_with_credentials,
    load_registry,
)
from .output import Output


def _add_target(p: argparse.ArgumentParser) -> None:
    add_dsn(p)
    add_definitions(p)
    p.add_argument("--schema", help="schema of the feature tables (overrides the definitions' schema)")
    p.add_argument(
        "--hot-keys", metavar="FILE", help="file of 64-character hex keys, one per line ('#' comments allowed)"
    )
    add_json(p)


def _target(args: argparse.Namespace) -> tuple:
    from ..warmup import load_hot_keys

    registry = load_registry(args.definitions)
    if args.schema:
        registry = dataclasses.replace(registry, schema=args.schema)
    return registry, load_hot_keys(args.hot_keys) if args.hot_keys else []


DEFAULT_SAMPLE = 200  # doctor.materialized.DEFAULT_SAMPLE (not imported: --help stays light)


def configure_doctor(p: argparse.ArgumentParser) -> None:
    _add_target(p)
    p.add_argument("--verbose", "-v", action="store_true", help="list every passing table, not one line per check")
    p.add_argument(
        "--sample",
        type=int,
        default=DEFAULT_SAMPLE,
        metavar="N",
        help=f"keys compared per entity of each built materialized service (default {DEFAULT_SAMPLE}); "
        "a sample finds widespread drift, not a few changed keys nor an updated_at changed within the TTL",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="compare every serving row of each built materialized service with its tables, as stored "
        "(one statement per serving table; reads every row of the service's tables) instead of a sample",
    )


def run_doctor(args: argparse.Namespace, out: Output) -> int:
    from ..doctor import CHECKS, Status, diagnose

    if args.sample < 1:
        raise CliError(f"--sample must be at least 1, got {args.sample}")
    registry, hot_keys = _target(args)
    # diagnose takes a DSN (its connections and stores are its own): the provider is asked once, here
    report = diagnose(registry, dsn_with_credentials(args), hot_keys=hot_keys, sample=args.sample, full=args.full)
    code = EXIT_CHECK_FAILED if report.status is Status.FAIL else 0
    if args.json:
        out.json(report.as_dict())
        return code
    rows: list[list[str] | None] = []
    for check in CHECKS:
        findings = report.by_check(check)
        passing = [f for f in findings if f.status is Status.PASS]
        shown = findings if args.verbose or len(passing) < 2 else [f for f in findings if f.status is not Status.PASS]
        rows += [[check, f.subject, f.status.value, f.value, f.advice] for f in shown]
        if len(shown) < len(findings):
            others = "all" if len(passing) == len(findings) else "the other"
            tables = [f for f in passing if f.subject != "server"]
            noun = "services" if check == "materialized" else "tables"
            subject = f"{others} {len(tables)} {noun}" + (" + server" if len(tables) < len(passing) else "")
            rows.append([check, subject, "pass", f"e.g. {tables[0].value if tables else passing[0].value}", ""])
    services = sum(1 for s in registry.services.values() if s.materialize)
    extra = f", {services} materialized service(s)" if services else ""
    out.table(
        f"pgfeatures doctor: schema {registry.schema!r}, {len(registry.tables)} tables{extra}",
        ["check", "subject", "status", "measured", "advice"],
        rows,
        status="status",
        lines=True,
    )
    if report.fixes:
        out.say("fix (safe to run as-is):", style="bold")
        for statement in report.fixes:
            out.say(f"  {statement};")
    return code


def configure_warmup(p: argparse.ArgumentParser) -> None:
    _add_target(p)
    p.add_argument(
        "--method",
        choices=["auto", "prewarm", "read"],
        default="auto",
        help="auto: pg_prewarm when possible, else full index reads (default auto)",
    )


def run_warmup(args: argparse.Namespace, out: Output) -> int:
    from ..warmup import warmup

    registry, hot_keys = _target(args)
    with connect(args, "pgfeatures-warmup", timeout=10) as conn:
        report = warmup(conn, registry, hot_keys, method=args.method)
    if args.json:
        out.json(report.as_dict())
        return 0
    blocks = sum(w.blocks or 0 for w in report.warmed)
    loaded = (
        f"{blocks:,} blocks"
        if report.method == "pg_prewarm"
        else f"{sum(w.rows or 0 for w in report.warmed):,} rows read"
    )
    out.say(
        f"{report.method}: {len(report.warmed)} relations, {loaded}, {report.hot_keys:,} hot keys, "
        f"in {report.seconds:.2f}s"
    )
    if report.note:
        out.say(report.note)

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    out.say(
        f"buffer hit ratio of lookups ({report.before.places}): "
        f"before {pct(report.before.ratio)}, after {pct(report.after.ratio)}"
    )
    if not report.fits:
        out.say(
            f"the tables and indexes ({report.working_set_bytes / 2**20:,.0f} MB) exceed shared_buffers "
            f"({report.shared_buffers_bytes / 2**20:,.0f} MB): only part of them stays cached",
            style="warn",
        )
    if report.missing:
        out.say(f"missing tables (not warmed): {', '.join(report.missing)}", style="warn")
    return 0


COMMANDS = (
    Command(
        "doctor", "check the database is set up for hot reads (exit 1 when a check fails)", configure_doctor, run_doctor
    ),
    Command(
        "warmup",
        "load feature tables and indexes into the buffer cache, read hot keys, report hit ratios",
        configure_warmup,
        run_warmup,
    ),
)
