"""The parser, the dispatch, and the one error handler of the ``pgfeatures`` command line.

Only the command being run has its options configured, so ``pgfeatures --help`` and a command's
``--help`` import nothing the command does not need. Commands of other distributions come from the
entry point group ``pgfeatures.cli`` (pgfeatures-bench's ``bench*`` and ``proxy``); when pgfeatures-bench
is absent its commands still exist and say how to install it. Every error a command raises ends here:
a pgfeatures error (and, as a last resort, a psycopg error, translated by
``pgfeatures.connections.database_error``) becomes one line ``error: ...`` on stderr and the exit
code ``EXIT_ERROR`` (2); a missing optional dependency names the extra to install. No traceback
reaches the user; ``PGFEATURES_DEBUG=1`` shows it for an unexpected error.

Log records go to stderr, from ``$PGFEATURES_LOG_LEVEL``: the ``pgfeatures`` logger's from
``warning`` by default (a retried start, a table that cannot be served; ``info`` adds reconnects,
retries, loads and warm-ups), psycopg's from ``error`` unless the variable is set (its pool's
"error connecting" lines repeat what pgfeatures reports once). ``serve`` logs through uvicorn
(``--log-level``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import PgFeaturesError, UnknownEntityError, UnknownFeatureError, UnknownServiceError, UnknownTableError
from . import db, demo, doctor, evolve, feast, inventory, nearest, read, schema, serve, write
from .common import (
    DEFINITIONS_ENV,
    DEMO_LAYOUT,
    EXIT_BROKEN_PIPE,
    EXIT_CODES,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    CliError,
    Command,
    MissingExtraError,
    install_hint,
    missing_module,
    require,
    uses_demo_layout,
)
from .output import Output

CORE_COMMANDS: tuple[Command, ...] = (
    *db.COMMANDS,
    *schema.COMMANDS,
    *evolve.COMMANDS,
    *inventory.COMMANDS,
    *read.COMMANDS,
    *nearest.COMMANDS,
    *demo.COMMANDS,
    *write.COMMANDS,
    *serve.COMMANDS,
    *doctor.COMMANDS,
    *feast.COMMANDS,
)

# Commands of other distributions: each entry point of this group names a tuple of ``Command``s
# (pgfeatures-bench registers ``pgfeatures_bench.cli:COMMANDS``). The core never imports them by name.
PLUGIN_GROUP = "pgfeatures.cli"
# What pgfeatures-bench brings, named even when it is absent: the command then says how to get it
# instead of argparse's "invalid choice".
BENCH_COMMANDS = ("bench", "bench-http", "bench-load", "bench-schema", "bench-soak", "proxy")


def _stand_in(name: str) -> Command:
    """A bench command pgfeatures-bench did not register: ``main`` ends it before its flags are parsed."""

    def configure(p: argparse.ArgumentParser) -> None:
        pass

    def run(args: argparse.Namespace, out: Output) -> int:
        raise MissingExtraError(f"pgfeatures {name} needs the bench extra: {install_hint(['bench'])}")

    # needs=("bench",): when pgfeatures-bench is absent, the extra's check names it
    return Command(name, "(not installed: pip install 'pgfeatures[bench]')", configure, run, needs=("bench",))


def plugin_commands() -> tuple[tuple[Command, ...], list[str]]:
    """The commands registered under ``PLUGIN_GROUP`` by installed distributions, then a stand-in for each
    bench command none registered; and why each entry point that could not be loaded failed (a broken
    install must not break every command: its commands are stand-ins that say so when run)."""
    from importlib.metadata import entry_points

    found: list[Command] = []
    broken: list[str] = []
    for point in entry_points(group=PLUGIN_GROUP):
        try:
            commands = point.load()
        except Exception as exc:
            broken.append(f"{point.value} ({getattr(point.dist, 'name', '?')}): {type(exc).__name__}: {exc}")
            continue
        found.extend(c for c in commands if isinstance(c, Command))
    names = {c.name for c in found}
    return (*found, *(_stand_in(n) for n in BENCH_COMMANDS if n not in names)), broken


PLUGINS, BROKEN_PLUGINS = plugin_commands()
STAND_INS = {c.name for c in PLUGINS if c.help.startswith("(not installed")}
COMMANDS = CORE_COMMANDS + PLUGINS
BY_NAME = {c.name: c for c in COMMANDS}

DESCRIPTION = "Online feature serving on PostgreSQL."
EPILOG = f"""common options: --dsn (else $PGFEATURES_DSN, else the embedded server) and -d/--definitions
(else ${DEFINITIONS_ENV}, else the demo layout: 30 tables t00..t29 x f0..f7 real in schema demo).
--json: one JSON document on stdout and nothing else there; messages for people go to stderr.

{EXIT_CODES}"""


def _chosen(argv: Sequence[str]) -> Command | None:
    """The command named on the command line (the first word: the top level has no other options)."""
    for word in argv:
        if not word.startswith("-"):
            return BY_NAME.get(word)
    return None


def package_version() -> str:
    """The installed distribution's version (its metadata), else the source tree's ``__version__``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pgfeatures")
    except PackageNotFoundError:  # run from a source tree that is not installed
        from .. import __version__

        return __version__


