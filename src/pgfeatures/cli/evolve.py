"""``pgfeatures plan`` (what differs between the definitions and the database, as prose and SQL) and
``pgfeatures apply`` (make it so: online, in one transaction; destructive changes only when asked)."""

from __future__ import annotations

import argparse

from .common import EXIT_CHECK_FAILED, EXIT_OK, Command, add_definitions, add_dsn, add_json, connect, load_registry
from .output import Output


def _common(p: argparse.ArgumentParser) -> None:
    add_dsn(p)
    add_definitions(p)
    p.add_argument(
        "--allow-destructive",
        action="store_true",
        help="also make destructive changes: drop columns that are not in the definitions, alter columns of "
        "another type, drop the tables named with --drop-table (without it they are listed, not made)",
    )
    p.add_argument(
        "--drop-table",
        action="append",
        default=[],
        metavar="TABLE",
        help="drop this table of the schema, which the definitions no longer declare (repeatable; needs "
        "--allow-destructive)",
    )
    p.add_argument(
        "--drop-service",
        action="append",
        default=[],
        metavar="SERVICE",
        help="drop the serving rows (and triggers) of this materialized service, which the definitions do not "
        "declare (another definition file's are kept unless named; repeatable)",
    )
    add_json(p)


def configure_plan(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--no-sql", dest="sql", action="store_false", help="the changes in words only, without their SQL")


def configure_apply(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument(
        "--lock-timeout",
        type=float,
        default=5.0,
        help="seconds to wait for each lock a change needs (a long transaction on a table blocks it); on "
        "timeout nothing is changed and the error names who holds the lock (default 5)",
    )


RELOAD_HINT = (
    "running servers serve the new definitions once reloaded: `kill -HUP <serve pid>`, or POST "
    "/v1/admin/reload with the token; a library store: store.reload(definitions)"
)


def run_plan(args: argparse.Namespace, out: Output) -> int:
    from ..evolve.apply import plan_changes
    from ..evolve.plan import describe

    registry = load_registry(args.definitions)
    with connect(args, "pgfeatures-plan") as conn:
        found = plan_changes(
            conn,
            registry,
            allow_destructive=args.allow_destructive,
            drop_tables=args.drop_table,
            drop_services=args.drop_service,
        )
    if args.json:
        out.json({"fingerprint": registry.fingerprint, **found.to_dict()})
        return EXIT_OK
    for line in describe(found, statements=args.sql):
        out.say(line)
    if not found.empty:
        where = f" -d {args.definitions}" if args.definitions else ""
        extra = " --allow-destructive" if args.allow_destructive else ""
        out.say(f"to make these changes: pgfeatures apply{where}{extra}", err=True)
    return EXIT_OK


def run_apply(args: argparse.Namespace, out: Output) -> int:
    from ..evolve.apply import apply

    registry = load_registry(args.definitions)
    with connect(args, "pgfeatures-apply", timeout=10) as conn:
        result = apply(
            conn,
            registry,
            allow_destructive=args.allow_destructive,
            drop_tables=args.drop_table,
            drop_services=args.drop_service,
            lock_timeout=args.lock_timeout,
            progress=None if args.json else (lambda m: out.note(m)),
        )
    # Changes left out (destructive ones without --allow-destructive): the database still differs from the
    # definitions, so the command says so first and ends with EXIT_CHECK_FAILED, for scripts and CI.
    left_out = len(result.plan.blocked)
    if args.json:
        out.json({"fingerprint": registry.fingerprint, **result.to_dict()})
        return EXIT_CHECK_FAILED if left_out else EXIT_OK
    if result.plan.empty and left_out:
        out.say(f"nothing applied: {left_out} change(s) left out, they need --allow-destructive (below)")
    elif result.plan.empty:
        out.say("nothing to change: the database matches the definitions")
    else:
        made = [c for c in result.plan.changes if c.kind != "note"]
        out.say(
            f"applied {len(made)} change(s) in {result.seconds:.2f}s (readers waited at most "
            f"{result.switch_seconds * 1000:.0f} ms, for the final switch)"
        )
        for name, rows in result.rows.items():
            out.say(f"  built {name}: {rows:,} rows")
        for name in result.dropped_serving:
            out.say(f"  dropped serving rows {name}")
    for change in result.plan.notes:
        out.say(f"= {change.prose}")
    if not result.plan.empty:
        if left_out:
            out.say(f"{left_out} change(s) left out: they need --allow-destructive (above)")
        out.say(RELOAD_HINT, err=True)
    return EXIT_CHECK_FAILED if left_out else EXIT_OK


COMMANDS = (
    Command(
        "plan",
        "what differs between the definitions and the database: the changes `apply` would make, "
        "as prose and SQL (changes nothing)",
        configure_plan,
        run_plan,
    ),
    Command(
        "apply",
        "make the database match the definitions, online and in one transaction (additive changes; "
        "destructive ones with --allow-destructive)",
        configure_apply,
        run_apply,
    ),
)
