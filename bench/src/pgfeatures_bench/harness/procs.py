"""Processes a test or benchmark starts for itself: work folders, ports, the service user, /proc figures.

The private PostgreSQL clusters and PgBouncers of ``clusters`` and
``pgbouncer`` live in work folders ``/tmp/pgfeatures-<kind>-*``. Each folder
records which process owns it (pid and start time); ``reap_orphans()``, run
once per process before the first folder is made, stops what a crashed owner
left running there (a postmaster, a PgBouncer) and removes the folder, so a
test run killed with SIGKILL leaves nothing behind for the next one. Folders
of live owners (other test runs on the machine) are never touched.

PostgreSQL and PgBouncer both refuse to run as root: as root they run as
pgfeatures' service user (``embedded.service_user()``), which owns the
work folder; ``/tmp`` is world-traversable, so that user reaches it.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pgfeatures import embedded
from pgfeatures.errors import EmbeddedServerError

log = logging.getLogger("pgfeatures")

WORK_PREFIX = "pgfeatures-"
OWNER_FILE = "owner"
# Ports are drawn below Linux's ephemeral range (32768-60999), so an outgoing connection's
# local port cannot take one between the check and the server's bind.
PORT_RANGE = (20000, 32000)


class ClusterError(EmbeddedServerError):
    """A private cluster, replica or PgBouncer could not be created, started, stopped or queried.

    The message names the command or wait that failed and ends with the tail of the process's log.
    """


# -- small helpers ---------------------------------------------------------------------------------

_ports_given: set[int] = set()
_ports_lock = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, never handed out before by this process.

    Raises ClusterError when 200 random tries in ``PORT_RANGE`` all find the port taken.
    """
    with _ports_lock:
        for _ in range(200):
            port = random.randint(*PORT_RANGE)
            if port in _ports_given:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _ports_given.add(port)
            return port
    raise ClusterError(f"no free TCP port found in {PORT_RANGE[0]}..{PORT_RANGE[1]} on 127.0.0.1")


@dataclass(frozen=True)
class ProcessStats:
    """One process's resource use, from /proc."""

    pid: int
    rss_bytes: int
    open_fds: int
    threads: int


def process_stats(pid: int) -> ProcessStats:
    """Resident memory, open file descriptors and threads of ``pid`` (Linux /proc).

    Raises ProcessLookupError if the process does not exist (any more), PermissionError if its
    /proc entries are not readable (another user's process, not root).
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError as exc:
        raise ProcessLookupError(f"no process {pid}") from exc
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kb = int(fields.get("VmRSS", "0 kB").split()[0])  # a zombie has no VmRSS
    return ProcessStats(pid=pid, rss_bytes=rss_kb * 1024, open_fds=fds, threads=int(fields["Threads"]))


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    interval: float = 0.02,
    detail: Callable[[], str] | None = None,
) -> float:
    """Poll ``check`` until it returns true; the seconds it took. Raises ClusterError naming ``what`` on timeout."""
    t0 = time.monotonic()
    while True:
        if check():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            extra = f"\n{detail()}" if detail else ""
            raise ClusterError(f"timed out after {timeout:g}s waiting for {what}{extra}")
        time.sleep(interval)


def log_tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, for error messages ('' if it does not exist)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    return f"--- last lines of {path} ---\n" + "\n".join(text[-lines:])


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


# -- running commands as the service user ----------------------------------------------------------


def service_ids() -> tuple[int, int] | None:
    """(uid, gid) that PostgreSQL and PgBouncer run as: the service user as root, else None (ourselves)."""
    user = embedded.service_user()
    return (user.pw_uid, user.pw_gid) if user else None


def _as_service() -> dict[str, object]:
    ids = service_ids()
    if ids is None:
        return {}
    return {"user": ids[0], "group": ids[1], "extra_groups": []}


def run(
    args: Sequence[str], *, logfile: Path | None = None, timeout: float = 60, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a server program as the service user; its output on success.

    Raises ClusterError with the program's output and ``logfile``'s tail when it fails or times out.
    """
    full_env = {**os.environ, **env} if env else None
    try:
        return subprocess.run(
            list(args),
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
            env=full_env,
            **_as_service(),
        )  # type: ignore[call-overload]
    except subprocess.CalledProcessError as exc:
        output = (exc.stderr or "").strip() or (exc.stdout or "").strip()
        raise ClusterError(
            f"{Path(args[0]).name} failed (exit {exc.returncode}): {output}\n{log_tail(logfile) if logfile else ''}"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(
            f"{Path(args[0]).name} timed out after {timeout:g}s\n{log_tail(logfile) if logfile else ''}"
        ) from exc


def spawn(args: Sequence[str], logfile: Path) -> subprocess.Popen[bytes]:
    """Start a long-running program as the service user, its output appended to ``logfile``."""
    with open(logfile, "ab") as out:
        return subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd="/",
            start_new_session=True,
            **_as_service(),
        )  # type: ignore[call-overload]


