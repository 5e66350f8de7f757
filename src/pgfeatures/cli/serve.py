"""``pgfeatures serve``: the HTTP service (its benchmark, ``bench-http``, comes with pgfeatures-bench).

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
    add_settings,
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


COMMANDS = (
    Command(
        "serve",
        "serve features over HTTP (settings: flags > PGFEATURES_<NAME> env > --config file > defaults)",
        configure_serve,
        run_serve,
        needs=("server",),
    ),
)
