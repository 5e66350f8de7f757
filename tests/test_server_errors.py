"""Errors keep their class over HTTP: every typed error has a status that tells the caller
whether to retry, an error type, and a message that says what was wrong.

The mapping is checked for every class of ``pgfeatures.errors`` (a new class without a row
fails here), then through the app in-process for the failures a real database can be made
to produce: a hung database (the service's deadline), a dropped table, a revoked privilege,
a service shutting down.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import psycopg
import pytest
from psycopg import sql

import pgfeatures.errors as errors_module
from conftest import dsn_with
from pgfeatures.errors import PgFeaturesError
from pgfeatures.server import ServerConfig, create_app
from pgfeatures.server.errors import NotReadyError, RequestError, classify, error_response
from support import server_data as data
from support.inprocess import BASE_URL, app_client
from support.proxy import Proxy

RETRY_AFTER = 7

# class name -> (status, type, retryable): the contract, written out.
EXPECTED = {
    "KeyFormatError": (400, "invalid_key", False),
    "UnknownServiceError": (404, "unknown_service", False),
    "UnknownEntityError": (400, "unknown_entity", False),
    "CorruptFileError": (400, "corrupt_file", False),
    "UnknownTableError": (400, "unknown_table", False),
    "UnknownFeatureError": (400, "unknown_feature", False),
    "UnknownStrategyError": (400, "unknown_strategy", False),
    "FeatureValueError": (400, "invalid_value", False),
    "ContextError": (400, "invalid_context", False),
    "TransformError": (500, "transform_error", False),
    "EventTimeInFutureError": (400, "event_time_in_future", False),
    "NearestError": (400, "invalid_nearest", False),
    "ExactSearchRefusedError": (400, "exact_search_refused", False),
    "VectorOutputError": (400, "vector_output_refused", False),
    "DefinitionError": (400, "invalid_selection", False),
    "LoadInputError": (400, "invalid_input", False),
    "ExtensionMissingError": (500, "extension_missing", False),
    "DatabaseUnavailableError": (503, "database_unavailable", True),
    "AuthenticationError": (503, "database_auth_failed", True),
    "CredentialsTimeoutError": (503, "credentials_timeout", True),
    "WriteOutcomeUnknownError": (503, "write_outcome_unknown", True),
    "PoolExhaustedError": (503, "pool_exhausted", True),
    "EmbeddedServerError": (503, "database_unavailable", True),
    "LoadInterruptedError": (503, "database_unavailable", True),
    "QueryTimeoutError": (504, "query_timeout", True),
    "ConflictError": (503, "conflict", True),
    "ChangeBlockedError": (503, "change_blocked", True),
    "StoreClosedError": (503, "shutting_down", True),
    "ReadOnlyStoreError": (403, "read_only", False),
    "SchemaDriftError": (500, "schema_drift", False),
    "DatabaseError": (500, "database_error", False),
    "LoadError": (500, "load_failed", False),
    "MaterializeError": (500, "materialize_failed", False),
    "ConfigError": (500, "config_error", False),
    "ConnectionSettingsError": (500, "config_error", False),
    "ExtraNotInstalledError": (500, "missing_extra", False),
    "WarmupError": (500, "warmup_failed", False),
    "BenchmarkError": (500, "benchmark_error", False),
}


def typed_errors() -> list[type[PgFeaturesError]]:
    return [
        c
        for _, c in inspect.getmembers(errors_module, inspect.isclass)
        if issubclass(c, PgFeaturesError) and c is not PgFeaturesError and c.__module__ == errors_module.__name__
    ]


def instance(cls: type[PgFeaturesError]) -> PgFeaturesError:
    if cls.__name__ in ("UnknownTableError", "UnknownServiceError", "UnknownEntityError"):
        return cls(["nope"], ["a", "b"])  # type: ignore[call-arg]
    if cls.__name__ == "UnknownFeatureError":
        return cls("t", ["nope"], ["a"])  # type: ignore[call-arg]
    if cls.__name__ == "DatabaseError":
        return cls("permission denied for table t", "42501")  # type: ignore[call-arg]
    if cls.__name__ == "TransformError":
        return cls("transform 'r' of service 's' raised ValueError", service="s", transform="r")  # type: ignore[call-arg]
    return cls(f"what went wrong ({cls.__name__})")


def test_every_typed_error_has_a_row() -> None:
    assert sorted(c.__name__ for c in typed_errors()) == sorted(EXPECTED)


@pytest.mark.parametrize("cls", typed_errors(), ids=lambda c: c.__name__)
def test_mapping(cls: type[PgFeaturesError]) -> None:
    status, kind, retryable = EXPECTED[cls.__name__]
    exc = instance(cls)
    assert (classify(exc).status, classify(exc).type, classify(exc).retryable) == (status, kind, retryable)
    response = error_response(exc, RETRY_AFTER)
    assert response.status_code == status
    assert response.headers.get("retry-after") == (str(RETRY_AFTER) if retryable else None)
    error = orjson.loads(response.body)["error"]
    assert error["type"] == kind and error["retryable"] is retryable
    assert error["message"] == str(exc)  # passed through: it says what was wrong
    if cls.__name__ == "DatabaseError":
        assert error["sqlstate"] == "42501"
    else:
        assert "sqlstate" not in error


def test_service_errors_and_bugs() -> None:
    assert error_response(NotReadyError("warming up"), 1).status_code == 503
    too_big = error_response(RequestError("payload_too_large", "too big", 413), 1)
    assert too_big.status_code == 413 and "retry-after" not in too_big.headers
    bug = error_response(KeyError("secret detail"), 1)
    assert bug.status_code == 500
    assert orjson.loads(bug.body)["error"] == {
        "type": "internal",
        "message": "internal error (KeyError); see the server log",
        "retryable": False,
    }


# -- through the app ------------------------------------------------------------------------------


@pytest.fixture()
def definitions(dsn: str, schema: str, tmp_path: Path) -> Path:
    return data.create(dsn, schema, tmp_path)


def config(dsn: str, definitions: Path, **settings: object) -> ServerConfig:
    return ServerConfig(dsn=dsn, definitions=str(definitions), prewarm=False, retry_after=RETRY_AFTER, **settings)  # type: ignore[arg-type]


def read(client: httpx.AsyncClient, i: int = 2) -> asyncio.Future[httpx.Response]:
    return asyncio.ensure_future(client.post("/v1/features", json={"key": data.hexkey(i)}))


def assert_error(r: httpx.Response, status: int, kind: str, retryable: bool) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] == kind and error["retryable"] is retryable
    assert r.headers.get("retry-after") == (str(RETRY_AFTER) if retryable else None)
    return error


def test_request_deadline_is_a_504_query_timeout(dsn: str, definitions: Path) -> None:
    """A hung database: the service's own deadline answers 504 (retryable), then reads recover."""
    proxy = Proxy.to(dsn)

    async def run() -> None:
        async with app_client(config(proxy.dsn(dsn), definitions, request_timeout=1.0, pool_size=1)) as (app, c):
            assert (await read(c)).json()["features"] == data.expected(2)
            proxy.pause()
            try:
                error = assert_error(await read(c), 504, "query_timeout", True)
                assert "within 1s (request_timeout)" in error["message"]
                # not ready meanwhile (a timed-out probe is still a retryable failure, never a 500)
                assert (await c.get("/readyz")).status_code in (503, 504)
            finally:
                proxy.resume()
            async with asyncio.timeout(30):
                while (r := await read(c)).status_code != 200:
                    await asyncio.sleep(0.1)
            assert r.json()["features"] == data.expected(2)
            metrics = (await c.get("/metrics")).text
            assert data.metric(metrics, "pgfeatures_db_errors_total", reason="timeout") >= 1

    try:
        asyncio.run(run())
    finally:
        proxy.close()


