"""The hot reads' own door (``HotReads``: ``POST /v1/features`` and ``POST /v1/services/{name}`` served
ahead of Starlette's middleware stack and router) answers every request exactly as the Starlette routes
do: status, headers, body, and the metrics it records. Each request is sent twice to one in-process app,
through the app as it serves (the door) and through Starlette's own ``__call__`` (the routes), and the two
answers and metric deltas are compared."""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest
from starlette.applications import Starlette

from pgfeatures.definitions import Registry
from pgfeatures.server import ServerConfig
from pgfeatures.server.app import HotReads
from support import serving_data as data
from support.inprocess import app_client

TOKEN = "door-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON_TYPE = {"Content-Type": "application/json"}
FRAUD_KEYS = {"user": 42, "merchant": "m-1", "device": "dev-a"}
COUNTED = ("pgfeatures_http_requests_total", "pgfeatures_service_requests_total", "_count{")

# (path, body, headers): every request the door takes, and some it answers with an error
CASES: list[tuple[str, Any, dict[str, str]]] = [
    ("/v1/services/user_vec", {"key": 42, "output": "vector"}, AUTH),
    ("/v1/services/user_vec", {"key": 99, "output": "vector"}, AUTH),
    ("/v1/services/user_vec", {"key": 43}, AUTH | {"Accept": "application/octet-stream"}),
    ("/v1/services/user_vec", {"key": 43, "output": "dict"}, AUTH | {"Accept": "application/octet-stream"}),
    ("/v1/services/fraud_v1", {"key": FRAUD_KEYS}, AUTH),
    ("/v1/services/fraud_v1", {"key": FRAUD_KEYS, "features": ["user_stats.ctr_7d"], "output": "vector"}, AUTH),
    ("/v1/services/fraud_v1", {"key": 42}, AUTH),
    ("/v1/services/nope", {"key": 42}, AUTH),
    ("/v1/services/user_vec", b"{not json", AUTH),
    ("/v1/services/user_vec", [1, 2], AUTH),
    ("/v1/services/user_vec", {"key": 42, "bogus": 1}, AUTH),
    ("/v1/services/user_vec", {"output": "vector"}, AUTH),
    ("/v1/services/user_vec", {"key": 42, "output": "table"}, AUTH),
    ("/v1/services/user_vec", {"key": "x" * (2 << 20)}, AUTH),
    ("/v1/services/user_vec", {"key": 42}, {}),
    ("/v1/services/user_vec", {"key": 42}, {"Authorization": "Bearer wrong"}),
    ("/v1/services/user_vec", {"key": 42}, {"Authorization": "Bearer wrong"} | AUTH),
    ("/v1/features", {"key": 42, "tables": ["user_stats", "user_emb"]}, AUTH),
    ("/v1/features", {"key": {"user": 42, "merchant": "m-1"}, "features": ["merchant_risk.chargeback_rate"]}, AUTH),
    ("/v1/features", {"key": "zz", "tables": ["user_stats"]}, AUTH),
    ("/v1/features", {"key": 42, "tables": ["nope"]}, AUTH),
    ("/v1/features", {"key": 42}, {}),
]


@pytest.fixture(scope="module")
def defs(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Registry]]:
    schema = f"test_door_{uuid.uuid4().hex[:10]}"
    yield data.create(dsn, schema, tmp_path_factory.mktemp("door"))
    data.drop(dsn, schema)


def counted(app: Starlette) -> dict[str, float]:
    """The request counters and histogram counts of the app's metrics, by series."""
    text = generate_latest(app.state.service.metrics.registry).decode()
    out = {}
    for line in text.splitlines():
        if not line.startswith("#") and any(c in line for c in COUNTED):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def test_the_door_answers_as_the_routes(dsn: str, defs: tuple[Path, Registry]) -> None:
    config = ServerConfig(dsn=dsn, definitions=str(defs[0]), prewarm=False, pool_size=2, token=TOKEN)

    async def run() -> None:
        async with app_client(config, ready=False) as (app, door):
            routes = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=functools.partial(Starlette.__call__, app)), base_url=door.base_url
            )
            async with asyncio.timeout(30):
                while not app.state.service.ready:
                    await asyncio.sleep(0.02)
            through_door: list[str] = []
            hot = app.hot

            async def door_counted(scope: Any, receive: Any, send: Any, name: str) -> None:
                through_door.append(scope["path"])
                await hot(scope, receive, send, name)

            app.hot = door_counted
            for path, body, headers in CASES:
                content = body if isinstance(body, bytes) else json.dumps(body).encode()
                scope = {"type": "http", "method": "POST", "path": path, "root_path": ""}
                assert HotReads.match(scope) is not None, path
                answers, deltas = [], []
                for client in (door, routes):
                    before = counted(app)
                    answers.append(await client.post(path, content=content, headers=JSON_TYPE | headers))
                    deltas.append(delta(before, counted(app)))
                door_answer, route_answer = answers
                case = f"{path} {body if len(content) < 200 else '(large)'} {headers}"
                assert door_answer.status_code == route_answer.status_code, case
                assert door_answer.headers.multi_items() == route_answer.headers.multi_items(), case
                assert door_answer.content == route_answer.content, case
                assert deltas[0] == deltas[1] and deltas[0], case
            await routes.aclose()
            assert through_door == [path for path, _, _ in CASES]  # and the routes' answers came from Starlette

    asyncio.run(run())


@pytest.mark.parametrize(
    "method, path, root_path",
    [
        ("GET", "/v1/services/user_vec", ""),
        ("POST", "/v1/services/user_vec/batch", ""),
        ("POST", "/v1/services/a/b", ""),
        ("POST", "/v1/services/", ""),
        ("POST", "/v1/features/", ""),
        ("POST", "/v1/features/batch", ""),
        ("POST", "/v1/services/user_vec", "/api"),
        ("post", "/v1/features", ""),
    ],
)
def test_every_other_request_goes_to_starlette(method: str, path: str, root_path: str) -> None:
    assert HotReads.match({"type": "http", "method": method, "path": path, "root_path": root_path}) is None
