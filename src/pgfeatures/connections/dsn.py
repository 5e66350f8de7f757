"""Where the database is, and the settings every pgfeatures connection is made with.

Every connection is made with:

- ``autocommit=True``: reads need no transaction, and psycopg would otherwise
  send a BEGIN before the first statement;
- ``prepare_threshold=0``: every statement is prepared on first use (planning
  a 30-subquery statement costs more than running it), except behind a
  transaction-mode pooler (``pooler="transaction"``), where a prepared
  statement would stay behind on a server connection another client gets next:
  there ``prepare_threshold=None``, nothing is ever prepared;
- ``application_name``: ``pgfeatures-read`` / ``pgfeatures-write`` by default,
  so pg_stat_activity and pg_stat_statements tell readers from writers.

TLS settings (``sslmode``, ``sslrootcert``, ``sslcert``, ...) are libpq
parameters: put them in the DSN (``... sslmode=verify-full
sslrootcert=/etc/ssl/rds.pem``) or return them from a credential provider;
they pass through unchanged.
"""

from __future__ import annotations

import os
from typing import Any

DSN_ENV = "PGFEATURES_DSN"
READ_APP = "pgfeatures-read"
WRITE_APP = "pgfeatures-write"
POOLERS = ("session", "transaction")


def resolve_dsn(dsn: str | None = None) -> str:
    """The DSN given, else ``$PGFEATURES_DSN``, else the embedded server's (started on demand).

    Raises ConnectionSettingsError for a DSN libpq cannot parse, EmbeddedServerError when the
    embedded server is needed but cannot start (or is not installed: the ``pgfeatures[embedded]`` extra).
    """
    from .translate import check_dsn

    if dsn:
        return check_dsn(dsn)
    env = os.environ.get(DSN_ENV)
    if env:
        return check_dsn(env)
    from .. import embedded

    return embedded.ensure_running()


def check_pooler(pooler: str | None) -> str | None:
    """``pooler`` validated: None (a direct connection, or a session-mode pooler), "session" or "transaction"."""
    if pooler is not None and pooler not in POOLERS:
        from ..errors import ConfigError

        raise ConfigError(f"unknown pooler {pooler!r}; valid: {', '.join(POOLERS)} (or none for a direct connection)")
    return pooler


def prepares(pooler: str | None) -> bool:
    """Whether statements are prepared server-side: never behind a transaction-mode pooler."""
    return pooler != "transaction"


def connection_kwargs(application_name: str, connect_timeout: float, pooler: str | None = None) -> dict[str, Any]:
    """The psycopg ``connect`` arguments of every pgfeatures connection (see the module docstring)."""
    return {
        "autocommit": True,
        "prepare_threshold": 0 if prepares(pooler) else None,
        "application_name": application_name,
        "connect_timeout": max(1, int(round(connect_timeout))),
    }
