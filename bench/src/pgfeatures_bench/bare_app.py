"""The floor of a Python read server on uvicorn: a bare ASGI app that answers ``GET /healthz`` and, for
``POST /v1/services/{any}`` with ``{"key": hex}``, reads a materialized service's serving row with one
prepared statement on one psycopg async connection and answers its vector as JSON, real values printed
as float32 (``{"key", "values", "status"}``, as ``pgfeatures serve`` answers) and nothing else: no
auth, limits, metrics, deadlines, pool, validation or error shapes.

``pgfeatures bench-serve-path`` runs it under uvicorn with ``pgfeatures serve``'s own HTTP protocol
(``pgfeatures.server.protocol``), beside ``pgfeatures serve``: what is left between the two is the
service's own work; what is left between it and ``/healthz`` + the library's read is the price of a
database read from inside an asyncio HTTP server. Settings from ``$PGFEATURES_BENCH_BARE``: JSON
``{"dsn", "sql", "spans": [[table, first, end, stamp], ...], "size"}``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import orjson
import psycopg

HEALTHY = b'{"status":"alive"}'
JSON_HEADERS = [(b"content-type", b"application/json")]
SETTINGS_ENV = "PGFEATURES_BENCH_BARE"


class BareApp:
    def __init__(self, settings: dict[str, Any]):
        self.dsn = settings["dsn"]
        self.sql = settings["sql"].encode()
        self.spans = [tuple(s) for s in settings["spans"]]
        self.size = settings["size"]
        self.cur: psycopg.AsyncRawCursor[Any] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
                    self.cur = psycopg.AsyncRawCursor(conn)
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self.cur is not None:
                        await self.cur.connection.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["method"] == "GET":  # /healthz, /readyz
            await self.answer(send, HEALTHY)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        shown = orjson.loads(body)["key"]
        assert self.cur is not None
        await self.cur.execute(self.sql, (bytes.fromhex(shown),), prepare=True, binary=True)
        row = await self.cur.fetchone()
        status = {}
        if row is None:
            values: Any = [None] * self.size
            status = {name: "missing" for name, *_ in self.spans}
        else:
            values, stamps = row
            for name, first, end, stamp in self.spans:
                if stamps[stamp] is None:
                    values[first:end] = [None] * (end - first)
                    status[name] = "missing"
                else:
                    status[name] = "present"
        shown_values: Any = np.array(values, dtype=np.float32)
        if not np.isfinite(shown_values).all():
            shown_values = [None if v is None else float(v) for v in values]
        await self.answer(
            send,
            orjson.dumps({"key": shown, "values": shown_values, "status": status}, option=orjson.OPT_SERIALIZE_NUMPY),
        )

    @staticmethod
    async def answer(send: Any, body: bytes) -> None:
        headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


app = BareApp(json.loads(os.environ.get(SETTINGS_ENV, "null")) or {"dsn": "", "sql": "", "spans": [], "size": 0})
