"""``pgfeatures serve`` (the HTTP service) and ``pgfeatures bench-http`` (what HTTP adds).

``serve``'s flags are the fields of ``pgfeatures.server.config.ServerConfig`` (help from the
fields' metadata, parsing by the config itself), so flags, environment variables and config-file
keys cannot drift apart.
"""

from __future__ import annotations

import argparse
import errno

from .common import (
    EXIT_CANNOT_LISTEN,
    NO_DEFINITIONS,
    CliError,
    Command,
    Flag,
    add_dsn,
    add_json,
    add_settings,
    dsn_with_credentials,
    given,
)
from .output import Output


def configure_serve(p: argparse.ArgumentParser) -> None:
    from ..server.config import CONFIG_FILE_ENV, ServerConfig, env_name

    p.add_argument("--config", help=f"TOML file of settings (default: ${CONFIG_FILE_ENV})")
    add_settings(p, ServerConfig, {"definitions": Flag(short="-d")}, env=env_name)


def run_serve(args: argparse.Namespace, out: Output) -> int:
    from ..connections import resolve_dsn
    from ..server import load_config, run
    from ..server.config import ServerConfig
    from ..server.runner import bind

    config = load_config(given(args, ServerConfig), config_file=args.config)
    registry = config.registry()  # a bad definitions file fails here, not in every worker
    if not config.definitions:
        out.note(f"note: {NO_DEFINITIONS}")
    config.credential_provider()  # and so does a provider that cannot be loaded (each worker loads its own)
    address = f"{config.host}:{config.port}"
    try:
        sock = bind(config)  # before the banner and the embedded server: nothing is said up that cannot serve
    except OSError as exc:
        reason = (
            "the address is in use (another process listens there)"
            if exc.errno == errno.EADDRINUSE
            else exc.strerror or str(exc)
        )
        raise CliError(
            f"cannot listen on {address}: {reason}; choose another --port (or --host)", EXIT_CANNOT_LISTEN
        ) from None
    try:
        config = config.replace(dsn=resolve_dsn(config.dsn))  # the embedded server starts once, here
        args.resolved_dsn = config.dsn
        port = sock.getsockname()[1]  # the one chosen, with --port 0
        out.say(
            f"pgfeatures serve: http://{config.host}:{port} ({config.workers} worker(s), "
            f"{len(registry.tables)} tables in schema {registry.schema!r}, coalescing "
            f"{'on' if config.coalesce else 'off'})"
        )
    except BaseException:
        sock.close()
        raise
    if not run(config.replace(port=port), sock):
        raise CliError("the service did not start: the log lines above say why")
    return 0


def configure_bench_http(p: argparse.ArgumentParser) -> None:
    from ..bench.http import add_arguments

    add_dsn(p)
    add_arguments(p)
    add_json(p)


def run_bench_http(args: argparse.Namespace, out: Output) -> int:
    from ..bench.http import main, report

    # the servers it starts and its own stores take a DSN: the credential is asked for once, merged in
    figures = main(args, dsn_with_credentials(args))
    if args.json:
        out.json(figures)
    else:
        report(figures, args, out.console())
    return 0


COMMANDS = (
    Command(
        "serve",
        "serve features over HTTP (settings: flags > PGFEATURES_<NAME> env > --config file > defaults)",
        configure_serve,
        run_serve,
        needs=("server",),
    ),
    Command(
        "bench-http",
        "benchmark the HTTP service against the library (demo data)",
        configure_bench_http,
        run_bench_http,
        needs=("server", "bench"),
    ),
)
