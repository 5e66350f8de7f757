"""The HTTP API end to end over a real PostgreSQL: the app in-process (its lifespan run, an HTTP
client over ASGI), plus real ``pgfeatures serve`` processes where only a process will do
(startup through the CLI, several workers).

The apps share one small test schema (see support/server_data.py): one with coalescing off and
a bearer token, its settings coming from a config file, the environment and flags at once; one
with coalescing on. Every answer is compared with the ground truth the test inserted, never
with the store.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pgfeatures.definitions import rfc3339
from pgfeatures.errors import ConfigError
from pgfeatures.server.config import ServerConfig, load_config
from support import server_data as data
from support.inprocess import app_client, running_app
from support.serve import ServeProcess

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_KEYS = 5


@pytest.fixture(scope="module")
def definitions(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    schema = f"test_srv_{uuid.uuid4().hex[:10]}"
    path = data.create(dsn, schema, tmp_path_factory.mktemp("srv"))
    yield path
    data.drop(dsn, schema)


def layered_config(dsn: str, definitions: Path) -> ServerConfig:
    """Coalescing off; max_batch_keys from the config file, token from the environment, the rest from flags."""
    file = definitions.parent / "serve.toml"
    file.write_text(f"max_batch_keys = {MAX_KEYS}\npool_size = 9\ncoalesce = true\n")
    return load_config(
        {"definitions": str(definitions), "pool_size": "2", "coalesce": False, "prewarm": False},
        environ={"PGFEATURES_DSN": dsn, "PGFEATURES_TOKEN": TOKEN, "PGFEATURES_POOL_SIZE": "7"},
        config_file=file,
    )


@pytest.fixture(scope="module")
def app(dsn: str, definitions: Path) -> Iterator[httpx.Client]:
    """The app in-process, without credentials."""
    with running_app(layered_config(dsn, definitions)) as c:
        yield c


@pytest.fixture()
def client(app: httpx.Client) -> Iterator[httpx.Client]:
    """The same app, with the bearer token."""
    app.headers.update(AUTH)
    yield app
    del app.headers["Authorization"]


# -- reads ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("i", [0, 3, 4, 7, 11])
def test_one_key_every_table(client: httpx.Client, i: int) -> None:
    r = client.post("/v1/features", json={"key": data.hexkey(i)})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body == {
        "key": data.hexkey(i),
        "features": data.expected(i),
        "status": data.status(i),
        "missing": [t for t, v in data.expected(i).items() if v is None],
    }


def test_types_survive_json(client: httpx.Client) -> None:
    profile = client.post("/v1/features", json={"key": data.hexkey(3), "tables": ["profile"]}).json()["features"][
        "profile"
    ]
    assert profile["big"] == 2**60 + 3 and isinstance(profile["big"], int)  # beyond 2^53: not through a double
    assert profile["clicks"] == 30 and isinstance(profile["clicks"], int)
    assert profile["active"] is False
    assert profile["ctr"] == 0.75


def test_subsets_in_both_notations(client: httpx.Client) -> None:
    key = data.hexkey(2)
    by_table = client.post(
        "/v1/features",
        json={"key": key, "tables": ["stats", "profile"], "features": {"profile": ["score", "updated_at"]}},
    ).json()
    assert list(by_table["features"]) == ["stats", "profile"]  # the order asked
    assert by_table["features"] == {
        "stats": data.rows("stats", 2),
        "profile": {"score": 3.0, "updated_at": rfc3339(data.updated_at(2))},
    }
    dotted = client.post("/v1/features", json={"key": key, "features": ["flags.g", "profile.clicks"]}).json()
    assert dotted["features"] == {"flags": {"g": False}, "profile": {"clicks": 20}}
    assert dotted["missing"] == []


def test_batch_in_input_order_with_duplicates_and_misses(client: httpx.Client) -> None:
    order = [4, 11, 1, 4, 6]
    r = client.post("/v1/features/batch", json={"keys": [data.hexkey(i) for i in order], "tables": ["flags", "stats"]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["key"] for x in results] == [data.hexkey(i) for i in order]
    for i, got in zip(order, results):
        assert got["features"] == data.expected(i, ("flags", "stats"))
        assert got["missing"] == [t for t in ("flags", "stats") if data.rows(t, i) is None]
        assert got["status"] == data.status(i, ("flags", "stats"))
    assert client.post("/v1/features/batch", json={"keys": []}).json() == {"results": []}


def test_coalescing_answers_each_request_with_its_own_key(dsn: str, definitions: Path) -> None:
    """Many concurrent single-key requests of two shapes: each gets exactly its key's features."""
    shapes = [None, ["stats", "flags"]]
    config = ServerConfig(dsn=dsn, definitions=str(definitions), coalesce=True, coalesce_window_us=500, prewarm=False)

    async def run() -> tuple[list[tuple[int, list[str] | None, httpx.Response]], str, str]:
        async with app_client(config) as (_, c):
            jobs = [(i % data.N_KEYS, shapes[i % 2]) for i in range(60)]
            # The metrics live in the process's registry: earlier in-process apps of the run count there too.
            before = (await c.get("/metrics")).text

            async def one(i: int, tables: list[str] | None) -> tuple[int, list[str] | None, httpx.Response]:
                body = {"key": data.hexkey(i)} | ({"tables": tables} if tables else {})
                return i, tables, await c.post("/v1/features", json=body)

            return await asyncio.gather(*(one(i, t) for i, t in jobs)), before, (await c.get("/metrics")).text

    responses, before, metrics = asyncio.run(run())
    for i, tables, r in responses:
        assert r.status_code == 200, r.text
        assert r.json()["features"] == data.expected(i, tuple(tables or ("profile", "stats", "flags")))

    def grew(name: str) -> float:
        return data.metric(metrics, name) - data.metric(before, name)

    assert grew("pgfeatures_coalesced_batch_keys_sum") == 60  # every request went through a batch
    assert 1 <= grew("pgfeatures_coalesced_batch_keys_count") <= 60


