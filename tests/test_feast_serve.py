"""``feast serve`` on the pgfeatures online store: the HTTP answer of ``/get-online-features`` equals
the library's, for a list of features, a feature service and a ``precompute_online`` one (a real ``feast
serve`` process on a loopback port, real PostgreSQL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

pytest.importorskip("feast", reason="the feast extra is not installed (pip install 'pgfeatures[feast]')")

from feast.feature_server_utils import convert_response_to_dict  # noqa: E402

from support import feast_repo  # noqa: E402
from support.serve import free_port  # noqa: E402

STORE = "pgfeatures.feast.PgfeaturesOnlineStore"


def post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, dsn: str) -> Iterator[tuple[Any, str]]:
    """(the library's FeatureStore, the feast serve URL) of one applied and materialized repository."""
    root = tmp_path_factory.mktemp("feast_serve")
    schema = f"feast_serve_{os.getpid()}"
    store = feast_repo.make_store(root, "served", {"type": STORE, "dsn": dsn, "db_schema": schema})
    port = free_port()
    feast_bin = Path(sys.executable).parent / "feast"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [str(feast_bin), "-c", str(root), "serve", "-p", str(port), "--no-access-log"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"feast serve exited {proc.returncode}: {proc.stdout.read().decode()[-3000:]}")  # type: ignore[union-attr]
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as health:
                    if health.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail("feast serve did not answer /health within 120 s")
            time.sleep(0.2)
        yield store, url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def by_name(answer: dict[str, Any]) -> dict[str, Any]:
    """{feature: its result}: Feast orders a request's views by iterating a set, so the column order
    differs between processes (string hashing is randomized per process), for Feast's own stores too."""
    names = answer["metadata"]["feature_names"]
    assert len(set(names)) == len(names)
    return dict(zip(names, answer["results"]))


def library(store: Any, features: Any, entities: dict[str, list[Any]]) -> Any:
    """What feast serve answers, computed from the library's response (Feast's own conversion)."""
    return by_name(
        json.loads(json.dumps(convert_response_to_dict(store.get_online_features(features, entities).proto)))
    )


@pytest.mark.slow
def test_http_answer_equals_the_librarys(served: tuple[Any, str], dsn: str) -> None:
    store, url = served
    rows = feast_repo.entity_rows()
    entities = {"driver_id": [r["driver_id"] for r in rows], "customer_id": [r["customer_id"] for r in rows]}
    assert store._get_provider().async_supported.online.read  # the server takes the async path, no thread pool
    got = by_name(post(f"{url}/get-online-features", {"features": feast_repo.ALL_FEATURES, "entities": entities}))
    assert got == library(store, feast_repo.ALL_FEATURES, entities)
    statuses = {s for result in got.values() for s in result["statuses"]}
    assert {"PRESENT", "NOT_FOUND", "OUTSIDE_MAX_AGE"} <= statuses
    one = {"driver_id": [1001], "customer_id": ["c-1"]}
    got = by_name(post(f"{url}/get-online-features", {"feature_service": "driver_service", "entities": one}))
    assert got == library(store, store.get_feature_service("driver_service"), one)
    assert got["conv"]["values"] == [0.5] and got["conv"]["statuses"] == ["PRESENT"]
    # A precompute_online service: served from its serving rows, the same answer as without precompute.
    for name in (feast_repo.PRECOMPUTED, feast_repo.PLAIN):
        got = by_name(post(f"{url}/get-online-features", {"feature_service": name, "entities": entities}))
        assert got == library(store, store.get_feature_service(name), entities)
    # ... and the server reads it from the serving rows: a value written into a serving row alone is served.
    update, _ = feast_repo.serving_cell(store.repo_path, feast_repo.PRECOMPUTED, "driver_id", "driver_stats", "conv")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(update, [42.0, 1001])
        try:
            body = {"feature_service": feast_repo.PRECOMPUTED, "entities": one}
            assert by_name(post(f"{url}/get-online-features", body))["conv"]["values"] == [42.0]
        finally:
            conn.execute(update, [0.5, 1001])
