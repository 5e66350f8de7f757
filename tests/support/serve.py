"""A real ``pgfeatures serve`` process for the tests that need one: startup, workers, signals,
the database restarting under it, socket-level behaviour, memory.

Everything else runs the app in-process (``support.inprocess``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def children(pid: int) -> list[int]:
    """Direct child processes (Linux /proc)."""
    out: list[int] = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            out.extend(int(c) for c in path.read_text().split())
    return out


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


class ServeProcess:
    """``pgfeatures serve`` on a free loopback port, as a subprocess of the test.

    The child's environment is this one without ``PGFEATURES_*`` and
    ``PROMETHEUS_MULTIPROC_DIR`` (the flags and ``env`` say everything), plus ``env``.
    """

    def __init__(self, *flags: str, env: Mapping[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [
            sys.executable,
            "-m",
            "pgfeatures.cli",
            "serve",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            *flags,
        ]
        drop = ("PGFEATURES_", "PROMETHEUS_MULTIPROC_DIR")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(drop)} | dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self, ready_within: float | None = 60) -> ServeProcess:
        """Start it; unless ``ready_within`` is None, wait until ``/readyz`` answers 200."""
        self.proc = subprocess.Popen(self.cmd, env=self.env)
        if ready_within is not None:
            self.wait_ready(ready_within)
        return self

    def wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgfeatures serve exited with {self.proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"pgfeatures serve did not become ready within {timeout:g} s")
            time.sleep(0.05)

    def wait_alive(self, timeout: float) -> None:
        """Wait until ``/healthz`` answers (the service may not be ready)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgfeatures serve exited with {self.proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"pgfeatures serve did not answer /healthz within {timeout:g} s")
            time.sleep(0.05)

    def workers(self) -> list[int]:
        """The worker processes (with ``--workers`` > 1; uvicorn's supervisor is ``pid``)."""
        return [p for p in children(self.pid) if alive(p) and b"spawn_main" in _cmdline(p)]

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (graceful: in-flight requests finish), then SIGKILL after ``timeout``; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> ServeProcess:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
