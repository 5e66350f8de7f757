"""``/readyz`` is open to orchestrators, which have no token: without it, it says ready or not and a
reason class, nothing about the database (host, port, user, database name) or a credential
provider's error text; with the token (or ``probe_details``) it says everything. Real ``serve``
processes: the probe's answer is what an unauthenticated stranger on the network gets."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from psycopg.conninfo import conninfo_to_dict

from pgfeatures.server import ServerConfig
from support import server_data as data
from support.inprocess import running_app
from support.serve import ServeProcess

TOKEN = "probe-token-5b1e"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET_WORDS = "token endpoint down at vault-7.internal"

PROVIDER = f'''
def provider():
    raise RuntimeError("{SECRET_WORDS}")
'''


@pytest.fixture(scope="module")
def definitions(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    schema = f"test_probe_{uuid.uuid4().hex[:10]}"
    yield data.create(dsn, schema, tmp_path_factory.mktemp("probes"))
    data.drop(dsn, schema)


def leaks(text: str, dsn: str) -> list[str]:
    """What of the database's whereabouts and the provider's words ``text`` gives away."""
    params = conninfo_to_dict(dsn)
    told = [params[k] for k in ("host", "port", "user", "dbname") if params.get(k) and str(params[k]) in text]
    return told + [w for w in ("vault-7", "token endpoint", "RuntimeError", "provider") if w in text]


def test_not_ready_tells_a_stranger_only_the_reason_class(dsn: str, definitions: Path, tmp_path: Path) -> None:
    """Before: 503 with the database's host, port, user and name and the provider's exception text."""
    (tmp_path / "failing_provider.py").write_text(PROVIDER)
    with (
        ServeProcess(
            "--dsn",
            dsn,
            "--definitions",
            str(definitions),
            "--no-prewarm",
            "--credentials",
            "failing_provider:provider",
            env={
                "PGFEATURES_TOKEN": TOKEN,
                "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
            },
        ).start(None) as proc,
        httpx.Client(base_url=proc.url, timeout=10) as c,
    ):
        proc.wait_alive(30)
        stranger = c.get("/readyz")
        assert stranger.status_code == 503 and stranger.headers["retry-after"]
        assert stranger.json() == {"status": "not_ready", "reason": "warming_up"}, stranger.text
        assert not leaks(stranger.text, dsn)

        insider = c.get("/readyz", headers=AUTH)
        assert insider.status_code == 503
        body = insider.json()
        assert body["status"] == "not_ready" and body["reason"] == "warming_up"
        assert SECRET_WORDS in body["message"], body  # the operator sees why
        assert "read_targets" in body and "broken_tables" in body

        wrong = c.get("/readyz", headers={"Authorization": f"Bearer {TOKEN}x"})
        assert wrong.json() == stranger.json()  # a wrong token is no token (and never a 401: probes stay open)


def test_ready_tells_a_stranger_only_ready(dsn: str, definitions: Path) -> None:
    with (
        ServeProcess(
            "--dsn", dsn, "--definitions", str(definitions), "--no-prewarm", env={"PGFEATURES_TOKEN": TOKEN}
        ) as proc,
        httpx.Client(base_url=proc.url, timeout=10) as c,
    ):
        stranger = c.get("/readyz")
        assert stranger.status_code == 200 and stranger.json() == {"status": "ready"}, stranger.text
        insider = c.get("/readyz", headers=AUTH).json()
        assert insider["status"] == "ready" and insider["read_targets"] and insider["broken_tables"] == {}
        assert leaks(str(insider["read_targets"]), dsn), "the details name the read targets"


def test_probe_details_shows_them_without_the_token(dsn: str, definitions: Path) -> None:
    config = ServerConfig(dsn=dsn, definitions=str(definitions), prewarm=False, token=TOKEN, probe_details=True)
    with running_app(config) as client:
        body = client.get("/readyz").json()
    assert body["status"] == "ready" and body["read_targets"], body


def test_without_a_token_configured_everything_is_open(dsn: str, definitions: Path) -> None:
    """No token: no endpoint is guarded, so the probe's details are not either."""
    with running_app(ServerConfig(dsn=dsn, definitions=str(definitions), prewarm=False)) as client:
        body = client.get("/readyz").json()
    assert body["status"] == "ready" and body["read_targets"], body