def test_dropped_table_is_schema_drift(dsn: str, schema: str, definitions: Path) -> None:
    async def run() -> None:
        async with app_client(config(dsn, definitions)) as (app, c):
            assert (await read(c)).status_code == 200
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, "flags")))
            error = assert_error(await read(c), 500, "schema_drift", False)
            assert f"{schema}.flags" in error["message"]
            # the tables still there are still served
            r = await c.post("/v1/features", json={"key": data.hexkey(2), "tables": ["stats"]})
            assert r.json()["features"] == data.expected(2, ("stats",))

    asyncio.run(run())


@pytest.fixture()
def reader_role(dsn: str, schema: str, definitions: Path) -> Iterator[str]:
    """A login role that may read the test schema (trust authentication on the test server)."""
    role = f"pgf_reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
        conn.execute(
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(
                sql.Identifier(schema), sql.Identifier(role)
            )
        )
    yield role
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role])
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_revoked_privilege_is_a_database_error_with_sqlstate(
    dsn: str, schema: str, definitions: Path, reader_role: str
) -> None:
    async def run() -> None:
        async with app_client(config(dsn_with(dsn, user=reader_role), definitions)) as (app, c):
            assert (await read(c)).json()["features"] == data.expected(2)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("REVOKE SELECT ON {} FROM {}").format(
                        sql.Identifier(schema, "stats"), sql.Identifier(reader_role)
                    )
                )
            error = assert_error(await read(c), 500, "database_error", False)
            assert error["sqlstate"] == "42501" and "permission denied" in error["message"]

    asyncio.run(run())


