"""The HTTP API: a Starlette app over a ``Service``: routes, auth, errors, timing.

Endpoints (JSON bodies, encoded with orjson; request parsing in ``parsing.py``)::

    POST /v1/features                {"key": key, "tables"?: [...], "features"?: {...} | [...]}
    POST /v1/features/batch          {"keys": [key, ...], "tables"?: [...], "features"?: ...}
    POST /v1/services/{name}         {"key": key, "features"?: [...], "output"?: "dict" | "vector",
                                      "context"?: {name: value}}  (the values its transforms take)
    POST /v1/services/{name}/batch   {"keys": [key, ...], "features"?: [...], "output"?: ...,
                                      "context"?: [{name: value}, ...] | {name: [value, ...]}}
    GET  /v1/services                the feature services: entities, tables, ttl, materialized state
    GET  /v1/services/{name}         the same for one, with its vector's column names and types
    POST /v1/push/{table}            {"rows": [{"key": key, "features": {...}}, ...], "overwrite_newer"?: bool}
                                     (or one {"key", "features"}) -> {"written": n, "skipped": m}
    GET  /v1/tables                  tables: entity, features, ttl, rows, age of the newest row
    POST /v1/tables/{table}/nearest  {"feature", "query": [...], "k"?, "features"?, "where"?, "ef_search"?, "exact"?}
                                     -> the k nearest keys, distances and features (see ``nearest.py``)
    GET  /healthz                    the process is alive
    GET  /readyz                     warmed up and the database answers (else 503), with a reason class;
                                     details (targets, broken tables, the failure) with the token
    GET  /metrics                    Prometheus text format
    GET  /openapi.json               the OpenAPI document
    POST /v1/admin/reload            read the definitions file again and serve it (as SIGHUP does): every
                                     reader compiled and prepared first, then swapped in; -> {"fingerprint", ...}

A key is a bare key (64 hex characters for 32-byte keys; an integer or a string for other
entities) when the request reads one entity, or ``{entity: key}``. A result is ``{"key",
"features": {table: {feature: value} | null}, "status": {table: "present" | "missing" |
"expired"}, "missing": [tables not present]}``; a batch returns ``{"results": [...]}`` in input
order. A service's vector (``"output": "vector"``) is ``{"key", "values", "status"}``, or raw
numbers with ``Accept: application/octet-stream`` (see ``vectors.py``). Errors are ``{"error":
{"type": ..., "message": ...}}`` (see ``errors.py``). Request bodies are validated strictly
(unknown fields, wrong types, bad keys are 400s naming what is valid) before any I/O.

Bearer-token auth and request timing are one pure ASGI middleware:
Starlette's ``BaseHTTPMiddleware`` would cost a task and a queue per request.

The two hot reads, ``POST /v1/features`` and ``POST /v1/services/{name}``, have a door of their own
(``HotReads``, called by ``FeatureApp`` before Starlette's stack): the same token check, body limit,
``Answers``, error answers and metrics as their routes, without the middleware layers, router and
``Request`` around them. Every other request, and these two at any other method or path, goes
through Starlette.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..definitions import Registry
from ..errors import DefinitionError, PgFeaturesError, ReadOnlyStoreError, TransformError
from .config import ServerConfig
from .encoding import JSONBatch, dumps, result
from .errors import JSON, RequestError, error_body, error_response
from .metrics import CONTENT_TYPE
from .nearest import nearest_route
from .openapi import openapi_document
from .parsing import (
    BATCH_FIELDS,
    SERVICE_BATCH_FIELDS,
    SERVICE_FIELDS,
    SINGLE_FIELDS,
    bind_key,
    bind_keys,
    check_fields,
    parse_features,
    parse_json,
    parse_output,
    parse_push,
    parse_selection,
)
from .service import Service, WarmupHook
from .streaming import BatchAnswer, Encoder, StreamedAnswer
from .vectors import OCTET_STREAM, OctetBatch

log = logging.getLogger("pgfeatures.server")

CLIENT_CLOSED = 499  # the status the metrics record for a request whose client left before its body was in (nginx's)
PROBES = frozenset({"/healthz", "/readyz"})  # never behind the token: orchestrators have none
SERVICE_ENDPOINTS = frozenset({"/v1/services/{name}", "/v1/services/{name}/batch"})


def json_response(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(dumps(payload), status, headers, media_type=JSON)


# -- routes ---------------------------------------------------------------------------------------


BODY_LIMIT_HINT = (
    "the limit is max(1 MiB, 80 bytes x max_batch_keys): raise it with --max-batch-keys or "
    "PGFEATURES_MAX_BATCH_KEYS (max_batch_keys in the config file)"
)


async def read_body(receive: Receive, length: str, limit: int) -> bytes:
    """The raw body, refused with 413 past ``limit`` bytes (``length``: the Content-Length header, checked
    first; the body checked as it streams in, not after). Raises ClientDisconnect if the client leaves
    before the body is in (what Starlette's ``Request.stream`` raises)."""
    if length.isdigit() and int(length) > limit:
        raise RequestError("payload_too_large", f"the body is {length} bytes, over {limit}; {BODY_LIMIT_HINT}", 413)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestError("payload_too_large", f"the body exceeds {limit} bytes; {BODY_LIMIT_HINT}", 413)
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()


def request_body(request: Request, limit: int) -> Awaitable[bytes]:
    return read_body(request.receive, request.headers.get("content-length", ""), limit)


class Answers(NamedTuple):
    """The hot reads' work from a request's raw parts to its response, shared by their Starlette routes
    and their own door (``HotReads``): ``features(body)`` for ``POST /v1/features``, ``service(name,
    body, accept)`` for ``POST /v1/services/{name}``."""

    features: Callable[[bytes], Awaitable[Response]]
    service: Callable[[str, bytes, str | None], Awaitable[Response]]


def answers(service: Service) -> Answers:
    async def features(raw: bytes) -> Response:
        body = parse_json(raw)
        check_fields(body, SINGLE_FIELDS, "key")
        tables, selection = parse_selection(body)
        reader = service.features_reader(tables, selection)
        params = bind_key(body["key"], reader.binder, service.registry)
        return json_response(result(body["key"], await service.read_one(reader, params)))

    async def service_one(name: str, raw: bytes, accept: str | None) -> Response:
        service.registry.service(name)  # UnknownServiceError (404) names the valid services
        body = parse_json(raw)
        check_fields(body, SERVICE_FIELDS, "key")
        vector, octets = parse_output(body, accept)
        features = parse_features(body)
        reader = service.service_reader(name, features, vector)
        params = bind_key(body["key"], reader.binder, service.registry)
        context = body.get("context")
        outputs = service.transform_plan(name, features, context)
        transform = (outputs, outputs.context(context)) if outputs is not None else None
        got = await service.read_one(reader, params, vector, transform)
        if not vector:
            return json_response(result(body["key"], got))
        plan = service.vector_plan(reader, outputs)
        if octets:
            return Response(plan.values([got]) + plan.status([got]), headers=plan.headers(1), media_type=OCTET_STREAM)
        return json_response(plan.rows([body["key"]], [got])[0])

    return Answers(features, service_one)


def routes(service: Service, hot: Answers) -> list[Route]:
    config = service.config
    limit = config.max_body_bytes
    max_keys = config.max_batch_keys

    async def answer_batch(
        reader: Any,
        shown: Sequence[Any],
        arrays: tuple[Sequence[Any], ...],
        encoder: Encoder,
        vector: bool = False,
        transform: Any = None,
    ) -> Response:
        """One response for a batch read in one chunk; a stream for more (a failure in the first
        chunk is still an ordinary error response)."""
        chunks = service.open_batch(reader, arrays, vector, transform)
        first: list[Any] = await anext(chunks, [])
        if len(first) == len(shown):
            await chunks.aclose()
            body = encoder.start() + encoder.chunk(shown, first) + encoder.end()
            return Response(body, headers=encoder.headers, media_type=encoder.content_type)
        return StreamedAnswer(
            BatchAnswer(shown, first, chunks, encoder),
            encoder.content_type,  # type: ignore[return-value]
            encoder.headers,
        )

    async def features(request: Request) -> Response:
        return await hot.features(await request_body(request, limit))

    async def batch(request: Request) -> Response:
        body = parse_json(await request_body(request, limit))
        check_fields(body, BATCH_FIELDS, "keys")
        tables, selection = parse_selection(body)
        reader = service.features_batch_reader(tables, selection)
        shown = body["keys"]
        arrays = bind_keys(shown, reader.binder, service.registry, max_keys)
        del body
        return await answer_batch(reader, shown, arrays, JSONBatch())

    async def service_one(request: Request) -> Response:
        raw = await request_body(request, limit)
        return await hot.service(request.path_params["name"], raw, request.headers.get("accept"))

    async def service_batch(request: Request) -> Response:
        raw = await request_body(request, limit)
        name = request.path_params["name"]
        service.registry.service(name)
        body = parse_json(raw)
        check_fields(body, SERVICE_BATCH_FIELDS, "keys")
        vector, octets = parse_output(body, request.headers.get("accept"))
        features = parse_features(body)
        reader = service.service_batch_reader(name, features, vector)
        shown = body["keys"]
        arrays = bind_keys(shown, reader.binder, service.registry, max_keys)
        context = body.get("context")
        outputs = service.transform_plan(name, features, context)
        transform = (outputs, outputs.contexts(context, len(arrays[0]))) if outputs is not None else None
        del body, raw, context
        encoder: Encoder
        if not vector:
            encoder = JSONBatch()
        elif octets:
            encoder = OctetBatch(service.vector_plan(reader, outputs), len(shown))
        else:
            encoder = JSONBatch(service.vector_plan(reader, outputs).rows)
        return await answer_batch(reader, shown, arrays, encoder, vector, transform)

    async def services(request: Request) -> Response:
        await service.inventory.current()
        return json_response({"services": [service.describe_service(n) for n in service.registry.services]})

    async def describe(request: Request) -> Response:
        name = request.path_params["name"]
        service.registry.service(name)
        await service.inventory.current()
        return json_response(service.describe_service(name, detail=True))

    async def one_service(request: Request) -> Response:
        return await (describe(request) if request.method in ("GET", "HEAD") else service_one(request))

    async def push(request: Request) -> Response:
        raw = await request_body(request, limit)
        table = request.path_params["table"]
        service.registry.table(table)  # UnknownTableError names the valid tables
        if config.write_pool_size == 0:
            raise ReadOnlyStoreError(
                "this service is read-only (write_pool_size = 0): it takes no pushes; push to a "
                "service with a write pool (--write-pool-size 1 or more)"
            )
        rows, overwrite = parse_push(parse_json(raw), table, service.registry, max_keys)
        del raw
        count = await service.push(table, rows, overwrite)
        return json_response({"written": int(count), "skipped": count.skipped})

    async def tables(request: Request) -> Response:
        await service.inventory.current()
        return json_response(service.inventory.tables_document())

    documents: dict[str, bytes] = {}  # the OpenAPI document, encoded once per definitions served

    async def openapi(request: Request) -> Response:
        registry = service.registry
        body = documents.get(registry.fingerprint)
        if body is None:
            documents.clear()
            body = documents[registry.fingerprint] = orjson.dumps(openapi_document(registry, config))
        return Response(body, media_type=JSON)

    async def reload(request: Request) -> Response:
        # Serve the definitions file as it is now; with several workers, every worker does (the supervisor
        # passes SIGHUP on to each: see runner.py; this one finds nothing left to change then).
        try:
            done = await service.reload()
        except DefinitionError as exc:
            raise RequestError("invalid_definitions", f"{exc}; the previous definitions go on serving", 400) from None
        if config.workers > 1:
            os.kill(os.getppid(), signal.SIGHUP)
        return json_response(done)

    async def healthz(request: Request) -> Response:
        return json_response({"status": "alive"})

    token = bearer(config)

    async def readyz(request: Request) -> Response:
        # Ready: serving. Degraded (still 200: the other tables are served): some tables cannot be,
        # named with why. Not ready (503): warming up, or no read target answers, with a reason class.
        # The probe is open (orchestrators have no token): the details (read targets' hosts, broken
        # tables, what failed in words) only with the token, or probe_details.
        state = await service.readiness()
        details = service.details()
        shown = details if config.probe_details or token is None or authorized(request.scope, token) else {}
        if state.ready:
            status = "degraded" if details["broken_tables"] else "ready"
            return json_response({"status": status, **shown})
        message = {"message": state.message} if shown else {}
        return json_response(
            {"status": "not_ready", "reason": state.reason, **message, **shown},
            503,
            {"Retry-After": str(config.retry_after)},
        )

    async def metrics(request: Request) -> Response:
        await service.inventory.current()  # the age gauges: refreshed if due, at most every inventory_interval
        service.metrics.set_ages(service.inventory.ages())
        service.flush_metrics()
        return Response(service.metrics.exposition(), media_type=CONTENT_TYPE)

    return [
        Route("/v1/features", features, methods=["POST"]),
        Route("/v1/features/batch", batch, methods=["POST"]),
        Route("/v1/services", services, methods=["GET"]),
        Route("/v1/services/{name}", one_service, methods=["GET", "POST"]),
        Route("/v1/services/{name}/batch", service_batch, methods=["POST"]),
        Route("/v1/push/{table}", push, methods=["POST"]),
        Route("/v1/tables", tables, methods=["GET"]),
        nearest_route(service, request_body),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/v1/admin/reload", reload, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


def _endpoints(app_routes: Iterable[Route]) -> str:
    return ", ".join(f"{m} {r.path}" for r in app_routes for m in sorted((r.methods or set()) - {"HEAD"}))


# -- errors ---------------------------------------------------------------------------------------


def exception_handlers(service: Service, app_routes: list[Route]) -> dict[Any, Any]:
    retry_after = service.config.retry_after
    endpoints = _endpoints(app_routes)

    async def pgfeatures_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, TransformError):  # the answer names the transform; its traceback is for the log only
            log.error("pgfeatures: %s %s: %s", request.method, request.url.path, exc, exc_info=exc.__cause__ or exc)
        return error_response(exc, retry_after)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            error = RequestError(
                "not_found", f"no endpoint {request.method} {request.url.path}; endpoints: {endpoints}", 404
            )
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            error = RequestError(
                "method_not_allowed",
                f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}",
                405,
                dict(exc.headers or {}),
            )
        else:
            error = RequestError("http_error", exc.detail, exc.status_code, dict(exc.headers or {}))
        return error_response(error, retry_after)

    async def internal_error(request: Request, exc: Exception) -> Response:
        return error_response(exc, retry_after)

    async def client_gone(request: Request, exc: Exception) -> Response:
        return client_gone_response(retry_after)

    return {
        PgFeaturesError: pgfeatures_error,
        HTTPException: http_error,
        ClientDisconnect: client_gone,
        Exception: internal_error,
    }


