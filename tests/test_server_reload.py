"""`pgfeatures serve` follows its definitions without a restart: POST /v1/admin/reload (token required)
and SIGHUP read the definitions file again, compile and prepare the new readers, then swap them in;
requests in flight finish on the old ones, a file that fails to load or drifts leaves the old one
serving and says why, and /v1/services and /metrics show the fingerprint in use."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql

from pgfeatures.definitions import Registry
from pgfeatures.evolve.apply import apply
from pgfeatures.server import ServerConfig
from support import server_data as data
from support.inprocess import running_app
from support.serve import ServeProcess

TOKEN = "reload-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
V1 = """schema = "{schema}"
[entities.user]
key = "bigint"
[tables.t]
entity = "user"
[tables.t.features]
a = "integer"
b = "integer"
[services.s]
features = ["t.a", "t.b"]
materialize = true
"""
V2 = V1.replace('b = "integer"', 'b = "integer"\nc = "integer"').replace('["t.a", "t.b"]', '["t.c", "t.b", "t.a"]')


def setup(conn: psycopg.Connection, schema: str, path: Path) -> Registry:
    path.write_text(V1.format(schema=schema))
    registry = Registry.from_toml(path)
    apply(conn, registry)
    conn.execute(
        sql.SQL("INSERT INTO {} (user_id, a, b) SELECT g, g * 10 + 1, g * 10 + 2 FROM generate_series(1, 50) g").format(
            sql.Identifier(schema, "t")
        )
    )
    apply(conn, registry)  # build the serving rows with the rows in
    return registry


def change(conn: psycopg.Connection, schema: str, path: Path) -> Registry:
    """The definitions file changed and applied (a feature added, the service's order changed)."""
    path.write_text(V2.format(schema=schema))
    registry = Registry.from_toml(path)
    apply(conn, registry)
    conn.execute(sql.SQL("UPDATE {} SET c = user_id * 10 + 3").format(sql.Identifier(schema, "t")))
    return registry


def right(body: dict, key: int) -> bool:
    """An answer of either definition, with this key's values in the right places."""
    features = body["features"]["t"]
    return all(v == key * 10 + {"a": 1, "b": 2, "c": 3}[f] for f, v in features.items())


def test_reload_over_http_swaps_the_definitions_and_keeps_the_old_on_error(conn, schema, dsn, tmp_path, caplog):
    path = tmp_path / "features.toml"
    old = setup(conn, schema, path)
    config = ServerConfig(dsn=dsn, definitions=str(path), prewarm=False, token=TOKEN)
    with running_app(config, headers=AUTH) as client:
        assert client.get("/v1/services/s").json()["definitions"] == old.fingerprint
        assert client.post("/v1/admin/reload", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.post("/v1/admin/reload").json() == {
            "fingerprint": old.fingerprint,
            "previous": old.fingerprint,
            "changed": False,
        }
        # a file that does not load: 400, the old definitions serve on
        path.write_text("[tables.t\n")
        broken = client.post("/v1/admin/reload")
        assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_definitions", broken.text
        assert "features.toml" in broken.json()["error"]["message"]
        # a definition the database does not have yet (not applied): 500 schema_drift, naming the fix
        path.write_text(V2.format(schema=schema))
        drifted = client.post("/v1/admin/reload")
        assert drifted.status_code == 500 and drifted.json()["error"]["type"] == "schema_drift", drifted.text
        assert "pgfeatures apply" in drifted.json()["error"]["message"]
        got = client.post("/v1/services/s", json={"key": 7, "output": "vector"})
        assert got.json()["values"] == [71, 72]
        new = change(conn, schema, path)
        caplog.clear()
        with caplog.at_level("INFO", logger="pgfeatures"):
            done = client.post("/v1/admin/reload").json()
        assert done == {"fingerprint": new.fingerprint, "previous": old.fingerprint, "changed": True}
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "reloaded" in r.getMessage()]
        assert warned == [f"pgfeatures: definitions reloaded: {old.fingerprint} -> {new.fingerprint}"]  # once
        assert client.post("/v1/services/s", json={"key": 7, "output": "vector"}).json()["values"] == [73, 72, 71]
        described = client.get("/v1/services/s").json()
        assert described["definitions"] == new.fingerprint and described["serving"] == "materialized"
        assert described["names"] == ["t.c", "t.b", "t.a"]
        metrics = client.get("/metrics").text
        assert data.metric(metrics, "pgfeatures_definitions", fingerprint=new.fingerprint) == 1
        assert data.metric(metrics, "pgfeatures_definitions", fingerprint=old.fingerprint) == 0
        paths = client.get("/openapi.json").json()["paths"]
        assert "c" in str(paths["/v1/services/s"])  # the document follows the definitions


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_a_real_serve_under_load_without_a_failed_request(conn, schema, dsn, tmp_path, workers):
    path = tmp_path / "features.toml"
    old = setup(conn, schema, path)
    failures: list[str] = []
    answers = {"old": 0, "new": 0}
    stop = threading.Event()
    with ServeProcess(
        "--dsn", dsn, "-d", str(path), "--workers", str(workers), "--no-prewarm", env={"PGFEATURES_TOKEN": TOKEN}
    ) as server:

        def client(seed: int) -> None:
            with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as http:
                key = seed
                while not stop.is_set():
                    key = key % 50 + 1
                    try:
                        r = http.post("/v1/services/s", json={"key": key})
                    except httpx.HTTPError as exc:
                        failures.append(f"{type(exc).__name__}: {exc}")
                        continue
                    if r.status_code != 200 or not right(r.json(), key):
                        failures.append(f"{r.status_code}: {r.text[:200]}")
                    else:
                        answers["new" if "c" in r.json()["features"]["t"] else "old"] += 1

        def answered(kind: str, at_least: int) -> None:
            """Until ``at_least`` requests were answered by the ``kind`` definitions (under load, before and after)."""
            deadline = time.monotonic() + 30
            while answers[kind] < at_least and not failures:
                assert time.monotonic() < deadline, answers
                time.sleep(0.05)

        # /readyz answered by one worker says nothing of the other: wait until every worker has warmed up
        # (a request the other one took before would be a 503 not_ready, not a reload's failure).
        deadline = time.monotonic() + 30
        while data.metric(httpx.get(f"{server.url}/metrics", headers=AUTH).text, "pgfeatures_ready") != workers:
            assert time.monotonic() < deadline, "the workers never all became ready"
            time.sleep(0.05)
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        answered("old", 21)
        new = change(conn, schema, path)
        server.proc.send_signal(signal.SIGHUP)  # the supervisor with several workers, the worker itself with one
        deadline = time.monotonic() + 30
        while True:
            metrics = httpx.get(f"{server.url}/metrics", headers=AUTH).text
            if data.metric(metrics, "pgfeatures_definitions", fingerprint=new.fingerprint) == workers:
                break
            assert time.monotonic() < deadline, metrics
            time.sleep(0.1)
        answered("new", 21)
        stop.set()
        for t in threads:
            t.join(30)
        assert server.proc.poll() is None  # still running: reloaded, not restarted or killed
    assert not failures, failures[:5]
    assert answers["old"] > 20 and answers["new"] > 20, answers
    assert old.fingerprint != new.fingerprint