# -- errors ---------------------------------------------------------------------------------------

GOOD = data.hexkey(1)


@pytest.mark.parametrize(
    "path, body, status, kind, says",
    [
        ("/v1/features", b'{"key": ', 400, "invalid_json", "not valid JSON"),
        ("/v1/features", b"[1, 2]", 400, "invalid_request", "must be a JSON object"),
        (
            "/v1/features",
            {"key": GOOD, "tabels": ["stats"]},
            400,
            "invalid_request",
            "valid fields: key, tables, features",
        ),
        ("/v1/features", {"tables": ["stats"]}, 400, "invalid_request", "missing field 'key'"),
        ("/v1/features", {"key": GOOD[:-1]}, 400, "invalid_key", "64 hex characters, got 63"),
        ("/v1/features", {"key": "zz" + GOOD[2:]}, 400, "invalid_key", "0-9, a-f"),
        ("/v1/features", {"key": " " + GOOD[1:]}, 400, "invalid_key", "0-9, a-f"),
        ("/v1/features", {"key": 12}, 400, "invalid_key", "got a number"),
        (
            "/v1/features",
            {"key": GOOD, "tables": ["stats", "nope"]},
            400,
            "unknown_table",
            "valid tables: flags, profile, stats",
        ),
        (
            "/v1/features",
            {"key": GOOD, "tables": "stats"},
            400,
            "invalid_request",
            "tables must be an array of strings",
        ),
        ("/v1/features", {"key": GOOD, "tables": []}, 400, "invalid_request", "must not be empty"),
        (
            "/v1/features",
            {"key": GOOD, "features": {"stats": ["a", "zz"]}},
            400,
            "unknown_feature",
            "valid features: a, b, updated_at",
        ),
        ("/v1/features", {"key": GOOD, "features": ["stats"]}, 400, "invalid_selection", "'table.feature'"),
        ("/v1/features", {"key": GOOD, "features": {}}, 400, "invalid_request", "at least one table"),
        (
            "/v1/features",
            {"key": GOOD, "features": {"stats": [1]}},
            400,
            "invalid_request",
            "features.stats must be an array",
        ),
        (
            "/v1/features",
            {"key": GOOD, "tables": ["flags"], "features": {"stats": ["a"]}},
            400,
            "invalid_selection",
            "not requested: stats",
        ),
        (
            "/v1/features/batch",
            {"keys": [GOOD] * (MAX_KEYS + 1)},
            400,
            "too_many_keys",
            f"the limit is {MAX_KEYS}: send fewer keys per request, or raise it with --max-batch-keys or "
            "PGFEATURES_MAX_BATCH_KEYS",
        ),
        ("/v1/features/batch", {"keys": [GOOD, GOOD, "x"]}, 400, "invalid_key", "keys[2]"),
        ("/v1/features/batch", {"keys": GOOD}, 400, "invalid_request", "keys must be an array"),
        (
            "/v1/features/batch",
            b"x" * (2 << 20),
            413,
            "payload_too_large",
            "over 1048576; the limit is max(1 MiB, 80 bytes x max_batch_keys): raise it with --max-batch-keys or "
            "PGFEATURES_MAX_BATCH_KEYS",
        ),
    ],
)
def test_bad_requests_say_what_is_valid(
    client: httpx.Client, path: str, body: object, status: int, kind: str, says: str
) -> None:
    r = client.post(path, content=body) if isinstance(body, bytes) else client.post(path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] == kind
    assert says in error["message"]


