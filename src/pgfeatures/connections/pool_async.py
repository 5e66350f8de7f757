"""Pools and one-off connections, with credentials asked for at every connection (async source).

``pool.py`` is generated from this file by ``tools/async_to_sync.py``.

Pools are fixed-size (min_size == max_size): a serving process should not pay
a connection handshake (several round-trips, plus TLS and SCRAM on a managed
service) in the middle of a request. ``max_lifetime`` renews each connection
after at most that long (psycopg_pool spreads the renewals with jitter), so a
rotating credential is asked for again well before it would expire.
``reconnect_timeout`` bounds how long the pool retries a lost connection, with
a delay doubling from 1 s, before giving that attempt up; the next request
that finds no connection starts a fresh attempt at once. With psycopg_pool's
default (300 s) the delay keeps doubling through a long outage, and a service
can stay down for minutes after the database is back.

Separate read and write pools isolate connection capacity (a bulk load cannot
take the connections readers need) and per-session settings. They do not
isolate the buffer cache or CPU: shared_buffers is shared by every backend of
the server. Real read isolation is a read replica.

Idle connections are handed out last-in first-out (``order="lifo"``, the default): a request
takes the connection returned most recently, so a lightly loaded store keeps one backend (and its
caches, its CPU's caches, its prepared plans) hot instead of going round every connection of the
pool; under concurrency every connection still serves. PgBouncer reuses server connections LIFO
by default for the same reason. psycopg_pool itself is first-in first-out and has no setting for
it: ``_LifoPool`` takes the newest idle connection in the one place psycopg_pool picks
one (``_get_ready_connection``, called under the pool's lock). ``order="fifo"`` keeps
psycopg_pool's order (for comparison: ``bench/pool_order.py``).

A pool logs (logger ``pgfeatures.connections``) when it first fails to connect (a warning, once
per outage, not per attempt) and when it connects again (info, with how long it had failed).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ..errors import ConfigError
from .credentials import CredentialProvider, with_deadline
from .dsn import connection_kwargs
from .translate import ConnectFailures, _reason, redact, unavailable

logger = logging.getLogger("pgfeatures.connections")


async def connection_params_async(credentials: CredentialProvider | None) -> dict[str, Any]:
    """The provider's current parameters, asked in a thread of its own (a token fetch may block)
    and waited for at most its deadline (``ProviderDeadline``; a provider given without one gets
    the default). Raises CredentialProviderError (CredentialProviderTimeout past the deadline)."""
    if credentials is None:
        return {}
    return await with_deadline(credentials).params_async()


async def connect_async(
    dsn: str,
    application_name: str = "pgfeatures",
    connect_timeout: float = 5.0,
    *,
    credentials: CredentialProvider | None = None,
    pooler: str | None = None,
    **kwargs: Any,
) -> psycopg.AsyncConnection:
    """One autocommit connection for a command (init, load, doctor, a probe), outside any pool.

    Raises DatabaseUnavailableError, or AuthenticationError for refused credentials, with the reason.
    """
    try:
        params = await connection_params_async(credentials)
        return await psycopg.AsyncConnection.connect(
            dsn, **{**connection_kwargs(application_name, connect_timeout, pooler), **params, **kwargs}
        )
    except Exception as exc:
        raise unavailable(dsn, exc, connect_timeout) from exc


async def check_connection_async(
    dsn: str, connect_timeout: float, credentials: CredentialProvider | None = None
) -> None:
    """Connect once and run ``SELECT 1``. Raises DatabaseUnavailableError / AuthenticationError with the reason."""
    conn = await connect_async(dsn, "pgfeatures-check", connect_timeout, credentials=credentials)
    try:
        await conn.execute("SELECT 1")
    except psycopg.Error as exc:
        raise unavailable(dsn, exc, connect_timeout) from exc
    finally:
        await conn.close()


def _first_line(exc: BaseException) -> str:
    return _reason(exc).splitlines()[0]


def _recording_class(failures: ConnectFailures) -> type[psycopg.AsyncConnection]:
    """A connection class that notes its pool's failures to connect (see ``ConnectFailures``), and
    logs when the pool loses the database and when it connects again (once each, not per attempt)."""

    class RecordingConnection(psycopg.AsyncConnection):
        @classmethod
        async def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
            try:
                conn = await super().connect(conninfo, **kwargs)
            except Exception as exc:
                if failures.failed(exc):
                    logger.warning(
                        "pgfeatures: pool %s cannot connect to %s (%s); it keeps trying",
                        kwargs.get("application_name"),
                        redact(conninfo),
                        _first_line(exc),
                    )
                raise
            failed_for = failures.succeeded()
            if failed_for is not None:
                logger.info(
                    "pgfeatures: pool %s connected to %s again (after %.1fs of failed attempts)",
                    kwargs.get("application_name"),
                    redact(conninfo),
                    failed_for,
                )
            return conn

    return RecordingConnection


POOL_ORDERS = ("lifo", "fifo")

# Set while a caller asks for the least recently used idle connection (``getconn_oldest_async``):
# a context variable, so it holds for that task (thread) only and never for a concurrent request.
_OLDEST_FIRST: contextvars.ContextVar[bool] = contextvars.ContextVar("pgfeatures_oldest_first", default=False)


class _LifoPool(AsyncConnectionPool):
    """An AsyncConnectionPool that hands out its idle connections last-in first-out (see the module).

    psycopg_pool keeps idle connections in a deque, returns them on the right and takes them from the
    left; this turns the deque once (O(1)) so the newest is taken, and leaves everything else
    (waiting clients, stats, checks, expiry) to psycopg_pool."""

    async def _get_ready_connection(self, timeout: float | None) -> Any:
        if len(self._pool) > 1 and not _OLDEST_FIRST.get():
            self._pool.rotate(1)
        return await super()._get_ready_connection(timeout)


async def getconn_oldest_async(pool: AsyncConnectionPool, timeout: float | None = None) -> Any:
    """The least recently used idle connection of ``pool`` (psycopg_pool's own order): a caller
    that visits every connection one at a time (``prepare_everywhere``) takes them this way, since
    last-in first-out would hand it the same connection again. Raises as ``pool.getconn``."""
    token = _OLDEST_FIRST.set(True)
    try:
        return await pool.getconn(timeout)
    finally:
        _OLDEST_FIRST.reset(token)


def check_pool_order(order: str) -> str:
    """``order`` if it is a pool order (``"lifo"``, ``"fifo"``); else ConfigError naming them."""
    if order not in POOL_ORDERS:
        raise ConfigError(f"unknown pool order {order!r}; valid: {', '.join(POOL_ORDERS)}")
    return order


async def filled_async(pool: AsyncConnectionPool, timeout: float) -> AsyncConnectionPool | None:
    """``pool`` (new, not opened) opened and holding its connections within ``timeout`` seconds; None, and
    the pool closed, if it does not fill in time. A caller cancelled while it fills leaves no pool behind:
    it is closed, then the cancellation goes on."""
    await pool.open(wait=False)
    try:
        await pool.wait(timeout=timeout)
    except PoolTimeout:
        await pool.close()
        return None
    except BaseException:
        await pool.close()
        raise
    return pool


def make_async_pool(
    dsn: str,
    *,
    size: int,
    application_name: str,
    connect_timeout: float = 5.0,
    acquire_timeout: float = 5.0,
    reconnect_timeout: float = 10.0,
    max_lifetime: float = 1800.0,
    configure: Callable[[Any], Any] | None = None,
    credentials: CredentialProvider | None = None,
    pooler: str | None = None,
    failures: ConnectFailures | None = None,
    order: str = "lifo",
) -> AsyncConnectionPool:
    """A fixed-size pool, not yet opened. ``configure`` runs on every new connection before it
    serves; ``credentials`` is called for every new connection; ``failures`` records why
    connections could not be made; ``order``: which idle connection a request takes, the most
    recently returned (``"lifo"``) or the least (``"fifo"``). Raises ConfigError for another order."""
    base = connection_kwargs(application_name, connect_timeout, pooler)
    failures = failures or ConnectFailures()

    async def kwargs() -> dict[str, Any]:
        asking = failures.asking()
        try:
            return {**base, **(await connection_params_async(credentials))}
        except Exception as exc:
            if failures.failed(exc):
                logger.warning(
                    "pgfeatures: pool %s: the credential provider failed (%s); the pool keeps trying",
                    application_name,
                    _first_line(exc),
                )
            raise
        finally:
            failures.answered(asking)

    cls = _LifoPool if check_pool_order(order) == "lifo" else AsyncConnectionPool
    return cls(
        dsn,
        connection_class=_recording_class(failures),
        kwargs=kwargs if credentials is not None else base,
        min_size=size,
        max_size=size,
        configure=configure,
        timeout=acquire_timeout,
        reconnect_timeout=reconnect_timeout,
        max_lifetime=max_lifetime,
        name=application_name,
        open=False,
    )
