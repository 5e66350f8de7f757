"""``pgfeatures load`` (atomic bulk loads) and ``pgfeatures expire`` (retention: rows past their ttl
deleted). Their benchmark, ``bench-load``, comes with pgfeatures-bench."""

from __future__ import annotations

import argparse
import dataclasses

from .common import (
    CliError,
    Command,
    Flag,
    add_definitions,
    add_dsn,
    add_json,
    add_settings,
    connect,
    given,
    load_registry,
)
from .output import Output


def _event_time_text(text: str) -> int | float | str:
    """``--updated-at``: epoch seconds when a number, else the text (ISO 8601, checked by the load)."""
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return text


# Help for the LoadOptions fields (pgfeatures.load, which has no field metadata). A field missing
# here still gets its flag; tests/test_cli.py fails until it has help. An entry for a field
# LoadOptions does not have adds no flag.
LOAD_FLAGS = {
    "mode": Flag("merge: upsert the rows; replace: the table becomes exactly these rows"),
    "key_column": Flag("column holding the entity key"),
    "hash_keys": Flag("the key column holds natural ids: hash them with SHA-256"),
    "on_duplicate": Flag(
        "a key seen twice: the row with the newest updated_at wins (equal: the later row), "
        "the last row wins, or the load fails",
        metavar="newest|last|reject",
    ),
    "nan": Flag(
        "NaN values of real/double precision columns: fail the load, or load them as NULL (NaN in a list or an embedding always fails)"
    ),
    "inf": Flag(
        "±Infinity in real/double precision columns: fail the load, or load them as they are "
        '(JSON answers carry them as "Infinity"/"-Infinity")'
    ),
    "on_invalid": Flag("invalid values: fail the load, or skip their rows (counted as rejected)"),
    "partial": Flag("merge only the feature columns present (the others keep their values)"),
    "ignore_extra": Flag("ignore source columns the table does not have"),
    "strategy": Flag("merge by upsert or by rebuild-and-swap (auto: rebuild for large loads)"),
    "vacuum": Flag("VACUUM after the load (auto: where it pays, for index-only scans)"),
    "updated_at": Flag(
        "event time of rows without one: ISO 8601 with a zone, or epoch seconds (default: the load's "
        "transaction time on the database server)",
        parse=_event_time_text,
    ),
    "event_time_unit": Flag(
        "unit of epoch numbers in the updated_at column and timestamp features: s, ms or us", metavar="s|ms|us"
    ),
    "event_time_zone": Flag(
        "time zone of updated_at and timestamp-feature values without one (timestamps without a zone, ISO "
        "strings without an offset), e.g. UTC; default: such values are refused",
        metavar="ZONE",
    ),
    "max_future_skew": Flag(
        "seconds an updated_at may be ahead of the database server's clock; rows further "
        "ahead are invalid (see --on-invalid)",
        metavar="SECONDS",
    ),
    "format": Flag("file format (default: from the extension)", metavar="parquet|csv|arrow"),
    "require_checksums": Flag(
        "refuse, before loading anything, a file that is not page-checksummed throughout "
        "(Parquet written without page checksums, pyarrow's default; CSV; Arrow IPC): damage "
        "in it that still decodes could not be detected"
    ),
    "batch_rows": Flag("rows per COPY batch"),
    "lock_timeout": Flag("seconds to wait for the table lock"),
    # LoadOptions.overwrite_newer (newest wins in bulk loads): the flag appears with the field.
    "overwrite_newer": Flag(
        "write every loaded row, even where the stored row is newer (a larger updated_at); "
        "default: newest wins, the newer stored row is kept"
    ),
}


def configure_load(p: argparse.ArgumentParser) -> None:
    # The flags come from LoadOptions itself (imported with the command, never for --help of
    # another one); LoadOptions validates the values and names the valid ones.
    from ..load import LoadOptions

    add_dsn(p)
    add_definitions(p)
    p.add_argument("table")
    p.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="Parquet, CSV (header row; lists and embeddings as JSON arrays, times RFC 3339 with a zone) or Arrow "
        "IPC files, loaded together",
    )
    add_settings(p, LoadOptions, LOAD_FLAGS)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    add_json(p)


