"""``pgfeatures serve`` against its floor (``pgfeatures bench-serve-path``): a materialized service's
vector over HTTP next to ``GET /healthz`` (the HTTP stack's own cost, client included) and the library's
read of the same vector, in one run.

Issue 21's target: ``POST /v1/services/{name}`` (``"output": "vector"``, one keep-alive client) p50 <=
``/healthz`` p50 + the library's p50 for the same read + 0.05 ms. Uses the demo data and ``hot_mat``, the
materialized service ``pgfeatures bench-hot-path`` builds (built here when it is not, rebuilt with ``--build``). One ``pgfeatures
serve --workers 1``; the forms are interleaved round by round, every HTTP answer checked equal to the
library's first; the server's CPU per request is read from ``/proc`` over each block of requests.

Two clients, each one keep-alive connection (``--clients``): ``raw``, a socket that sends each request in
one write and reads a Content-Length answer (the server's own cost, nearly nothing of the client's), and
``httpx`` (what a Python caller typically uses: its own CPU, and it sends a POST's headers and body in
two writes). The floor is computed per client.

Beside them, what is reachable (``--bare``, on by default): the same forms against a bare ASGI app
(``bare_app.py``: the same serving-row read on one psycopg async connection, no auth, limits, metrics or
deadlines) under uvicorn with the service's own HTTP protocol; and the library's read through
``AsyncFeatureStore`` on uvloop, what the server itself calls.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pgfeatures import AsyncFeatureStore, FeatureStore
from pgfeatures.definitions import Registry
from pgfeatures.demo import entity_key
from pgfeatures.errors import BenchmarkError

from .harness.serve import ServeProcess
from .hot_path import MAT, Hand, build, registry
from .http import cpu_seconds, post_request

CLIENTS = ("raw", "httpx")
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"
SLACK_MS = 0.05  # the target: serve vector p50 <= healthz p50 + library p50 + this


@dataclass(frozen=True)
class ServePathConfig:
    rounds: int = field(default=10, metadata={"help": "rounds; each times every form once, in a shuffled order"})
    requests: int = field(default=200, metadata={"help": "timed requests per form per round"})
    clients: tuple[str, ...] = field(default=CLIENTS, metadata={"help": "HTTP clients: raw,httpx"})
    bare: bool = field(
        default=True, metadata={"help": "also time a bare ASGI app doing the same read, and the async library"}
    )
    build: bool = field(
        default=False, metadata={"help": f"materialize the service {MAT} first even if it is (it is built when not)"}
    )
    check: int = field(default=50, metadata={"help": "keys every HTTP answer is checked equal to the library's on"})
    schema: str = field(default="demo", metadata={"help": "schema of the demo tables (pgfeatures demo loads demo)"})
    tables: int = field(default=30, metadata={"help": "demo tables read (t00...)"})
    entities: int = field(default=100_000, metadata={"help": "demo entities the keys are drawn from"})
    seed: int = field(default=0, metadata={"help": "seed of the keys drawn and of the order of the forms"})

    def __post_init__(self) -> None:
        unknown = set(self.clients) - set(CLIENTS)
        if unknown or not self.clients:
            raise ValueError(f"--clients: one or more of {', '.join(CLIENTS)}, got {', '.join(self.clients)}")


def definitions(reg: Registry) -> str:
    """The definitions file of the demo tables and ``hot_mat``, for ``pgfeatures serve``."""
    lines = [f'schema = "{reg.schema}"']
    for name, table in reg.tables.items():
        lines += [f"[tables.{name}]", f"[tables.{name}.features]"]
        lines += [f'{f.name} = "{f.type.name}"' for f in table.features]
    refs = ", ".join(f'"{t}.*"' for t in reg.tables)
    lines += [f"[services.{MAT}]", f"features = [{refs}]", "materialize = true"]
    return "\n".join(lines) + "\n"


class RawClient:
    """One keep-alive connection: a request in one write, a Content-Length answer read back. A connection
    the server closed while it was idle (its keep-alive timeout) is opened again and the request resent."""

    def __init__(self, port: int):
        self.port = port
        self.sock = self._connect()

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def request(self, raw: bytes) -> bytes:
        try:
            return self._request(raw)
        except ConnectionError:  # closed while idle: once more on a new connection
            self.sock.close()
            self.sock = self._connect()
            return self._request(raw)

    def _request(self, raw: bytes) -> bytes:
        self.sock.sendall(raw)
        data = b""
        while (end := data.find(b"\r\n\r\n")) < 0:
            data += self._recv()
        head, body = data[:end].lower(), data[end + 4 :]
        at = head.index(b"content-length:") + 15
        length = int(head[at : head.find(b"\r\n", at) if b"\r\n" in head[at:] else len(head)])
        while len(body) < length:
            body += self._recv()
        if not head.startswith(b"http/1.1 200"):
            raise RuntimeError(f"answered {head[:12]!r}: {body[:200]!r}")
        return body

    def _recv(self) -> bytes:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionResetError("the server closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


class BareProcess(ServeProcess):
    """``bare_app`` under uvicorn (uvloop, the service's HTTP protocol), on a free loopback port."""

    def __init__(self, dsn: str, reg: Registry):
        from pgfeatures.server import ServerConfig

        from .bare_app import SETTINGS_ENV

        hand = Hand(dsn, reg)
        hand.close()
        spans = [[name, first, end, stamp] for name, _, first, end, stamp in hand.spans]
        settings = {"dsn": dsn, "sql": hand.serving_sql.decode(), "spans": spans, "size": hand.size}
        env = {SETTINGS_ENV: json.dumps(settings), "PGFEATURES_SERVER_CONFIG": ServerConfig(dsn=dsn).to_json()}
        super().__init__(env=env)
        self.cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "pgfeatures_bench.bare_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--loop",
            "uvloop",
            "--http",
            "pgfeatures.server.protocol:HeaderTimeoutProtocol",
            "--timeout-keep-alive",
            "60",  # as pgfeatures serve's keep_alive: the connections idle while the other forms run
            "--no-access-log",
            "--log-level",
            "warning",
        ]