def test_body_limit_holds_without_content_length(client: httpx.Client) -> None:
    """A chunked body (no Content-Length) is counted as it streams in."""

    def body() -> Iterator[bytes]:
        for _ in range(33):
            yield b" " * (32 << 10)

    r = client.post("/v1/features/batch", content=body())
    assert r.status_code == 413, r.text
    assert "exceeds 1048576 bytes; the limit is max(1 MiB" in r.json()["error"]["message"]


def test_unknown_paths_and_methods(client: httpx.Client) -> None:
    r = client.get("/v1/features")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["error"]["type"] == "method_not_allowed"
    r = client.get("/v2/features")
    assert r.status_code == 404
    assert "POST /v1/features/batch" in r.json()["error"]["message"]


def test_bearer_token_guards_all_but_probes(app: httpx.Client) -> None:
    for method, path in [
        ("POST", "/v1/features"),
        ("GET", "/v1/tables"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("POST", "/v1/push/stats"),
        ("GET", "/v1/services"),
        ("POST", "/v1/features/batch"),
    ]:
        r = app.request(method, path, json={"key": GOOD})
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["type"] == "unauthorized"
    r = app.post("/v1/features", json={"key": GOOD}, headers={"Authorization": f"Bearer {TOKEN}x"})
    assert r.status_code == 401
    assert app.get("/healthz").json() == {"status": "alive"}
    assert app.get("/readyz").json()["status"] == "ready"


# -- other endpoints ------------------------------------------------------------------------------


def test_tables(client: httpx.Client, definitions: Path) -> None:
    body = client.get("/v1/tables").json()
    assert body["schema"] == definitions.read_text().split('"')[1]
    stats = next(t for t in body["tables"] if t["name"] == "stats")
    assert stats["features"] == [
        {"name": "a", "type": "real", "default": None},
        {"name": "b", "type": "real", "default": None},
    ]
    assert stats["entity"] == {"name": "entity", "key_type": "bytea32", "key_column": "hashkey"}
    assert stats["exists"] is True and stats["rows"] == 5  # keys 0, 2, 4, 6, 8
    assert stats["newest_updated_at"] == rfc3339(data.updated_at(8))
    assert [t["name"] for t in body["tables"]] == ["profile", "stats", "flags"]


def test_openapi_names_tables_features_and_limits(client: httpx.Client) -> None:
    doc = client.get("/openapi.json").json()
    assert set(doc["paths"]) == {
        "/v1/features",
        "/v1/features/batch",
        "/v1/services",
        "/v1/tables",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/v1/push/profile",
        "/v1/push/stats",
        "/v1/push/flags",
    }
    schemas = doc["components"]["schemas"]
    assert schemas["Tables"]["items"]["enum"] == ["profile", "stats", "flags"]
    assert schemas["BatchRequest"]["properties"]["keys"]["maxItems"] == MAX_KEYS
    assert "bearer" in doc["components"]["securitySchemes"]


def test_metrics_count_requests_rows_and_misses(client: httpx.Client) -> None:
    before = client.get("/metrics").text
    keys = [data.hexkey(i) for i in (0, 1, 2, 5)]  # stats: rows for 0 and 2, misses for 1 and 5
    assert client.post("/v1/features/batch", json={"keys": keys, "tables": ["stats"]}).status_code == 200
    after = client.get("/metrics").text
    for name, labels, delta in [
        ("pgfeatures_table_rows_total", {"table": "stats"}, 2),
        ("pgfeatures_table_misses_total", {"table": "stats"}, 2),
        ("pgfeatures_http_requests_total", {"endpoint": "/v1/features/batch", "status": "200"}, 1),
        ("pgfeatures_db_duration_seconds_count", {"kind": "batch"}, 1),
    ]:
        assert data.metric(after, name, **labels) - data.metric(before, name, **labels) == delta, name
    assert data.metric(after, "pgfeatures_pool_connections", state="size") == 2  # --pool-size beat env and file
    assert data.metric(after, "pgfeatures_ready") == 1


def test_warmup_hooks_run_before_ready(dsn: str, definitions: Path) -> None:
    """The app in-process (lifespan run by hand, httpx's ASGI transport): not ready, no reads, until the hook is done."""
    from pgfeatures.server import create_app

    async def run() -> None:
        release = asyncio.Event()
        store_open_in_hook: list[bool] = []

        async def hook(store: object) -> None:
            store_open_in_hook.append(store.ready)
            await release.wait()

        app = create_app(ServerConfig(dsn=dsn, definitions=str(definitions)), warmup=[hook])
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as c:
                while not store_open_in_hook:
                    await asyncio.sleep(0.01)
                assert store_open_in_hook == [True]  # the hook runs on an open store
                r = await c.get("/readyz")
                assert (
                    r.status_code == 503 and r.json()["reason"] == "warming_up" and r.json()["message"] == "warming up"
                )
                assert (await c.post("/v1/features", json={"key": GOOD})).json()["error"]["type"] == "not_ready"
                tables = (await c.get("/v1/tables")).json()  # answered while warming up (the store is open)
                assert [t["name"] for t in tables["tables"]] == ["profile", "stats", "flags"]
                release.set()
                while (await c.get("/readyz")).status_code != 200:
                    await asyncio.sleep(0.01)
                r = await c.post("/v1/features", json={"key": data.hexkey(1)})
                assert r.json()["features"] == data.expected(1)

    asyncio.run(asyncio.wait_for(run(), 30))


def test_cli_process_with_prewarm_and_layered_settings(dsn: str, definitions: Path) -> None:
    """A real ``pgfeatures serve``: settings from a config file, the environment and flags; ready after pg_prewarm."""
    file = definitions.parent / "serve-cli.toml"
    file.write_text(f"max_batch_keys = {MAX_KEYS}\npool_size = 9\ncoalesce = true\n")
    with (
        ServeProcess(
            "--config",
            str(file),
            "--definitions",
            str(definitions),
            "--pool-size",
            "2",
            "--no-coalesce",
            "--prewarm",
            env={"PGFEATURES_DSN": dsn, "PGFEATURES_TOKEN": TOKEN, "PGFEATURES_POOL_SIZE": "7"},
        ) as proc,
        httpx.Client(base_url=proc.url, headers=AUTH, timeout=10) as c,
    ):
        assert c.get("/readyz").json()["status"] == "ready"
        assert c.post("/v1/features", json={"key": data.hexkey(2)}).json()["features"] == data.expected(2)
        assert httpx.get(f"{proc.url}/v1/tables").status_code == 401  # the token from the environment
        too_many = c.post("/v1/features/batch", json={"keys": [GOOD] * (MAX_KEYS + 1)})  # the limit from the file
        assert too_many.json()["error"]["type"] == "too_many_keys", too_many.text
        metrics = c.get("/metrics").text
        assert data.metric(metrics, "pgfeatures_pool_connections", state="size") == 2  # the flag beat env and file
        assert data.metric(metrics, "pgfeatures_coalesced_batch_keys_count") == 0  # --no-coalesce beat the file


# -- settings -------------------------------------------------------------------------------------


def test_config_precedence_flag_env_file_default(tmp_path: Path) -> None:
    file = tmp_path / "serve.toml"
    file.write_text('port = 9001\nworkers = 3\npool_size = 5\nhost = "0.0.0.0"\n')
    env = {
        "PGFEATURES_CONFIG": str(file),
        "PGFEATURES_WORKERS": "4",
        "PGFEATURES_POOL_SIZE": "6",
        "PGFEATURES_COALESCE": "yes",
    }
    config = load_config({"pool_size": "7", "port": None}, environ=env)
    assert (config.pool_size, config.workers, config.port, config.host) == (7, 4, 9001, "0.0.0.0")
    assert config.coalesce is True
    assert config.max_batch_keys == ServerConfig().max_batch_keys
    assert ServerConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(
    "file, env, says",
    [
        ("pool_sise = 3\n", {}, "unknown setting(s) pool_sise; valid: host, port"),
        ('port = "http"\n', {}, "invalid value 'http' for port"),
        ("", {"PGFEATURES_COALESCE": "maybe"}, "$PGFEATURES_COALESCE: invalid value 'maybe' for coalesce"),
        ("", {"PGFEATURES_POOL_SIZE": "0"}, "pool_size must be at least 1"),
        ('strategy = "fastest"\n', {}, "valid strategies: single"),
        ("port = [\n", {}, "invalid TOML"),
    ],
)
def test_bad_settings_are_named(tmp_path: Path, file: str, env: dict[str, str], says: str) -> None:
    path = tmp_path / "serve.toml"
    path.write_text(file)
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_config({}, environ=env, config_file=path)