def run_load(args: argparse.Namespace, out: Output) -> int:
    from ..connections import WRITE_APP
    from ..load import LoadOptions, load, progress_bar

    registry = load_registry(args.definitions)
    options = given(args, LoadOptions)
    # A bar only for a person at a terminal: a pipe or a CI log would get every frame of it.
    show = not args.quiet and out.have_rich and out.stderr_is_terminal
    with connect(args, WRITE_APP, timeout=10) as conn:
        with progress_bar(out.console(err=True) if show else None, enabled=show) as progress:
            summary = load(conn, registry, args.table, args.files, progress=progress, **options)
    if args.json:
        out.json({**dataclasses.asdict(summary), "rows_per_second": summary.rows_per_second})
    else:
        out.say(summary.describe())
    return 0


def _duration(text: str) -> float:
    """``--older-than`` / ``--grace``: ``"12h"``, ``"7d"``, ``"3600s"`` or seconds."""
    from ..definitions import parse_duration
    from ..errors import DefinitionError

    try:
        return 0.0 if text.strip() in ("0", "0s") else float(parse_duration(text, "duration"))
    except DefinitionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def configure_expire(p: argparse.ArgumentParser) -> None:
    add_dsn(p)
    add_definitions(p)
    p.add_argument(
        "--table",
        "-t",
        action="append",
        dest="tables",
        metavar="TABLE",
        help="expire only this table (repeatable; default: every table)",
    )
    p.add_argument(
        "--older-than",
        type=_duration,
        metavar="DURATION",
        help="delete rows older than this (e.g. 30d) instead of the table's ttl plus --grace; also for "
        "tables without a ttl",
    )
    p.add_argument(
        "--grace",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="kept beyond the ttl (default 1h): rows are expired at read from their ttl on",
    )
    p.add_argument(
        "--batch-rows", type=int, default=None, metavar="N", help="rows deleted per transaction (default 5000)"
    )
    p.add_argument("--pause", type=float, default=0.0, metavar="SECONDS", help="pause between batches (default 0)")
    p.add_argument(
        "--no-vacuum",
        dest="vacuum",
        action="store_false",
        help="no VACUUM after a run that deleted 10%% or more of a table",
    )
    add_json(p)


def run_expire(args: argparse.Namespace, out: Output) -> int:
    from ..retention import DEFAULT_BATCH_ROWS, DEFAULT_GRACE, expire

    registry = load_registry(args.definitions)
    batch_rows = DEFAULT_BATCH_ROWS if args.batch_rows is None else args.batch_rows
    grace = DEFAULT_GRACE if args.grace is None else args.grace
    if batch_rows < 1 or args.pause < 0:
        raise CliError("--batch-rows must be at least 1 and --pause at least 0")
    with connect(args, "pgfeatures-expire") as conn:
        results = expire(
            conn,
            registry,
            tables=args.tables,
            older_than=args.older_than,
            grace=grace,
            batch_rows=batch_rows,
            pause=args.pause,
            vacuum=args.vacuum,
        )
    if args.json:
        out.json(
            {
                "schema": registry.schema,
                "deleted": sum(r.deleted for r in results),
                "tables": [r.as_dict() for r in results],
            }
        )
    else:
        for r in results:
            out.say(r.describe())
        out.say(f"{sum(r.deleted for r in results):,} row(s) deleted in all")
    return 0


COMMANDS = (
    Command(
        "load",
        "bulk-load Parquet/CSV/Arrow files into a feature table, atomically (merge or replace)",
        configure_load,
        run_load,
        needs=("load",),
    ),
    Command(
        "expire",
        "delete rows older than their table's ttl plus a grace period, in small batches (retention)",
        configure_expire,
        run_expire,
    ),
)