def _same(got: list[Any], want: list[Any]) -> bool:
    return len(got) == len(want) and all(
        (g is None) == (w is None) and (g is None or math.isclose(g, float(w), rel_tol=1e-6)) for g, w in zip(got, want)
    )


Form = Callable[[list[bytes]], list[float]]  # times one request per key, returns the latencies (s)


def timed(call: Callable[[bytes], Any]) -> Form:
    def block(keys: list[bytes]) -> list[float]:
        out = []
        for key in keys:
            t0 = time.perf_counter()
            call(key)
            out.append(time.perf_counter() - t0)
        return out

    return block


@contextlib.contextmanager
def async_library(reg: Registry, dsn: str) -> Iterator[Form]:
    """The library's vector read through ``AsyncFeatureStore`` on uvloop (one loop, a block per call)."""
    import uvloop

    loop = uvloop.new_event_loop()
    store = AsyncFeatureStore(reg, dsn, write_pool_size=0)
    loop.run_until_complete(store.open())

    async def run(keys: list[bytes]) -> list[float]:
        out = []
        for key in keys:
            t0 = time.perf_counter()
            await store.get_service(MAT, key, output="list")
            out.append(time.perf_counter() - t0)
        return out

    try:
        yield lambda keys: loop.run_until_complete(run(keys))
    finally:
        loop.run_until_complete(store.close())
        loop.close()


def _raw_calls(port: int, stack: contextlib.ExitStack) -> tuple[Callable[[bytes], Any], Callable[[bytes], Any]]:
    raw = RawClient(port)
    stack.callback(raw.close)
    path = f"/v1/services/{MAT}"

    def health(key: bytes) -> Any:
        return raw.request(HEALTHZ)

    def vector(key: bytes) -> Any:
        return raw.request(post_request(path, b'{"key":"%s","output":"vector"}' % key.hex().encode()))

    return health, vector


def _httpx_calls(port: int, stack: contextlib.ExitStack) -> tuple[Callable[[bytes], Any], Callable[[bytes], Any]]:
    import httpx

    http = stack.enter_context(httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10))
    path = f"/v1/services/{MAT}"

    def health(key: bytes) -> Any:
        return http.get("/healthz").raise_for_status()

    def vector(key: bytes) -> Any:
        return http.post(path, json={"key": key.hex(), "output": "vector"}).raise_for_status()

    return health, vector


def http_forms(tag: str, port: int, clients: tuple[str, ...], stack: contextlib.ExitStack) -> dict[str, Form]:
    """``{tag} {client} healthz`` and ``{tag} {client} vector`` for each client."""
    forms: dict[str, Form] = {}
    for client in clients:
        health, vector = (_raw_calls if client == "raw" else _httpx_calls)(port, stack)
        forms[f"{tag} {client} healthz"] = timed(health)
        forms[f"{tag} {client} vector"] = timed(vector)
    return forms