def give_to_service(path: Path) -> None:
    """Make ``path`` owned by the service user (when root), so the server may read or write it."""
    ids = service_ids()
    if ids:
        os.chown(path, *ids)


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for CN=localhost in ``folder``: (key, certificate), owned by the service user.

    Raises ClusterError if the openssl program is missing or fails.
    """
    openssl = shutil.which("openssl")
    if not openssl:
        raise ClusterError("TLS needs the openssl program to make a certificate (apt-get install openssl)")
    key, crt = folder / "server.key", folder / "server.crt"
    try:
        subprocess.run(
            [
                openssl,
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-keyout",
                str(key),
                "-out",
                str(crt),
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.CalledProcessError as exc:
        raise ClusterError(f"openssl could not make a certificate: {exc.stderr.strip()}") from exc
    for path in (key, crt):
        give_to_service(path)
    key.chmod(0o600)
    return key, crt


# -- work folders and clean-up ---------------------------------------------------------------------


class Closeable(Protocol):
    def close(self) -> None: ...


_live: list[Closeable] = []
_live_lock = threading.Lock()
_reaped = False


def track(obj: Closeable) -> None:
    """Close ``obj`` at interpreter exit if it is still open then (newest first)."""
    with _live_lock:
        _live.append(obj)


def untrack(obj: Closeable) -> None:
    with _live_lock:
        if obj in _live:
            _live.remove(obj)


@atexit.register
def _close_all() -> None:
    while True:
        with _live_lock:
            if not _live:
                return
            obj = _live.pop()
        try:
            obj.close()
        except Exception:  # noqa: BLE001 - exiting: close what we can, report the rest
            log.exception("could not close %r at exit", obj)


def make_workdir(kind: str) -> Path:
    """A new work folder ``/tmp/pgfeatures-<kind>-*`` owned by the service user and marked as ours.

    Reaps orphaned folders first (once per process).
    """
    global _reaped
    if not _reaped:
        _reaped = True
        reap_orphans()
    # /tmp, not a private temp dir: the service user must be able to traverse every parent.
    path = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{kind}-", dir="/tmp"))
    (path / OWNER_FILE).write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
    path.chmod(0o755)
    give_to_service(path)
    return path


def _owner_alive(folder: Path) -> bool:
    try:
        pid_text, start = (folder / OWNER_FILE).read_text().split()
        return pid_alive(int(pid_text)) and _start_time(int(pid_text)) == start
    except (FileNotFoundError, ValueError):
        return True  # no readable marker: not ours to judge


def _kill_pidfile(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return
    cmdline = Path(f"/proc/{pid}/cmdline")
    try:
        if not any(name in cmdline.read_bytes() for name in (b"postgres", b"pgbouncer")):
            return  # the pid was reused by an unrelated program
    except FileNotFoundError:
        return
    with_children = [pid, *child_pids(pid)]
    for p in with_children:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in with_children:
        deadline = time.monotonic() + 10
        while pid_alive(p) and time.monotonic() < deadline:
            time.sleep(0.02)


def reap_orphans() -> list[Path]:
    """Stop what crashed owners left running under ``/tmp/pgfeatures-*`` and remove their folders.

    Only folders with an owner marker whose owner process is gone are touched (other pgfeatures
    folders, such as bench-schema's, have none). Returns the folders removed.
    """
    removed = []
    for folder in Path("/tmp").glob(f"{WORK_PREFIX}*-*"):
        if not folder.is_dir() or _owner_alive(folder):
            continue
        for pidfile in [*folder.glob("*/postmaster.pid"), *folder.glob("*.pid")]:
            _kill_pidfile(pidfile)
        shutil.rmtree(folder, ignore_errors=True)
        log.warning("removed %s, left behind by a process that is gone", folder)
        removed.append(folder)
    return removed


def child_pids(pid: int) -> list[int]:
    """The pids of ``pid``'s direct children (for a postmaster: its backends and auxiliary processes)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out
