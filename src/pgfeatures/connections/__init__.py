"""Where the database is and how pgfeatures connects to it.

- ``pools``: DSN resolution, connection settings, fixed-size pools, one-off connections;
- ``translate``: psycopg / psycopg_pool exceptions as typed pgfeatures errors.
"""

from .pools import (
    DSN_ENV,
    READ_APP,
    WRITE_APP,
    check_connection,
    check_connection_async,
    connect,
    connect_async,
    connection_kwargs,
    make_async_pool,
    make_pool,
    pool_settings,
    resolve_dsn,
)
from .translate import database_error, is_auth_failure, redact, unavailable

__all__ = [
    "DSN_ENV", "READ_APP", "WRITE_APP", "check_connection", "check_connection_async", "connect", "connect_async",
    "connection_kwargs", "database_error", "is_auth_failure", "make_async_pool", "make_pool", "pool_settings",
    "redact", "resolve_dsn", "unavailable",
]
