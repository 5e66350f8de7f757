"""``pgfeatures tables``: every feature table (entity, features, TTL, rows, age of the newest row) and
every feature service (materialized: built, stale or missing), from ``pgfeatures.inventory``."""

from __future__ import annotations

import argparse

from .common import CliError, Command, add_definitions, add_dsn, add_json, connect, load_registry
from .output import Output


def configure(p: argparse.ArgumentParser) -> None:
    add_dsn(p)
    add_definitions(p)
    p.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        help="seconds each table's max(updated_at) may take (it scans a table without an index on "
        "updated_at); a table that takes longer is reported as unknown (default 2)",
    )
    p.add_argument(
        "--no-newest", dest="newest", action="store_false", help="skip the age of the newest row (catalog reads only)"
    )
    add_json(p)


def age(seconds: float | None) -> str:
    """``42s``, ``5m 3s``, ``3h 20m``, ``2d 4h`` (negative: a row stamped in the server's future)."""
    if seconds is None:
        return "unknown"
    if seconds < 0:
        return f"{-seconds:,.0f}s in the future"
    s = int(seconds)
    for size, unit, sub, subunit in ((86400, "d", 3600, "h"), (3600, "h", 60, "m"), (60, "m", 1, "s")):
        if s >= size:
            rest = (s % size) // sub
            return f"{s // size}{unit}" + (f" {rest}{subunit}" if rest else "")
    return f"{seconds:.0f}s"


def run(args: argparse.Namespace, out: Output) -> int:
    from ..definitions import format_duration
    from ..inventory import services, tables

    if args.timeout <= 0:
        raise CliError(f"--timeout must be positive, got {args.timeout:g}")
    registry = load_registry(args.definitions)
    with connect(args, "pgfeatures-tables") as conn:
        found = tables(conn, registry, timeout=args.timeout, newest=args.newest)
        offered = services(conn, registry)
    if args.json:
        out.json(
            {
                "schema": registry.schema,
                "tables": [t.as_dict() for t in found],
                "services": [s.as_dict() for s in offered],
            }
        )
        return 0
    rows = []
    for t in found:
        features = ", ".join(
            f"{f.name} {f.type}" + ("" if f.default is None else f"={f.default!r}") for f in t.features
        )
        if not t.exists:
            newest, count = "table missing: pgfeatures init", "-"
        else:
            count = "unknown" if t.rows is None else f"{t.rows:,}" + ("" if t.rows_source == "count" else " (est.)")
            newest = age(t.newest_age) if t.newest_age is not None else (t.newest_note or "not measured")
        rows.append(
            [
                t.name,
                f"{t.entity} ({t.key_column} {t.key_type})",
                features,
                "-" if t.ttl is None else format_duration(t.ttl),
                count,
                newest,
                ", ".join(t.services) or "-",
            ]
        )
    out.table(
        f"pgfeatures tables: schema {registry.schema!r}",
        ["table", "entity (key)", "features", "ttl", "rows", "newest row", "services"],
        rows,
        right=["rows"],
    )
    if offered:
        srows = []
        for s in offered:
            state = "not materialized" if not s.materialize else s.state or "unknown"
            if s.state in ("missing", "stale"):
                state += f": pgfeatures materialize {s.name}"
            ttls = ", ".join(f"{t} {'-' if ttl is None else format_duration(ttl)}" for t, ttl in s.table_ttls.items())
            srows.append(
                [
                    s.name,
                    str(len(s.features)),
                    ", ".join(s.tables),
                    ttls + (" (override)" if s.ttl_override else ""),
                    s.version or "-",
                    state,
                ]
            )
        out.table(
            "feature services",
            ["service", "features", "tables", "ttl per table", "version", "serving rows"],
            srows,
            right=["features"],
        )
    return 0


COMMANDS = (
    Command(
        "tables",
        "list the feature tables (entity, features, ttl, rows, age of the newest row) and "
        "services (materialized: built, stale or missing)",
        configure,
        run,
    ),
)
