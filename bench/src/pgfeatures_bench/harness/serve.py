"""A real ``pgfeatures serve`` process on a free loopback port, and the ``/proc`` figures of it: the one
launcher the benchmarks (``bench-http``, ``bench-soak``) and the tests (``tests/support/serve.py``) share.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from .procs import free_port

__all__ = ["ServeProcess", "alive", "children", "free_port", "process_tree", "rss_bytes"]


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc). Raises RuntimeError when /proc has none for it."""
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


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (uvicorn's workers), from /proc/<pid>/task/*/children."""
    out = [pid]
    for child in children(pid):
        out.extend(process_tree(child))
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
    """``pgfeatures serve`` on a free loopback port, as a child process (``python -m pgfeatures.cli serve``).

    The child's environment is this one without ``PGFEATURES_*`` and ``PROMETHEUS_MULTIPROC_DIR`` (the
    flags and ``env`` say everything), plus ``env``. It logs at ``warning`` unless a flag says otherwise.
    Its output goes to ``output`` (a file), else to this process's stderr: stdout stays the caller's (a
    benchmark's one JSON document with ``--json``).
    """

    def __init__(self, *flags: str, env: Mapping[str, str] | None = None, output: IO[Any] | None = None):
        self.output = output
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
            *flags,  # after the defaults: argparse keeps the last of a repeated option
        ]
        drop = ("PGFEATURES_", "PROMETHEUS_MULTIPROC_DIR")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(drop)} | dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self, ready_within: float | None = 60) -> ServeProcess:
        """Start it; unless ``ready_within`` is None, wait until ``/readyz`` answers 200 (RuntimeError if
        it exits first or is not ready in time)."""
        if self.output is not None:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self.output, stderr=self.output)
        else:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=2)
        if ready_within is not None:
            self.wait_ready(ready_within)
        return self

    def _wait_for(self, path: str, timeout: float, what: str) -> None:
        import httpx

        assert self.proc is not None, "not started"
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgfeatures serve exited with {self.proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}{path}", timeout=1).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"pgfeatures serve did not {what} within {timeout:g} s")
            time.sleep(0.05)

    def wait_ready(self, timeout: float) -> None:
        """Wait until ``/readyz`` answers 200."""
        self._wait_for("/readyz", timeout, "become ready")

    def wait_alive(self, timeout: float) -> None:
        """Wait until ``/healthz`` answers (the service may not be ready)."""
        self._wait_for("/healthz", timeout, "answer /healthz")

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