class _Version(argparse.Action):
    """``--version``: looks the version up only when asked (``--help`` and commands never pay for it)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(f"pgfeatures {package_version()}", flush=True)
        parser.exit()


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with ``argv``, only the command it names is configured (None: every command)."""
    parser = argparse.ArgumentParser(
        prog="pgfeatures", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action=_Version, help="print the installed pgfeatures version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = _chosen(argv) if argv is not None else None
    for command in COMMANDS:
        p = sub.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if argv is None or command is chosen:
            command.configure(p)
        p.set_defaults(_command=command)
    return parser


def fail(out: Output | None, message: str, code: int = EXIT_ERROR) -> int:
    """Print ``error: message`` on stderr as one line of plain text (no markup), and return the exit code."""
    text = "; ".join(" ".join(line.split()) for line in message.strip().splitlines() if line.strip())
    print(f"error: {text}", file=(out.stderr if out else sys.stderr), flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (see ``EXIT_CODES``). Never raises but SystemExit
    from ``--help``/usage errors, which is returned as the code too."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out: Output | None = None
    args = argparse.Namespace()
    command = _chosen(argv)
    try:
        if command is not None:  # before its parser is configured: that may import what is missing
            require(command.name, *command.needs)
            if command.name in STAND_INS:  # the extra imports, yet its commands are not registered
                raise MissingExtraError(_unregistered(command.name))
        try:
            args = build_parser(argv).parse_args(argv)
        except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
            return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_ERROR
        command = args._command
        out = Output(json_mode=bool(getattr(args, "json", False)))
        if command.name == "serve":  # uvicorn configures logging for the service
            return int(command.run(args, out) or 0)
        with _stderr_logging(os.environ.get(LOG_LEVEL_ENV)):
            return int(command.run(args, out) or 0)
    except KeyboardInterrupt:
        return fail(out, "interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:  # the reader went away (`pgfeatures get ... | head`): stop quietly, as Unix tools do
        return _pipe_closed()
    except CliError as exc:
        return fail(out, str(exc), exc.exit_code)
    except (UnknownTableError, UnknownFeatureError, UnknownServiceError, UnknownEntityError) as exc:
        # valid names of the demo layout, when the user meant their own definitions: say where they came from
        hint = (
            (
                f"; these are the names of {DEMO_LAYOUT}, since no definitions were given: pass yours with "
                f"-d/--definitions FILE or ${DEFINITIONS_ENV}"
            )
            if uses_demo_layout(args)
            else ""
        )
        return fail(out, str(exc) + hint)
    except PgFeaturesError as exc:
        return fail(out, str(exc))
    except ImportError as exc:
        return fail(out, str(missing_module(command.name if command else "", exc, command.needs if command else ())))
    except Exception as exc:
        return fail(out, _unexpected(exc, args))


def _unregistered(name: str) -> str:
    if BROKEN_PLUGINS:
        return f"pgfeatures {name}: the installed commands cannot be loaded: {'; '.join(BROKEN_PLUGINS)}"
    return (
        f"pgfeatures {name} is not registered (pgfeatures_bench imports, but no installed distribution "
        f"registers it: run from a source tree?): {install_hint(['bench'])}"
    )


def _pipe_closed() -> int:
    """After stdout's reader closed the pipe: point stdout at /dev/null, so that the interpreter's final
    flush does not fail again, and end with the exit code of a process killed by SIGPIPE."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a file descriptor (a test's capture): nothing left to flush
        pass
    return EXIT_BROKEN_PIPE


LOG_LEVEL_ENV = "PGFEATURES_LOG_LEVEL"


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (tests swap it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


@contextlib.contextmanager
def _stderr_logging(level: str | None) -> Iterator[None]:
    """While a command runs: the ``pgfeatures`` and ``psycopg`` loggers to stderr from ``level``
    (``$PGFEATURES_LOG_LEVEL``; None or a name logging does not know: pgfeatures' warnings, psycopg's
    errors). Afterwards the loggers are as they were, so ``main()`` called in-process (tests, a
    user's script) leaves no handler or level behind."""
    chosen = logging.getLevelName(level.upper()) if level else None
    handler = _Stderr()
    saved = []
    for name, default in (("pgfeatures", logging.WARNING), ("psycopg", logging.ERROR)):
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.setLevel(chosen if isinstance(chosen, int) else default)
        logger.addHandler(handler)
        logger.propagate = False  # a root handler someone configured would print each record twice
    try:
        yield
    finally:
        for logger, old_level, propagate in saved:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
            logger.propagate = propagate


def _unexpected(exc: Exception, args: argparse.Namespace) -> str:
    """The message for an exception no command translated: a psycopg error as its typed pgfeatures
    error, a file that cannot be opened by its name and reason, anything else as an internal error."""
    import psycopg

    if isinstance(exc, psycopg.Error):
        from ..connections import database_error

        return str(database_error(exc, getattr(args, "resolved_dsn", "") or ""))
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    if os.environ.get("PGFEATURES_DEBUG"):
        traceback.print_exc()
    return (
        f"internal error: {type(exc).__name__}: {exc} (a bug: please report it; "
        "PGFEATURES_DEBUG=1 prints the traceback)"
    )
