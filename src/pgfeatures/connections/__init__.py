"""Where the database is and how pgfeatures connects to it (floor 4).

- ``dsn``: DSN resolution (argument, ``$PGFEATURES_DSN``, the embedded server) and the
  settings of every connection (autocommit, prepared statements or not, application_name);
- ``credentials``: credential providers called for every new connection (rotating passwords,
  OAuth and IAM tokens);
- ``pool_async`` / ``pool`` (generated): fixed-size pools with bounded lifetime and
  reconnects, one-off connections;
- ``liveness``: whether an idle pooled connection was closed by the server, without a round-trip;
- ``translate``: psycopg / psycopg_pool exceptions as typed pgfeatures errors.
"""

from .credentials import Cached, CredentialProvider, CredentialProviderError, EnvPassword, PasswordFile, load_provider
from .dsn import DSN_ENV, POOLERS, READ_APP, WRITE_APP, check_pooler, connection_kwargs, prepares, resolve_dsn
from .liveness import went_away
from .pool import check_connection, connect, filled, getconn_oldest, make_pool
from .pool_async import (
    POOL_ORDERS,
    check_connection_async,
    check_pool_order,
    connect_async,
    filled_async,
    getconn_oldest_async,
    make_async_pool,
)
from .translate import ConnectFailures, check_dsn, database_error, is_auth_failure, redact, settings_error, unavailable

__all__ = [
    "Cached",
    "ConnectFailures",
    "CredentialProvider",
    "CredentialProviderError",
    "DSN_ENV",
    "EnvPassword",
    "POOLERS",
    "POOL_ORDERS",
    "PasswordFile",
    "READ_APP",
    "WRITE_APP",
    "check_connection",
    "check_connection_async",
    "check_pooler",
    "check_pool_order",
    "check_dsn",
    "connect",
    "connect_async",
    "connection_kwargs",
    "database_error",
    "filled",
    "filled_async",
    "getconn_oldest",
    "getconn_oldest_async",
    "is_auth_failure",
    "load_provider",
    "make_async_pool",
    "make_pool",
    "prepares",
    "redact",
    "resolve_dsn",
    "settings_error",
    "unavailable",
    "went_away",
]