def run(dsn: str, config: ServePathConfig) -> dict[str, Any]:
    """Measure; the result as plain data."""
    reg = registry(config.schema, config.tables)
    if config.build or not _materialized(reg, dsn):
        build(dsn, reg)
    folder = Path(tempfile.mkdtemp(prefix="pgfeatures-serve-path-"))
    (folder / "features.toml").write_text(definitions(reg))
    rng = random.Random(config.seed)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(ServeProcess("--dsn", dsn, "-d", str(folder / "features.toml"), "--workers", "1"))
        store = stack.enter_context(FeatureStore(reg, dsn, write_pool_size=0))
        if MAT not in store.readers.materialized:
            raise BenchmarkError(
                f"{MAT} is not served from its serving rows in schema {config.schema}: run with --build"
            )
        forms: dict[str, Form] = {"library vector": timed(lambda key: store.get_service(MAT, key, output="list"))}
        pids = {}
        servers = {"serve": server}
        if config.bare:
            forms["library vector (async)"] = stack.enter_context(async_library(reg, dsn))
            servers["bare"] = stack.enter_context(BareProcess(dsn, reg))
        for tag, process in servers.items():
            for name, form in http_forms(tag, process.port, config.clients, stack).items():
                forms[name], pids[name] = form, process.pid
        _check(servers, store, config, rng)
        samples: dict[str, list[float]] = {name: [] for name in forms}
        cpu = dict.fromkeys(pids, 0.0)
        warm = [entity_key(rng.randrange(config.entities)) for _ in range(min(100, config.requests))]
        for form in forms.values():
            form(warm)
        for _ in range(config.rounds):
            order = list(forms)
            rng.shuffle(order)
            for name in order:
                keys = [entity_key(rng.randrange(config.entities)) for _ in range(config.requests)]
                before = cpu_seconds([pids[name]]) if name in pids else 0.0
                samples[name] += forms[name](keys)
                if name in pids:
                    cpu[name] += cpu_seconds([pids[name]]) - before
    n = config.rounds * config.requests
    p50 = {name: round(statistics.median(v) * 1e3, 4) for name, v in samples.items()}
    floors = []
    for tag in servers:
        for client in config.clients:
            health, vector = p50[f"{tag} {client} healthz"], p50[f"{tag} {client} vector"]
            floor = health + p50["library vector"]
            row = {
                "server": tag,
                "client": client,
                "floor_ms": round(floor, 4),
                "above_floor_ms": round(vector - floor, 4),
                "target_met": vector <= floor + SLACK_MS,
            }
            if "library vector (async)" in p50:  # the read as an asyncio server makes it
                row["above_async_floor_ms"] = round(vector - health - p50["library vector (async)"], 4)
            floors.append(row)
    return {
        "config": asdict(config),
        "p50_ms": p50,
        "server_cpu_ms_per_request": {name: round(v / n * 1e3, 4) for name, v in cpu.items()},
        "floors": floors,
    }


def _materialized(reg: Registry, dsn: str) -> bool:
    """``hot_mat``'s serving rows are built for these definitions (a store reads it from them)."""
    with FeatureStore(reg, dsn, pool_size=1, write_pool_size=0) as store:
        return MAT in store.readers.materialized


def _check(servers: dict[str, ServeProcess], store: FeatureStore, config: ServePathConfig, rng: random.Random) -> None:
    """Every server's vector equals the library's on ``config.check`` keys (some absent)."""
    import httpx

    path = f"/v1/services/{MAT}"
    for tag, process in servers.items():
        with httpx.Client(base_url=f"http://127.0.0.1:{process.port}", timeout=10) as http:
            if tag == "serve":
                assert http.get(path).json()["serving"] == "materialized"
            for _ in range(config.check):
                key = entity_key(rng.randrange(int(config.entities * 1.05)))
                got = http.post(path, json={"key": key.hex(), "output": "vector"}).json()
                want = store.get_service(MAT, key, output="list")
                if not (_same(got["values"], list(want.values)) and got["status"] == dict(want.status)):
                    raise RuntimeError(f"{tag}: the vector of {key.hex()} differs from the library's")


def report(result: dict[str, Any]) -> list[str]:
    """The result as lines of text."""
    cpu = result["server_cpu_ms_per_request"]
    lines = [f"{'form':28} {'p50 ms':>8} {'server CPU ms/request':>22}"]
    for name, value in result["p50_ms"].items():
        shown = f"{cpu[name]:22.3f}" if name in cpu else ""
        lines.append(f"{name:28} {value:8.3f} {shown}")
    lines += ["", f"vector p50 - (healthz p50 + library vector p50); target <= {SLACK_MS} ms (issue 21):"]
    for f in result["floors"]:
        verdict = "PASS" if f["target_met"] else "MISS"
        line = f"  {f['server']:6} {f['client']:6} {f['above_floor_ms']:7.3f} ms above {f['floor_ms']:.3f}  {verdict}"
        if "above_async_floor_ms" in f:
            line += f"   ({f['above_async_floor_ms']:.3f} ms above healthz + the async library's read)"
        lines.append(line)
    return lines
