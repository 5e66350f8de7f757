"""Where the database is and how connections to it are made: DSN resolution and pools.

Pools are fixed-size (min_size == max_size): a serving process should not pay
a connection handshake (several round-trips, plus TLS on a managed service)
in the middle of a request. Every connection is made with:

- ``autocommit=True``: reads need no transaction, and psycopg would otherwise
  send a BEGIN before the first statement;
- ``prepare_threshold=0``: every statement is prepared on first use (planning
  a 30-subquery statement costs more than running it);
- ``application_name``: ``pgfeatures-read`` / ``pgfeatures-write`` by default,
  so pg_stat_activity and pg_stat_statements tell readers from writers.

Separate read and write pools isolate connection capacity (a bulk load cannot
take the connections readers need) and per-session settings. They do not
isolate the buffer cache: shared_buffers is shared by every backend of the
server. Real read isolation is a read replica: point the read pool at it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from .translate import unavailable

DSN_ENV = "PGFEATURES_DSN"
READ_APP = "pgfeatures-read"
WRITE_APP = "pgfeatures-write"


def resolve_dsn(dsn: str | None = None) -> str:
    """The DSN given, else ``$PGFEATURES_DSN``, else the embedded server's (started on demand)."""
    if dsn:
        return dsn
    env = os.environ.get(DSN_ENV)
    if env:
        return env
    from .. import embedded

    return embedded.ensure_running()


def connection_kwargs(application_name: str, connect_timeout: float) -> dict[str, object]:
    return {
        "autocommit": True,
        "prepare_threshold": 0,
        "application_name": application_name,
        "connect_timeout": max(1, int(round(connect_timeout))),
    }


def connect(dsn: str, application_name: str = "pgfeatures", connect_timeout: float = 5.0, **kwargs: Any) -> psycopg.Connection:
    """One autocommit connection for a command (init, load, doctor, ...), outside any pool.

    Raises DatabaseUnavailableError (AuthenticationError for refused credentials) with the reason.
    """
    try:
        return psycopg.connect(dsn, **{**connection_kwargs(application_name, connect_timeout), **kwargs})
    except psycopg.Error as exc:
        raise unavailable(dsn, exc, connect_timeout) from exc


async def connect_async(dsn: str, application_name: str = "pgfeatures", connect_timeout: float = 5.0,
                        **kwargs: Any) -> psycopg.AsyncConnection:
    """The asyncio twin of ``connect``."""
    try:
        return await psycopg.AsyncConnection.connect(dsn, **{**connection_kwargs(application_name, connect_timeout), **kwargs})
    except psycopg.Error as exc:
        raise unavailable(dsn, exc, connect_timeout) from exc


def check_connection(dsn: str, connect_timeout: float) -> None:
    """Connect once and run ``SELECT 1``. Raises DatabaseUnavailableError with the reason."""
    try:
        with psycopg.connect(dsn, **connection_kwargs("pgfeatures-check", connect_timeout)) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        raise unavailable(dsn, exc, connect_timeout) from exc


async def check_connection_async(dsn: str, connect_timeout: float) -> None:
    try:
        conn = await psycopg.AsyncConnection.connect(dsn, **connection_kwargs("pgfeatures-check", connect_timeout))
        async with conn:
            await conn.execute("SELECT 1")
    except psycopg.Error as exc:
        raise unavailable(dsn, exc, connect_timeout) from exc


def pool_settings(
    *,
    size: int,
    application_name: str,
    connect_timeout: float = 5.0,
    acquire_timeout: float = 5.0,
    configure: Callable[[Any], Any] | None = None,
    reconnect_timeout: float = 10.0,
) -> dict[str, Any]:
    """Arguments of a fixed-size pool, sync or async; ``configure`` runs on every new connection before it serves.

    ``reconnect_timeout`` bounds how long the pool retries a lost connection,
    with a delay doubling from 1 s, before giving that attempt up; the next
    request that finds no connection starts a fresh attempt at once. With
    psycopg_pool's default (300 s) the delay keeps doubling through a long
    outage, and a service can stay down for minutes after the database is back.
    """
    return {
        "reconnect_timeout": reconnect_timeout,
        "min_size": size,
        "max_size": size,
        "kwargs": connection_kwargs(application_name, connect_timeout),
        "configure": configure,
        "timeout": acquire_timeout,
        "name": application_name,
        "open": False,
    }


def make_pool(dsn: str, **settings: Any) -> ConnectionPool:
    """A fixed-size pool, not yet opened (``settings``: see ``pool_settings``)."""
    return ConnectionPool(dsn, **pool_settings(**settings))


def make_async_pool(dsn: str, **settings: Any) -> AsyncConnectionPool:
    """The asyncio twin of ``make_pool``."""
    return AsyncConnectionPool(dsn, **pool_settings(**settings))