def client_gone_response(retry_after: int) -> Response:
    """The answer to a request whose client left (or was cut off: a body not sent within body_timeout)
    before its body was read. No one reads it but the metrics; it is not a bug to log a traceback for."""
    return error_response(
        RequestError(
            "client_disconnected", "the client closed the connection before sending the whole body", CLIENT_CLOSED
        ),
        retry_after,
    )


# -- auth and timing ------------------------------------------------------------------------------


def bearer(config: ServerConfig) -> bytes | None:
    """The Authorization header value requests must carry, or None: no token, no auth."""
    token = config.bearer_token
    return f"Bearer {token}".encode() if token else None


def authorized(scope: Scope, expected: bytes) -> bool:
    """The request carries the token (compared in constant time)."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            return hmac.compare_digest(value, expected)
    return False


class ServiceMiddleware:
    """Checks the bearer token (all paths but the probes) and times every request into the metrics."""

    def __init__(self, app: ASGIApp, service: Service, endpoints: Iterable[str]):
        self.app = app
        self.metrics = service.metrics
        self.endpoints = frozenset(endpoints)  # paths without parameters: a label as they are
        self.expected = bearer(service.config)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        start = time.perf_counter()
        status = 500

        async def send_timed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.expected is None or path in PROBES or authorized(scope, self.expected):
                await self.app(scope, receive, send_timed)
            else:
                await _unauthorized(scope, receive, send_timed)
        finally:
            seconds = time.perf_counter() - start
            route = scope.get("route")  # set by the router: the path template is the label (bounded)
            endpoint = getattr(route, "path", None) or (path if path in self.endpoints else "other")
            self.metrics.observe_request(endpoint, status, seconds)
            if endpoint in SERVICE_ENDPOINTS:
                name = scope.get("path_params", {}).get("name")
                if name is not None:
                    self.metrics.observe_service(name, endpoint, status, seconds)


def unauthorized() -> Response:
    return Response(
        error_body("unauthorized", "missing or wrong bearer token: send 'Authorization: Bearer <token>'"),
        401,
        {"WWW-Authenticate": "Bearer"},
        media_type=JSON,
    )


async def _unauthorized(scope: Scope, receive: Receive, send: Send) -> None:
    await unauthorized()(scope, receive, send)


# -- the hot reads' own door ----------------------------------------------------------------------


FEATURES_PATH = "/v1/features"
SERVICES_PREFIX = "/v1/services/"
SERVICE_ENDPOINT = "/v1/services/{name}"


class HotReads:
    """``POST /v1/features`` and ``POST /v1/services/{name}`` served straight from uvicorn's ASGI call,
    without Starlette's middleware stack, router, ``Request`` and exception middlewares, doing what
    they do for these two routes and no more (docs/benchmarks.md measures what it saves):

    - the bearer token, checked as ``ServiceMiddleware`` checks it (401 ``unauthorized``, labelled
      as that middleware labels a request that reached no route);
    - the body read and bounded by ``read_body`` (413 ``payload_too_large``; ``ClientDisconnect``);
    - the same ``Answers`` as the routes;
    - errors answered as the exception handlers answer them: a pgfeatures error by ``error_response``,
      a client gone by ``client_gone_response`` (499), anything else by a 500 ``internal``, then
      raised again for uvicorn to log (as Starlette's ``ServerErrorMiddleware`` does);
    - the request timed into the metrics under its route's path (and its service's name) with the
      status it was answered with.

    ``match`` tells the two apart from everything else (exact paths, ``POST``, no ``root_path``): any
    other request, a trailing slash or ``/v1/services/a/b`` included, goes to Starlette as before.
    """

    __slots__ = ("answers", "metrics", "expected", "limit", "retry_after")

    def __init__(self, service: Service, hot: Answers):
        self.answers = hot
        self.metrics = service.metrics
        self.expected = bearer(service.config)
        self.limit = service.config.max_body_bytes
        self.retry_after = service.config.retry_after

    @staticmethod
    def match(scope: Scope) -> str | None:
        """The empty string for ``POST /v1/features``, the service's name for ``POST /v1/services/{name}``,
        None for any other request."""
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
            return None
        path: str = scope["path"]
        if path == FEATURES_PATH:
            return ""
        if path.startswith(SERVICES_PREFIX):
            name = path[len(SERVICES_PREFIX) :]
            if name and "/" not in name:
                return name
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        start = time.perf_counter()
        length, accept, authorization = "", None, None
        for header, value in scope["headers"]:  # the first of each, as Starlette's Headers.get and authorized()
            if header == b"content-length":
                if not length:
                    length = value.decode("latin-1")
            elif header == b"accept":
                if accept is None:
                    accept = value.decode("latin-1")
            elif header == b"authorization" and authorization is None:
                authorization = value
        expected = self.expected
        if expected is not None and (authorization is None or not hmac.compare_digest(authorization, expected)):
            response = unauthorized()
            await response(scope, receive, send)
            endpoint = "other" if name else FEATURES_PATH  # no route reached: ServiceMiddleware's label
            self.metrics.observe_request(endpoint, response.status_code, time.perf_counter() - start)
            return
        endpoint = SERVICE_ENDPOINT if name else FEATURES_PATH
        status = 500
        try:
            try:
                raw = await read_body(receive, length, self.limit)
                if name:
                    response = await self.answers.service(name, raw, accept)
                else:
                    response = await self.answers.features(raw)
            except PgFeaturesError as exc:
                if isinstance(exc, TransformError):  # as the routes' handler: the traceback for the log only
                    log.error("pgfeatures: POST %s: %s", scope["path"], exc, exc_info=exc.__cause__ or exc)
                response = error_response(exc, self.retry_after)
            except ClientDisconnect:
                response = client_gone_response(self.retry_after)
            status = response.status_code
            await response(scope, receive, send)
        except Exception as exc:
            if status == 500:  # nothing sent yet
                await error_response(exc, self.retry_after)(scope, receive, send)
            raise
        finally:
            seconds = time.perf_counter() - start
            self.metrics.observe_request(endpoint, status, seconds)
            if name:
                self.metrics.observe_service(name, endpoint, status, seconds)


class FeatureApp(Starlette):
    """The app: Starlette, with the hot reads served by ``HotReads`` ahead of its middleware stack."""

    def __init__(self, hot: HotReads, **kwargs: Any):
        super().__init__(**kwargs)
        self.hot = hot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = HotReads.match(scope)
        if name is None:
            await super().__call__(scope, receive, send)
        else:
            scope["app"] = self
            await self.hot(scope, receive, send, name)


# -- factory --------------------------------------------------------------------------------------


def warmup_hooks(config: ServerConfig) -> list[WarmupHook]:
    """Warm-up steps run after the store is open (statements prepared on every pool
    connection, hot keys read) and before ``/readyz`` turns ready: with ``prewarm``,
    ``pgfeatures warmup`` (pg_prewarm of the feature tables and their indexes)."""
    if not config.prewarm:
        return []
    from ..warmup import warm_store_async

    return [warm_store_async]


def create_app(
    config: ServerConfig,
    *,
    registry: Registry | None = None,
    warmup: Iterable[WarmupHook] | None = None,
    reload_on_sighup: bool = False,
) -> Starlette:
    """The ASGI app. The store opens in the background at startup; ``warmup`` hooks (default:
    ``warmup_hooks(config)``) run after it, before the app reports ready. ``reload_on_sighup``: SIGHUP
    reloads the definitions (``Service.reload``; what ``pgfeatures serve`` asks for).

    Raises DefinitionError for a bad definitions file, ConfigError for bad settings.
    """
    service = Service(config, registry or config.registry(), warmup_hooks(config) if warmup is None else warmup)
    hot = answers(service)
    app_routes = routes(service, hot)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        if reload_on_sighup:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, service.reload_soon)
        try:
            yield
        finally:
            if reload_on_sighup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            await service.stop()

    app = FeatureApp(
        HotReads(service, hot),
        routes=app_routes,
        middleware=[Middleware(ServiceMiddleware, service=service, endpoints=[r.path for r in app_routes])],
        exception_handlers=exception_handlers(service, app_routes),
        lifespan=lifespan,
    )
    app.state.service = service
    return app


def app_from_env() -> Starlette:
    """The app factory uvicorn's workers call: settings from ``$PGFEATURES_SERVER_CONFIG`` (set by ``run``)."""
    from .runner import config_from_env

    return create_app(config_from_env(), reload_on_sighup=True)