def test_shutting_down_is_503_shutting_down(dsn: str, definitions: Path) -> None:
    async def run() -> None:
        app = create_app(config(dsn, definitions))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL) as c:
            async with app.router.lifespan_context(app):
                while (await c.get("/readyz")).status_code != 200:
                    await asyncio.sleep(0.02)
                assert (await read(c)).status_code == 200
            assert_error(await read(c), 503, "shutting_down", True)

    asyncio.run(asyncio.wait_for(run(), 30))


@pytest.mark.parametrize("coalesce", [False, True], ids=["single", "coalesced"])
def test_a_read_racing_the_store_closing_is_503_shutting_down(dsn: str, definitions: Path, coalesce: bool) -> None:
    """A request admitted before the store closed, waiting for a pooled connection when it does
    (psycopg_pool fails it with PoolClosed): the store's StoreClosedError, so the same answer as a
    request after shutdown, 503 ``shutting_down``, never a 500."""

    async def run() -> None:
        async with app_client(config(dsn, definitions, pool_size=1, coalesce=coalesce)) as (app, c):
            assert (await read(c)).status_code == 200
            store = app.state.service.store
            pool = store.read_pool
            held = await pool.getconn()  # the only read connection: the next read waits for it
            try:
                pending = read(c)
                async with asyncio.timeout(10):
                    while pool.get_stats().get("requests_waiting", 0) < 1:
                        await asyncio.sleep(0.01)
                await store.close()
                error = assert_error(await pending, 503, "shutting_down", True)
                assert "closed" in error["message"]
            finally:
                await pool.putconn(held)

    asyncio.run(asyncio.wait_for(run(), 30))


def test_a_psycopg_error_escaping_the_store_is_translated(dsn: str, definitions: Path) -> None:
    """The service's last line of translation (``Service._translate``) names the database, not a bug:
    it read an attribute the store does not have, so such an error became a 500 ``internal``."""
    from pgfeatures.definitions import Registry
    from pgfeatures.errors import DatabaseUnavailableError
    from pgfeatures.server.service import Service

    service = Service(config(dsn, definitions), Registry.from_toml(definitions))
    error = service._translate(psycopg.OperationalError("connection lost"))
    assert isinstance(error, DatabaseUnavailableError)
    assert classify(error).status == 503
    timeout = service._translate(TimeoutError())  # a deadline of some layer below the store: still a 504
    assert classify(timeout).status == 504 and classify(timeout).type == "query_timeout"


# -- the deadline, straddled ----------------------------------------------------------------------


