"""What a psycopg or psycopg_pool exception means to a pgfeatures user: one typed error each.

An outage, an expired credential, a timeout, a drifted schema, a closed store,
connection settings that cannot work (a malformed DSN, a database or role the
server does not have) and any other database error are different conditions
with different remedies (wait, renew the credential, run ``pgfeatures init``,
fix the DSN, fix a grant), so they become different exceptions, each saying
what happened, where, and the fix. Connection failures carry no SQLSTATE in
libpq, so those are told apart by libpq's message.
"""

from __future__ import annotations

import re
import time

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import PoolClosed, PoolTimeout

from ..errors import (
    AuthenticationError,
    ConflictError,
    ConnectionSettingsError,
    CredentialsTimeoutError,
    DatabaseError,
    DatabaseUnavailableError,
    PgFeaturesError,
    PoolExhaustedError,
    QueryTimeoutError,
    SchemaDriftError,
    StoreClosedError,
)

# libpq / server messages of a refused login: the credential, not the network, is the problem.
_AUTH = re.compile(
    r"password authentication failed|no password supplied|authentication failed|"
    r"no pg_hba\.conf entry|pg_hba\.conf rejects|"
    r"SSL (?:connection )?(?:is )?required|server does not support SSL|certificate verify failed|"
    r"SCRAM|channel binding",
    re.IGNORECASE,
)
_SCHEMA_STATES = {
    "42P01": "undefined table",
    "42703": "undefined column",
    "42804": "datatype mismatch",
    "0A000": "cached plan changed result type",  # only with that message: see _unreadable_value
    "42883": "undefined function",
}
# A deadlock or a serialization failure (on a replica also a conflict with recovery): rolled back, retryable.
CONFLICT_STATES = frozenset({"40P01", "40001"})
# The server answered, and the settings name what it does not have (with trust or peer auth, and
# for the database after a login; with password auth PostgreSQL reports a missing role as a failed
# password, which stays an AuthenticationError).
_NO_ROLE = re.compile(r'role "((?:[^"]|"")*)" does not exist')
_NO_DATABASE = re.compile(r'database "((?:[^"]|"")*)" does not exist')
# libpq refusing the connection string itself, before any network I/O.
_MALFORMED = re.compile(
    r'missing "=" after|invalid connection option|invalid URI|end of string reached|unterminated quoted string|'
    r"invalid percent-encoded token|forbidden value %00|invalid integer value|invalid \S+ value|bad value for|"
    r"invalid port number|could not match \d+ (?:host names|port numbers)|unexpected spaces found",
    re.IGNORECASE,
)
# Class 08 (connection exception), 57P0x (admin/crash shutdown, cannot connect now), 53300 (too many connections)
_UNAVAILABLE_PREFIXES = ("08", "57P", "53300")


def redact(dsn: str) -> str:
    """The DSN with any password hidden, for error messages."""
    dsn = re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", dsn)
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", dsn)


def _reason(exc: BaseException) -> str:
    return (str(exc).strip() or type(exc).__name__).replace("connection failed: ", "", 1)


def is_auth_failure(exc: BaseException) -> bool:
    """The exception is a refused login (wrong password, expired token, pg_hba, TLS required) or a
    credential provider that failed."""
    from .credentials import CredentialProviderError

    if isinstance(exc, CredentialProviderError):
        return True
    if isinstance(exc, psycopg.Error) and exc.sqlstate and exc.sqlstate.startswith("28"):
        return True
    return isinstance(exc, psycopg.OperationalError) and bool(_AUTH.search(str(exc)))


