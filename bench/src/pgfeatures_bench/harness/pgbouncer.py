"""Debian's PgBouncer in front of a private ``Cluster``, for tests and benchmarks.

``PgBouncer(cluster, pool_mode="transaction")`` writes a pgbouncer.ini into a
work folder of its own, starts ``/usr/sbin/pgbouncer`` (as the service user
when root: PgBouncer refuses to run as root) on a free port of 127.0.0.1 and
waits until it accepts connections. Every database name is routed to the
cluster (``* = host=127.0.0.1 port=...``). Install it with
``apt-get install pgbouncer`` (``.ci/run`` does); ``find_pgbouncer()`` is None
when it is absent, and tests skip on that.

Authentication (clients always authenticate with scram-sha-256):

- ``auth="query"`` (default): PgBouncer looks a client's SCRAM verifier up in
  the database at each login (``auth_user`` + ``auth_query``, through a
  SECURITY DEFINER function ``pgbouncer.get_auth`` that only the
  ``pgbouncer_auth`` role may run), and logs into the server with the keys
  from the client's own SCRAM exchange. A rotation on the server
  (``Cluster.set_password``) takes effect for new clients at once: nothing
  to rewrite, no RELOAD. The price: a client login needs the database, so
  while it is down new logins fail (``server login has been failing``)
  instead of queueing.
- ``auth="file"``: the auth_file holds each role's plain password; PgBouncer
  checks clients against it and logs into the server with it. After a
  rotation, ``set_password(role, new)`` rewrites the file and sends
  ``RELOAD``; until then new clients must still use the old password, and
  once the server has the new one PgBouncer cannot open new server
  connections for the role (clients queue, then get ``query_wait_timeout``).
  Logins work while the database is down; the query waits.

Server connections already open are not affected either way: PostgreSQL
checks credentials at login only, so a held client keeps working.

The admin console (database ``pgbouncer``, user ``pgbouncer_admin``):
``show("POOLS")``, ``reload()``, ``command("PAUSE")`` ...

What makes PgBouncer (1.18) recover quickly from a database restart, all set here:

- ``server_login_retry`` (default 15 s): after a failed server login (the
  database was down, or refused the login), PgBouncer waits this long before
  it tries that pool again; meanwhile clients get ``server login has been
  failing, try again later`` or queue. Measured here: if any client arrived
  while the database was down, new connections work again 13.8-14.2 s after
  it is back with the default, 0.2-0.4 s with 0.5 s (fractions are accepted;
  ``SHOW CONFIG`` shows 0.5). Session and transaction mode, fast restart and
  kill -9 alike. With no client during the outage there is no failed login,
  and no wait.
- ``server_connect_timeout`` (default 15 s): 5 s here; a local server answers at once.
- ``query_wait_timeout`` (default 120 s): how long a queued client waits for a server
  connection before PgBouncer closes it; 30 s here, so an outage reaches a client as an error.
- Server connections broken by the restart are closed when PgBouncer sees them
  end (immediately, for a fast shutdown or a crash); one that dies unseen is
  caught by ``server_check_query`` when it has been idle for
  ``server_check_delay`` (30 s). In session mode a client's server connection
  dies with the database and that client gets ``terminating connection due
  to administrator command`` (or ``... unexpected postmaster exit``): it must
  reconnect. In transaction mode the client connection survives, and its next
  transaction gets a new server connection.

Protocol-level prepared statements in transaction mode: PgBouncer 1.18 does
not track them (``max_prepared_statements`` came in 1.21). A named statement
prepared by one client stays on the server connection, which the next
transaction may hand to another client: psycopg with ``prepare_threshold=0``
then fails with ``prepared statement "_pg3_0" already exists``; and once the
server connection under a client is replaced (a restart, ``server_lifetime``,
a terminated backend) every execution of a statement psycopg believes
prepared fails with ``prepared statement "_pg3_0" does not exist``, forever:
psycopg does not forget it. psycopg's *default* (``prepare_threshold=5``)
fails the same way after its fifth execution of a statement. With
``prepare_threshold=None`` psycopg uses only the unnamed statement, which
works through it. Session ``SET``s have the same problem: in transaction
mode they stay with the server connection, not the client. Both are shown by
tests/test_clusters.py.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from .procs import (
    ClusterError,
    ProcessStats,
    free_port,
    give_to_service,
    log_tail,
    make_certificate,
    make_workdir,
    process_stats,
    spawn,
    track,
    untrack,
    wait_for,
)

if TYPE_CHECKING:
    from .clusters import Cluster

log = logging.getLogger("pgfeatures")

PGBOUNCER = "/usr/sbin/pgbouncer"
ADMIN_USER = "pgbouncer_admin"
AUTH_USER = "pgbouncer_auth"
POOL_MODES = ("session", "transaction", "statement")
AUTH_MODES = ("query", "file")

# The auth_query function: the verifier of a login role (NULL once it expired), readable only by AUTH_USER.
_AUTH_FUNCTION = """
CREATE SCHEMA IF NOT EXISTS pgbouncer;
CREATE OR REPLACE FUNCTION pgbouncer.get_auth(p_usename text) RETURNS TABLE (usename name, passwd text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS $$
  SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END
  FROM pg_authid WHERE rolname = p_usename AND rolcanlogin
$$;
REVOKE ALL ON FUNCTION pgbouncer.get_auth(text) FROM PUBLIC;
"""

DEFAULT_SETTINGS: dict[str, str | int | float] = {
    "server_login_retry": 0.5,
    "server_connect_timeout": 5,
    "query_wait_timeout": 30,
    "server_lifetime": 3600,
    "server_idle_timeout": 600,
    "max_client_conn": 500,
    "default_pool_size": 20,
    "ignore_startup_parameters": "extra_float_digits",
    "log_connections": 0,
    "log_disconnections": 0,
}


def find_pgbouncer() -> str | None:
    """The PgBouncer program (Debian's /usr/sbin/pgbouncer, else one on PATH), or None if not installed."""
    return PGBOUNCER if Path(PGBOUNCER).exists() else shutil.which("pgbouncer")


def _quote_userlist(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


class PgBouncer:
    """A PgBouncer process in front of ``cluster`` (see the module docstring).

    ``pool_mode``: session, transaction or statement. ``auth``: query or file. ``users``: the roles
    the auth_file knows with ``auth="file"`` (default: every role the cluster made). ``settings``:
    pgbouncer.ini settings over ``DEFAULT_SETTINGS`` (``server_lifetime``, ``default_pool_size``,
    ``max_client_conn``, ``server_login_retry``, ...). When the cluster requires TLS, PgBouncer
    does too, on both sides, with the cluster's certificate. Starts unless ``start=False``.
    Raises ClusterError if PgBouncer is not installed or does not start (its log's tail).
    """

    def __init__(
        self,
        cluster: Cluster,
        *,
        pool_mode: str = "transaction",
        auth: str = "query",
        users: Mapping[str, str] | None = None,
        settings: Mapping[str, str | int | float] | None = None,
        port: int | None = None,
        tls: bool | None = None,
        start: bool = True,
    ) -> None:
        if pool_mode not in POOL_MODES:
            raise ValueError(f"pool_mode must be one of {', '.join(POOL_MODES)}, not {pool_mode!r}")
        if auth not in AUTH_MODES:
            raise ValueError(f"auth must be one of {', '.join(AUTH_MODES)}, not {auth!r}")
        program = find_pgbouncer()
        if program is None:
            raise ClusterError("PgBouncer is not installed (apt-get install pgbouncer)")
        self.program = program
        self.cluster = cluster
        self.pool_mode = pool_mode
        self.auth = auth
        self.tls = cluster.tls if tls is None else tls
        self.port = port or free_port()
        self.settings: dict[str, str | int | float] = {**DEFAULT_SETTINGS, **(settings or {})}
        self.passwords: dict[str, str] = dict(users if users is not None else cluster.passwords)
        self.admin_password = secrets.token_urlsafe(16)
        self.auth_password = secrets.token_urlsafe(16)
        self.base = make_workdir(f"pgbouncer-{pool_mode}")
        self.ini = self.base / "pgbouncer.ini"
        self.userlist = self.base / "userlist.txt"
        self.logfile = self.base / "pgbouncer.log"
        self.pidfile = self.base / "pgbouncer.pid"
        self.process: subprocess.Popen[bytes] | None = None
        self._closed = False
        track(self)
        try:
            if auth == "query":
                self._install_auth_query()
            if self.tls:
                make_certificate(self.base)
            self._write_userlist()
            self._write_ini()
            if start:
                self.start()
        except BaseException:
            self.close()
            raise

    @staticmethod
    def available() -> bool:
        """PgBouncer is installed (tests skip without it)."""
        return find_pgbouncer() is not None

    # -- configuration ----------------------------------------------------------------------------

    def _install_auth_query(self) -> None:
        with self.cluster.admin() as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [AUTH_USER]).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(AUTH_USER), sql.Literal(self.auth_password)
                )
            )
            conn.execute(_AUTH_FUNCTION)
            conn.execute(
                sql.SQL(
                    "GRANT USAGE ON SCHEMA pgbouncer TO {}; GRANT EXECUTE ON FUNCTION pgbouncer.get_auth(text) TO {}"
                ).format(sql.Identifier(AUTH_USER), sql.Identifier(AUTH_USER))
            )

    def _write_userlist(self) -> None:
        entries = {ADMIN_USER: self.admin_password}
        if self.auth == "query":
            entries[AUTH_USER] = self.auth_password
        else:
            entries.update(self.passwords)
        tmp = self.userlist.with_suffix(".tmp")
        tmp.write_text("".join(f"{_quote_userlist(u)} {_quote_userlist(p)}\n" for u, p in entries.items()))
        tmp.chmod(0o600)
        give_to_service(tmp)
        tmp.rename(self.userlist)  # PgBouncer never reads a half-written file

    def _write_ini(self) -> None:
        c = self.cluster
        main: dict[str, str | int | float] = {
            "listen_addr": "127.0.0.1",
            "listen_port": self.port,
            "unix_socket_dir": str(self.base),
            "pidfile": str(self.pidfile),
            "auth_type": "scram-sha-256",
            "auth_file": str(self.userlist),
            "admin_users": ADMIN_USER,
            "stats_users": ADMIN_USER,
            "pool_mode": self.pool_mode,
            **self.settings,
        }
        if self.auth == "query":
            main.update(auth_user=AUTH_USER, auth_query="SELECT usename, passwd FROM pgbouncer.get_auth($1)")
        if c.tls:
            main.update(server_tls_sslmode="require")
        if self.tls:
            main.update(
                client_tls_sslmode="require",
                client_tls_key_file=str(self.base / "server.key"),
                client_tls_cert_file=str(self.base / "server.crt"),
            )
        text = (
            "; written by pgfeatures_bench.harness.pgbouncer\n[databases]\n"
            f"* = host=127.0.0.1 port={c.port}\n\n[pgbouncer]\n" + "".join(f"{k} = {v}\n" for k, v in main.items())
        )
        self.ini.write_text(text)
        give_to_service(self.ini)

    def configure(self, **settings: str | int | float) -> None:
        """Change pgbouncer.ini settings and RELOAD (``pool_mode``, ``server_lifetime``, ...)."""
        if "pool_mode" in settings:
            self.pool_mode = str(settings.pop("pool_mode"))
        self.settings.update(settings)
        self._write_ini()
        if self.is_running():
            self.reload()

    def set_password(self, role: str, new: str) -> None:
        """Tell PgBouncer a role's new password (``auth="file"``): rewrite the auth_file and RELOAD.

        With ``auth="query"`` there is nothing to do (PgBouncer asks the database at each login), and
        this only records the password for ``dsn()``.
        """
        self.passwords[role] = new
        if self.auth == "file":
            self._write_userlist()
            if self.is_running():
                self.reload()

    # -- life cycle -------------------------------------------------------------------------------

    def start(self, timeout: float = 15) -> float:
        """Start PgBouncer and wait until it accepts TCP connections; the seconds it took.
        A no-op (0.0) if it runs. Raises ClusterError with its log's tail if it exits or does not listen."""
        if self.is_running():
            return 0.0
        t0 = time.monotonic()
        self.process = spawn([self.program, str(self.ini)], self.logfile)

        def listening() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise ClusterError(
                    f"pgbouncer exited at start (exit {self.process.returncode})\n{log_tail(self.logfile)}"
                )
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(
            listening,
            timeout,
            f"pgbouncer to listen on port {self.port}",
            interval=0.01,
            detail=lambda: log_tail(self.logfile),
        )
        took = time.monotonic() - t0
        log.info(
            "pgbouncer (%s mode) started on port %d in front of port %d (%.2fs)",
            self.pool_mode,
            self.port,
            self.cluster.port,
            took,
        )
        return took

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.is_running() and self.process else None

    def stop(self, timeout: float = 10) -> None:
        """Shut PgBouncer down at once (SIGTERM: clients are disconnected); SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("pgbouncer %d ignored SIGTERM for %gs; killing it", self.process.pid, timeout)
            self.process.kill()
            self.process.wait(timeout)

    def restart(self) -> float:
        """Stop and start again on the same port (every client and server connection is dropped)."""
        t0 = time.monotonic()
        self.stop()
        self.start()
        return time.monotonic() - t0

    def kill9(self) -> None:
        """SIGKILL PgBouncer, as a crash would; ``start()`` brings it back."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def close(self) -> None:
        """Stop PgBouncer and remove its work folder. Idempotent."""
        if self._closed:
            return
        self._closed = True
        untrack(self)
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PgBouncer {self.pool_mode} port={self.port} -> {self.cluster.port}>"

    def stats(self) -> ProcessStats:
        """``process_stats`` of the PgBouncer process (one process: all its connections are fds)."""
        if self.pid is None:
            raise ClusterError("pgbouncer is not running")
        return process_stats(self.pid)

    # -- connections ------------------------------------------------------------------------------

    def dsn(
        self, user: str | None = None, password: str | None = None, *, dbname: str = "postgres", **params: Any
    ) -> str:
        """A connection string through PgBouncer for ``user`` (default: the cluster's first application
        role) with ``password`` (default: its current password); ``params``: other libpq parameters."""
        if self.tls:
            params.setdefault("sslmode", "require")
        direct = self.cluster.dsn(user, password, dbname=dbname, **params)
        return make_conninfo(direct, port=self.port)

    def admin_dsn(self) -> str:
        """The admin console (database ``pgbouncer``); it speaks the simple query protocol only."""
        tls = {"sslmode": "require"} if self.tls else {}
        return make_conninfo(
            "",
            host="127.0.0.1",
            port=self.port,
            dbname="pgbouncer",
            user=ADMIN_USER,
            password=self.admin_password,
            **tls,
        )

    def command(self, text: str) -> list[dict[str, Any]]:
        """Run one admin console command (``SHOW POOLS``, ``RELOAD``, ``PAUSE``, ``RECONNECT`` ...); its rows.

        Raises ClusterError if PgBouncer refuses it or cannot be reached.
        """
        try:
            with psycopg.connect(
                self.admin_dsn(), autocommit=True, prepare_threshold=None, connect_timeout=5, row_factory=dict_row
            ) as conn:
                cur = conn.execute(text.encode())  # no parameters: psycopg sends a simple query
                return list(cur.fetchall()) if cur.description else []
        except psycopg.Error as exc:
            raise ClusterError(f"pgbouncer admin command {text!r} failed: {exc}\n{log_tail(self.logfile)}") from exc

    def show(self, what: str) -> list[dict[str, Any]]:
        """``SHOW <what>`` on the admin console (POOLS, CLIENTS, SERVERS, STATS, CONFIG ...)."""
        if not what.replace("_", "").isalnum():
            raise ValueError(f"not a SHOW subject: {what!r}")
        return self.command(f"SHOW {what}")

    def reload(self) -> None:
        """RELOAD: re-read pgbouncer.ini and the auth_file."""
        self.command("RELOAD")

    def pools(self) -> list[dict[str, Any]]:
        """``SHOW POOLS``, without the admin console's own pool."""
        return [p for p in self.show("POOLS") if p["database"] != "pgbouncer"]

    def server_connections(self) -> int:
        """Server connections PgBouncer holds to the cluster (active, idle, used, tested, logging in)."""
        return sum(p["sv_active"] + p["sv_idle"] + p["sv_used"] + p["sv_tested"] + p["sv_login"] for p in self.pools())