def answering_late(call, blocked_for: float):  # type: ignore[no-untyped-def]
    """``call`` (a real store call), after which the event loop is blocked for ``blocked_for`` seconds
    before the call returns: its answer is in, but the loop sees it in the same iteration as a
    deadline that passed meanwhile, as when a query returns just as its deadline passes (on a busy loop)."""
    import time

    async def late(*args: object) -> object:
        result = await call(*args)
        time.sleep(blocked_for)  # blocks the loop on purpose: the deadline's timer and the answer meet
        return result

    return late


@pytest.mark.timing  # 3 answers of 9 within a 50 ms deadline
@pytest.mark.parametrize("kind", ["single", "batch", "push", "probe"])
def test_an_answer_meeting_the_deadline_is_a_504_never_a_500(dsn: str, definitions: Path, kind: str) -> None:
    """Before: a call that finished in the loop iteration where its deadline fired escaped as a bare
    TimeoutError, a 500 ``internal`` (3 of 62,112 requests under fault cycles). Deadlines straddle the
    moment the answer arrives: before it, the answer; at or after it, 504 ``query_timeout``."""
    from pgfeatures.errors import QueryTimeoutError

    limit = 0.05

    async def run() -> None:
        async with app_client(config(dsn, definitions, request_timeout=limit)) as (app, c):
            service = app.state.service
            store = service.store
            calls = {
                "single": (store.read, (service.features_reader(None, None), data.hexkey(2))),
                "batch": (store.read_batch, (service.features_batch_reader(None, None), [data.hexkey(2)])),
                "push": (store.update_features_batch, ("stats", [(data.hexkey(11), {"a": 0.5})])),
                "probe": (store.ping, ()),
            }
            call, args = calls[kind]
            answers, timeouts = 0, 0
            for blocked in [limit * f for f in (0.2, 0.5, 0.8, 1.2, 1.5, 2.0, 3.0)] * 3:
                try:
                    await service._db(kind, answering_late(call, blocked), *args, write=kind == "push")
                    answers += 1
                except QueryTimeoutError as exc:
                    assert classify(exc).status == 504 and classify(exc).type == "query_timeout"
                    assert "request_timeout" in str(exc)
                    timeouts += 1
            assert answers >= 3 and timeouts >= 12, (answers, timeouts)

    asyncio.run(asyncio.wait_for(run(), 60))


@pytest.mark.timing  # deadlines and a release meant to meet
def test_requests_straddling_the_moment_a_blocked_query_returns(dsn: str, schema: str, definitions: Path) -> None:
    """Reads wait on a table lock; it is released, and the loop held for a moment, just as some of their
    deadlines pass: each request gets its features or 504 ``query_timeout``, never a 500."""
    timeout, step, count = 0.4, 0.015, 12
    release_at = timeout + step * count / 2  # deadlines run from `timeout` to `timeout + step * count`

    async def run() -> None:
        async with app_client(config(dsn, definitions, request_timeout=timeout, pool_size=count)) as (app, c):
            body = {"key": data.hexkey(2), "tables": ["stats"]}
            assert (await c.post("/v1/features", json=body)).status_code == 200
            with psycopg.connect(dsn) as locker:
                # Off the loop: the app's own tasks run on it (the inventory's refresh reads the table in a
                # short transaction), and a lock waited for on the loop thread would wait for them forever.
                await asyncio.to_thread(
                    locker.execute,
                    sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema, "stats")),
                )

                def release() -> None:
                    import time

                    locker.commit()  # the waiting reads return now...
                    time.sleep(0.03)  # ...while the loop is held: their answers and some deadlines meet

                asyncio.get_running_loop().call_later(release_at, release)
                pending = []
                for _ in range(count):
                    pending.append(asyncio.ensure_future(c.post("/v1/features", json=body)))
                    await asyncio.sleep(step)
                answers = await asyncio.gather(*pending)
            statuses = [r.status_code for r in answers]
            for r in answers:
                if r.status_code == 200:
                    assert r.json()["features"] == data.expected(2, ("stats",))
                else:
                    assert_error(r, 504, "query_timeout", True)
            assert 200 in statuses and 504 in statuses, statuses

    asyncio.run(asyncio.wait_for(run(), 60))