def _where(dsn: str) -> str:
    """``host:port`` of a DSN for a message (the whole DSN, redacted, when it does not parse)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return redact(dsn)
    host = params.get("host") or params.get("hostaddr") or "the default host (PGHOST, or the local socket)"
    return f"{host}:{params['port']}" if params.get("port") else str(host)


def settings_error(dsn: str, exc: BaseException) -> ConnectionSettingsError | None:
    """The ConnectionSettingsError for a connection that failed because of its settings (a malformed
    DSN, a database or role the server does not have), with the fix; None for any other failure."""
    if not isinstance(exc, psycopg.Error):
        return None
    reason = _reason(exc)
    if (m := _NO_DATABASE.search(reason)) is not None:
        name = m.group(1).replace('""', '"')
        return ConnectionSettingsError(
            f"the database server at {_where(dsn)} has no database {name!r} (dbname in the DSN {redact(dsn)}): "
            f"create it (CREATE DATABASE, or createdb {name}) or name an existing one; the server said: {reason}"
        )
    if (m := _NO_ROLE.search(reason)) is not None:
        name = m.group(1).replace('""', '"')
        return ConnectionSettingsError(
            f"the database server at {_where(dsn)} has no role {name!r} (user in the DSN {redact(dsn)}, else the "
            f"PGUSER or operating-system user): create it (CREATE ROLE ... LOGIN) or connect as an existing role; "
            f"the server said: {reason}"
        )
    if _MALFORMED.search(reason):
        return malformed_dsn(dsn, reason)
    return None


def malformed_dsn(dsn: str, reason: str) -> ConnectionSettingsError:
    """The error for a DSN libpq refuses (``reason``: libpq's words, which may quote the DSN: redacted too)."""
    return ConnectionSettingsError(
        f"the DSN {redact(dsn)!r} is malformed: {redact(reason)}; write it as key=value pairs (host=db.example.com "
        "port=5432 dbname=features user=app) or as a URI (postgresql://app@db.example.com:5432/features)"
    )


def check_dsn(dsn: str) -> str:
    """``dsn`` if libpq can parse it; ConnectionSettingsError saying what is wrong and how to write one."""
    try:
        conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        raise malformed_dsn(dsn, _reason(exc)) from None
    return dsn


def unavailable(dsn: str, exc: BaseException, timeout: float | None = None) -> PgFeaturesError:
    """The typed error for a failed connection: DatabaseUnavailableError (AuthenticationError for a
    refused login, CredentialsTimeoutError for a credential provider past its deadline), or
    ConnectionSettingsError when the settings themselves cannot work."""
    from .credentials import CredentialProviderError, CredentialProviderTimeout

    within = f" within {timeout:g}s" if timeout is not None else ""
    if isinstance(exc, CredentialProviderError):  # nothing was sent to the database
        kind = CredentialsTimeoutError if isinstance(exc, CredentialProviderTimeout) else AuthenticationError
        return kind(f"no credentials for the database at {redact(dsn)}: {_reason(exc)}")
    settings = settings_error(dsn, exc)
    if settings is not None:
        return settings
    if is_auth_failure(exc):
        return AuthenticationError(
            f"the database at {redact(dsn)} refused the credentials: {_reason(exc)} "
            "(renew the password or token; with a credential provider the next connection asks it again)"
        )
    return DatabaseUnavailableError(f"cannot reach the database{within} at {redact(dsn)}: {_reason(exc)}")


def database_error(
    exc: BaseException,
    dsn: str = "",
    *,
    acquire_timeout: float | None = None,
    last_connect_error: BaseException | None = None,
) -> PgFeaturesError:
    """The typed pgfeatures error for a psycopg / psycopg_pool exception.

    ``last_connect_error``: the pool's latest failure to connect, if known, which tells a
    pool timeout caused by a down database (or a refused credential) from a busy pool.
    A pgfeatures error is returned as it is; any other exception becomes a DatabaseError.
    """
    if isinstance(exc, PgFeaturesError):
        return exc
    if isinstance(exc, PoolClosed):
        return StoreClosedError(f"the store is closed: {exc}")
    if isinstance(exc, PoolTimeout):
        waited = f" within {acquire_timeout:g}s" if acquire_timeout is not None else ""
        if last_connect_error is not None:
            cause = unavailable(dsn, last_connect_error)
            kind = type(cause)
            return kind(f"no database connection{waited}: {cause}")
        return PoolExhaustedError(
            f"no database connection available{waited}: every pooled connection is busy or being re-established ({exc})"
        )
    if not isinstance(exc, psycopg.Error):
        return DatabaseError(f"{type(exc).__name__}: {exc}")
    state = exc.sqlstate or ""
    if isinstance(exc, psycopg.errors.QueryCanceled) or state == "57014":
        return QueryTimeoutError(f"the statement was cancelled: {_reason(exc)} (statement_timeout or a cancel request)")
    if state in CONFLICT_STATES:
        return ConflictError(
            f"rolled back, conflicting with a concurrent statement ({_reason(exc)}): nothing of it was "
            "applied; retry it",
            state,
        )
    unreadable = _unreadable_value(exc)
    if unreadable is not None:
        return unreadable
    if state in _SCHEMA_STATES and (state != "0A000" or "cached plan" in str(exc)):
        return SchemaDriftError(
            f"the database does not match the definitions ({_SCHEMA_STATES[state]}): {_reason(exc)}"
        )
    if isinstance(exc, (psycopg.OperationalError, psycopg.ProgrammingError)) and not state:
        settings = settings_error(dsn, exc)  # a connection attempt: no SQLSTATE, libpq's message says why
        if settings is not None:
            return settings
    if is_auth_failure(exc):
        return unavailable(dsn, exc)
    if isinstance(exc, psycopg.OperationalError) and (not state or state.startswith(_UNAVAILABLE_PREFIXES)):
        return unavailable(dsn, exc)
    if isinstance(exc, psycopg.InterfaceError) and "closed" in str(exc):
        return DatabaseUnavailableError(f"the connection to {redact(dsn)} is closed: {_reason(exc)}")
    return DatabaseError(f"the database rejected the statement: {_reason(exc)}", state or None)


def _unreadable_value(exc: psycopg.Error) -> DatabaseError | None:
    """A stored value no read can return: a timestamp of ``infinity`` or ``-infinity`` (written around
    pgfeatures, whose writes refuse it), which has no epoch microseconds and no datetime. PostgreSQL says
    ``cannot convert infinity to bigint`` with SQLSTATE 0A000, which is also a re-planned statement's:
    the message tells them apart. None for any other error."""
    reason = _reason(exc)
    if exc.sqlstate == "0A000" and "cannot convert" in reason and "infinity" in reason:
        return DatabaseError(
            f"a stored timestamp is infinity or -infinity, which has no datetime (the server said: {reason}): "
            "pgfeatures never writes one; set it to a time or to NULL in the row written around pgfeatures",
            exc.sqlstate,
        )
    return None


class ConnectFailures:
    """The latest failure of one pool to open a connection, cleared by the next success.

    A pool timeout alone cannot say why no connection came; this record can: the database is
    down (connection refused), or it refused the credentials. Updated from the pool's worker
    threads or tasks: single attribute writes, no lock needed (two workers failing at once may
    both see themselves as the first failure: a log line twice, nothing worse).
    """

    __slots__ = ("error", "at", "since", "_asking")

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.at = 0.0  # the latest failure
        self.since = 0.0  # the first failure since the last success
        self._asking: dict[object, float] = {}  # connection attempts waiting on the credential provider: since when

    def asking(self) -> object:
        """Note a connection attempt that waits on the credential provider; pass the token to ``answered``."""
        token = object()
        self._asking[token] = time.monotonic()
        return token

    def answered(self, token: object) -> None:
        self._asking.pop(token, None)

    def cause(self, pending_for: float = 0.0) -> BaseException | None:
        """Why the pool may have no connection: its latest failure to connect, else a credential
        provider call it has been waiting on for at least ``pending_for`` seconds (a provider that
        has not answered, its deadline not yet passed; a call of a few milliseconds made while the
        pool was merely busy does not count), else None (nothing failed: the pool is busy)."""
        if self.error is not None:
            return self.error
        now = time.monotonic()
        pending = [
            since for since in list(self._asking.values()) if now - since >= pending_for
        ]  # a copy: workers change it
        if not pending:
            return None
        from .credentials import CredentialProviderTimeout

        return CredentialProviderTimeout(f"the credential provider has not answered for {now - min(pending):.1f}s")

    def failed(self, exc: BaseException) -> bool:
        """Record a failure; True when it is the first since the last success (the pool just lost the database)."""
        first = self.error is None
        self.error, self.at = exc, time.monotonic()
        if first:
            self.since = self.at
        return first

    def succeeded(self) -> float | None:
        """Clear the failure; the seconds connecting had been failing, None when it was not."""
        if self.error is None:
            return None
        self.error = None
        return time.monotonic() - self.since
