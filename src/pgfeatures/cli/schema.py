"""``pgfeatures init``: create the schema and the feature tables; idempotent; exit 2 on drift."""

from __future__ import annotations

import argparse

from .common import EXIT_ERROR, Command, add_definitions, add_dsn, add_json, connect, load_registry
from .output import Output


def configure(p: argparse.ArgumentParser) -> None:
    add_dsn(p)
    add_definitions(p)
    p.add_argument("--print-sql", action="store_true", help="print the DDL instead of running it")
    add_json(p)


def run(args: argparse.Namespace, out: Output) -> int:
    from ..schema import apply_schema, ddl

    registry = load_registry(args.definitions)
    if args.print_sql:
        statements = [stmt.as_string(None) for stmt in ddl(registry)]
        if args.json:
            out.json({"statements": statements})
        else:
            for stmt in statements:
                print(stmt + ";", file=out.stdout)
        return 0
    with connect(args, "pgfeatures-init") as conn:
        report = apply_schema(conn, registry, raise_on_drift=False)
    if args.json:
        out.json({"ok": report.ok, "created": report.created, "unchanged": report.existing, "drift": report.drift})
    elif report.describe():
        out.say(report.describe())
    if not report.ok:
        out.say("schema drift: the tables above disagree with their definitions; nothing was changed for them "
                "(pgfeatures never alters a table: migrate it or correct the definition)", style="fail", err=args.json)
        return EXIT_ERROR
    return 0


COMMANDS = (Command("init", "create the schema and feature tables (idempotent; exit 2 and a report on drift)",
                    configure, run),)
