"""``pgfeatures init`` (create the schema, the feature tables and the read functions; report what fits,
what drifted and which materialized services need building) and ``pgfeatures materialize SERVICE``
(build a materialized service's serving rows online)."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .common import EXIT_ERROR, CliError, Command, add_definitions, add_dsn, add_json, connect, load_registry
from .output import Output

if TYPE_CHECKING:
    import psycopg

    from ..definitions import Registry
    from ..schema import SchemaReport


def configure(p: argparse.ArgumentParser) -> None:
    add_dsn(p)
    add_definitions(p)
    p.add_argument(
        "--print-sql", action="store_true", help="print the DDL (tables and read functions) instead of running it"
    )
    p.add_argument(
        "--no-functions",
        dest="functions",
        action="store_false",
        help="do not create the PL/pgSQL read functions (used behind a transaction-mode pooler)",
    )
    add_json(p)


def _key(table: Any) -> str:
    return f"{table.key_column} {table.entity.live_type}"


def create_functions(conn: psycopg.Connection, registry: Registry) -> dict[str, Any]:
    """Create the missing PL/pgSQL read functions of ``registry`` (``reader.functions``): what a store
    behind a transaction-mode pooler reads through. Each is named after a hash of its statement, so
    one that exists is the same function. Returns ``{"total", "created", "present", "error"}``; a
    refused CREATE (no privilege on the schema) is reported in ``error``, not raised."""
    import psycopg

    from ..reader.functions import EXISTING_FUNCTIONS, registry_functions
    from ..schema import ddl_lock

    functions = list({f.name: f for f in registry_functions(registry)}.values())
    result: dict[str, Any] = {"total": len(functions), "created": 0, "present": 0, "error": None}
    try:
        with conn.transaction():
            conn.execute(*ddl_lock(registry.schema))  # two inits must not CREATE OR REPLACE the same function at once
            cur = psycopg.RawCursor(conn)
            cur.execute(EXISTING_FUNCTIONS, (registry.schema, [f.name for f in functions]), prepare=False)
            existing = {row[0] for row in cur.fetchall()}
            for f in functions:
                if f.name in existing:
                    result["present"] += 1
                else:
                    conn.execute(f.create, prepare=False)
                    result["created"] += 1
    except psycopg.errors.InsufficientPrivilege as exc:
        result.update(
            created=0,
            error=f"cannot create the read functions: {str(exc).strip()} (needed only behind a "
            "transaction-mode pooler: run pgfeatures init as the schema's owner)",
        )
    return result


def _describe(report: SchemaReport, registry: Registry) -> list[str]:
    lines = []
    if report.created:
        lines.append(f"created: {', '.join(report.created)}")
    for name in report.existing:
        table = registry.tables[name]
        lines.append(
            f"unchanged: {name} (the existing table fits its definition: key {_key(table)}, "
            f"{len(table.features)} feature(s), updated_at)"
        )
    for name, problems in report.drift.items():
        lines.extend(f"DRIFT {name}: {p}" for p in problems)
    return lines


def run(args: argparse.Namespace, out: Output) -> int:
    from ..materialize.build import states
    from ..reader.functions import registry_functions
    from ..schema import apply_schema, ddl

    registry = load_registry(args.definitions)
    if args.print_sql:
        statements = [stmt.as_string(None) for stmt in ddl(registry)]
        if args.functions:
            statements += [f.create.as_string(None) for f in {f.name: f for f in registry_functions(registry)}.values()]
        if args.json:
            out.json({"statements": statements})
        else:
            for stmt in statements:
                print(stmt + ";", file=out.stdout)
        return 0
    with connect(args, "pgfeatures-init") as conn:
        report = apply_schema(conn, registry, raise_on_drift=False)
        if not args.functions:
            functions: dict[str, Any] = {
                "total": 0,
                "created": 0,
                "present": 0,
                "error": None,
                "skipped": "--no-functions",
            }
        elif report.drift:
            functions = {
                "total": len(registry_functions(registry)),
                "created": 0,
                "present": 0,
                "error": None,
                "skipped": "schema drift: the read functions read every table",
            }
        else:
            functions = create_functions(conn, registry)
        found = states(conn, registry) if any(s.materialize for s in registry.services.values()) else {}
    services = {name: s.state for name, s in found.items()}
    to_build = {name: state for name, state in services.items() if state != "built"}
    actions = [
        f"pgfeatures materialize {name}" + (f" -d {args.definitions}" if args.definitions else "") for name in to_build
    ]
    if args.json:
        tables = {}
        for name, table in registry.tables.items():
            state = "created" if name in report.created else "drift" if name in report.drift else "fits"
            tables[name] = {"state": state, "key": _key(table), "problems": report.drift.get(name, [])}
        out.json(
            {
                "ok": report.ok,
                "created": report.created,
                "unchanged": report.existing,
                "fits": report.existing,
                "drift": report.drift,
                "tables": tables,
                "functions": functions,
                "services": services,
                "service_reasons": {name: s.reason for name, s in found.items() if s.reason},
                "actions": actions,
            }
        )
    else:
        for line in _describe(report, registry):
            out.say(line)
        if functions.get("skipped"):
            out.say(f"read functions: not created ({functions['skipped']})")
        elif functions["error"]:
            out.say(f"read functions: {functions['error']}", style="warn")
        else:
            out.say(
                f"read functions (for transaction-mode poolers): {functions['created']} created, "
                f"{functions['present']} already present, of {functions['total']}"
            )
        for name, state in services.items():
            if state == "built":
                out.say(f"service {name}: serving rows built")
    for (name, state), action in zip(to_build.items(), actions):
        why = state if state == "missing" else f"{state} ({found[name].reason})"
        out.say(
            f"service {name}: serving rows {why}; it is read table by table until you run: {action}",
            style="warn",
            err=args.json,
        )
    if not report.ok:
        where = f" -d {args.definitions}" if args.definitions else ""
        out.say(
            "schema drift: the tables above disagree with their definitions; init changed nothing for them. "
            f"`pgfeatures plan{where}` shows the change, `pgfeatures apply{where}` makes it online",
            style="fail",
            err=args.json,
        )
        return EXIT_ERROR
    return 0


# -- materialize ----------------------------------------------------------------------------------


def configure_materialize(p: argparse.ArgumentParser) -> None:
    add_dsn(p)
    add_definitions(p)
    p.add_argument("service", help="a feature service declared materialize = true")
    p.add_argument(
        "--lock-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the SHARE lock on the service's tables (writers wait while it "
        "builds; readers never do) (default 10)",
    )
    add_json(p)


def _check_tables(conn: psycopg.Connection, registry: Registry, service: str, source: str | None) -> None:
    """Raise SchemaDriftError (naming the fix) when a table the service reads is missing or differs."""
    import psycopg

    from ..schema import CATALOG_QUERY, check_catalog, drift_error

    names = list(dict.fromkeys(t.name for t, _ in registry.service(service).resolve(registry)))
    cur = psycopg.RawCursor(conn)
    cur.execute(CATALOG_QUERY, (registry.schema, names), prepare=False)
    checks = check_catalog(registry, cur.fetchall())
    if any(c.breaking for c in checks.values()):
        raise drift_error(registry, checks, source)


@contextlib.contextmanager
def _steps(out: Output, title: str) -> Iterator[Callable[[str], None]]:
    """Each step of a long operation as a line on stderr: with rich, a spinner showing the current
    step and a timed line per step; without it, plain lines."""
    if not out.have_rich:
        out.note(title)
        yield lambda step: out.note(f"  {step}")
        return
    console = out.console(err=True)
    with console.status(title) as spinner:

        def step(text: str) -> None:
            console.log(text)
            spinner.update(f"{title}: {text}")

        yield step


def run_materialize(args: argparse.Namespace, out: Output) -> int:
    import psycopg

    from ..materialize.build import materialize, status

    registry = load_registry(args.definitions)
    svc = registry.service(args.service)  # UnknownServiceError names the valid services
    if not svc.materialize:
        where = f" in {args.definitions}" if args.definitions else ""
        built = [n for n, s in registry.services.items() if s.materialize]
        raise CliError(
            f"service {svc.name!r} is not declared materialize = true: add materialize = true to [services.{svc.name}]{where} "
            f"to keep serving rows for it (materialized services: {', '.join(built) or 'none'})"
        )
    if args.lock_timeout <= 0:
        raise CliError(f"--lock-timeout must be positive, got {args.lock_timeout:g}")
    with connect(args, "pgfeatures-materialize", timeout=10) as conn:
        _check_tables(conn, registry, svc.name, args.definitions)
        with _steps(out, f"materializing {svc.name}") as step:
            try:
                summary = materialize(conn, registry, svc.name, progress=step, lock_timeout=args.lock_timeout)
            except psycopg.errors.LockNotAvailable:
                raise CliError(
                    f"could not lock the tables of {svc.name} within {args.lock_timeout:g}s: a long write or "
                    "load holds them; nothing changed. Retry, or raise --lock-timeout"
                ) from None
        state = status(conn, registry).get(svc.name)
    if args.json:
        out.json({"service": svc.name, "rows": summary.rows, "seconds": round(summary.seconds, 3), "state": state})
    else:
        out.say(summary.describe())
        out.say(f"serving rows of {svc.name}: {state}; writes keep them in step from now on (triggers)")
    return 0


COMMANDS = (
    Command(
        "init",
        "create the schema, feature tables and read functions (idempotent; exit 2 and a report on drift)",
        configure,
        run,
    ),
    Command(
        "materialize",
        "build a materialized feature service's serving rows, online (readers never wait)",
        configure_materialize,
        run_materialize,
    ),
)
