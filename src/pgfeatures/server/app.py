"""The HTTP API: a Starlette app over a ``Service``: routes, request parsing, auth, errors, timing.

Endpoints (JSON bodies, encoded with orjson)::

    POST /v1/features         {"key": hex, "tables"?: [...], "features"?: {...} | [...]}
    POST /v1/features/batch   {"keys": [hex, ...], "tables"?: [...], "features"?: ...}
    GET  /v1/tables           the feature tables and their features
    GET  /healthz             the process is alive
    GET  /readyz              warmed up and the database answers (else 503)
    GET  /metrics             Prometheus text format
    GET  /openapi.json        the OpenAPI document

A result is ``{"key": ..., "features": {table: {feature: value} | null},
"missing": [tables without a row]}``; a batch returns ``{"results": [...]}``
in input order. Errors are ``{"error": {"type": ..., "message": ...}}``
(see ``errors.py``). Request bodies are validated strictly (unknown fields,
wrong types, bad keys are 400s naming what is valid) before any I/O.

Bearer-token auth and request timing are one pure ASGI middleware:
Starlette's ``BaseHTTPMiddleware`` would cost a task and a queue per request.
"""

from __future__ import annotations

import contextlib
import hmac
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..definitions import KEY_LENGTH, Registry
from ..errors import KeyFormatError, PgFeaturesError
from ..reader import FeaturesArg
from .config import ServerConfig
from .encoding import BATCH_HEAD, BATCH_TAIL, batch_pieces, dumps, result
from .errors import JSON, RequestError, error_body, error_response
from .metrics import CONTENT_TYPE
from .openapi import openapi_document
from .service import Service, WarmupHook
from .streaming import BatchAnswer, StreamedAnswer

_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
_HEX_KEYS = re.compile(r"[0-9a-fA-F]*")
PROBES = frozenset({"/healthz", "/readyz"})  # never behind the token: orchestrators have none
SINGLE_FIELDS = ("key", "tables", "features")
BATCH_FIELDS = ("keys", "tables", "features")


# -- request parsing (pure) -----------------------------------------------------------------------


def parse_json(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object. Raises RequestError."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestError("invalid_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError("invalid_request", f"the body must be a JSON object, got {_json_type(body)}")
    return body


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def check_fields(body: Mapping[str, Any], allowed: Sequence[str], required: str) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise RequestError("invalid_request", f"unknown field(s): {', '.join(unknown)}; valid fields: {', '.join(allowed)}")
    if required not in body:
        raise RequestError("invalid_request", f"missing field {required!r}; valid fields: {', '.join(allowed)}")


def parse_hex_key(value: Any, where: str = "key") -> bytes:
    """A key as 64 hex characters (nothing else: no whitespace, no 0x). Raises KeyFormatError."""
    if not isinstance(value, str):
        raise KeyFormatError(f"{where}: a key must be a string of 64 hex characters, got {_json_type(value)}")
    if not _HEX_KEY.fullmatch(value):
        if len(value) != 64:
            raise KeyFormatError(f"{where}: a key must be 64 hex characters, got {len(value)} characters")
        raise KeyFormatError(f"{where}: a key must be 64 hex characters (0-9, a-f), got {value!r}")
    return bytes.fromhex(value)


class PackedKeys(Sequence[bytes]):
    """Keys held as one bytes object of 32-byte keys; slicing gives the keys of one chunk."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes):
        self.raw = raw

    def __len__(self) -> int:
        return len(self.raw) // KEY_LENGTH

    def __getitem__(self, index: Any) -> Any:
        raw, n = self.raw, KEY_LENGTH
        if isinstance(index, slice):
            return [raw[i * n:(i + 1) * n] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return raw[index * n:(index + 1) * n]


def parse_hex_keys(texts: list[Any]) -> PackedKeys:
    """Many keys as 64 hex characters each, checked in C in one pass over the joined text;
    on any failure the keys are checked one by one so the error names the first bad one
    (``keys[i]: ...``). Raises KeyFormatError."""
    try:
        joined = "".join(texts)
    except TypeError:
        joined = ""  # a non-string: found below
    if len(joined) == 2 * KEY_LENGTH * len(texts) and _HEX_KEYS.fullmatch(joined) and all(
        len(t) == 2 * KEY_LENGTH for t in texts
    ):
        return PackedKeys(bytes.fromhex(joined))
    for i, text in enumerate(texts):
        parse_hex_key(text, f"keys[{i}]")
    raise AssertionError("unreachable: the joined keys failed but every key passed")  # pragma: no cover


def _names(value: Any, field: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RequestError("invalid_request", f"{field} must be an array of strings, got {_json_type(value)}")
    if not value:
        raise RequestError("invalid_request", f"{field} must not be empty (omit it to read all)")
    return value


def parse_selection(body: Mapping[str, Any]) -> tuple[list[str] | None, FeaturesArg]:
    """``tables`` and ``features`` checked for shape; names are checked by the store (UnknownTableError, ...)."""
    tables = body.get("tables")
    if tables is not None:
        tables = _names(tables, "tables")
    features = body.get("features")
    if features is None or isinstance(features, list):
        return tables, features if features is None else _names(features, "features")
    if not isinstance(features, dict):
        raise RequestError(
            "invalid_request",
            f"features must be an object {{table: [feature, ...]}} or an array [\"table.feature\", ...], got {_json_type(features)}",
        )
    if not features:
        raise RequestError("invalid_request", "features must name at least one table (omit it to read all)")
    return tables, {table: _names(names, f"features.{table}") for table, names in features.items()}


def json_response(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(dumps(payload), status, headers, media_type=JSON)


def tables_document(registry: Registry) -> dict[str, Any]:
    return {
        "schema": registry.schema,
        "tables": [
            {
                "name": t.name,
                "covering_index": t.covering_index,
                "features": [{"name": f.name, "type": f.type.name} for f in t.features],
            }
            for t in registry.tables.values()
        ],
    }


# -- routes ---------------------------------------------------------------------------------------


BODY_LIMIT_HINT = (
    "the limit is max(1 MiB, 80 bytes x max_batch_keys): raise it with --max-batch-keys or "
    "PGFEATURES_MAX_BATCH_KEYS (max_batch_keys in the config file)"
)


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 past ``limit`` bytes (checked as it streams in, not after)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise RequestError("payload_too_large", f"the body is {length} bytes, over {limit}; {BODY_LIMIT_HINT}", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError("payload_too_large", f"the body exceeds {limit} bytes; {BODY_LIMIT_HINT}", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def routes(service: Service) -> list[Route]:
    config = service.config
    limit = config.max_body_bytes
    max_keys = config.max_batch_keys

    async def features(request: Request) -> Response:
        body = parse_json(await read_body(request, limit))
        check_fields(body, SINGLE_FIELDS, "key")
        key = parse_hex_key(body["key"])
        tables, selection = parse_selection(body)
        return json_response(result(body["key"], await service.read_one(key, tables, selection)))

    async def batch(request: Request) -> Response:
        body = parse_json(await read_body(request, limit))
        check_fields(body, BATCH_FIELDS, "keys")
        texts = body["keys"]
        if not isinstance(texts, list):
            raise RequestError("invalid_request", f"keys must be an array of 64-hex-character keys, got {_json_type(texts)}")
        if len(texts) > max_keys:
            raise RequestError(
                "too_many_keys",
                f"{len(texts)} keys in one request; the limit is {max_keys}: send fewer keys per request, or raise "
                "it with --max-batch-keys or PGFEATURES_MAX_BATCH_KEYS (max_batch_keys in the config file)",
            )
        keys = parse_hex_keys(texts)
        tables, selection = parse_selection(body)
        del body
        chunks = service.open_batch(keys, tables, selection)
        first = await anext(chunks, [])  # a failure here is still an ordinary error response
        if len(first) == len(keys):
            await chunks.aclose()  # type: ignore[attr-defined]
            return Response(BATCH_HEAD + batch_pieces(texts, first, True) + BATCH_TAIL, media_type=JSON)
        return StreamedAnswer(BatchAnswer(texts, first, chunks), JSON)  # type: ignore[return-value]

    def static_json(document: Any) -> Any:
        body = orjson.dumps(document)  # encoded once

        async def endpoint(request: Request) -> Response:
            return Response(body, media_type=JSON)

        return endpoint

    async def healthz(request: Request) -> Response:
        return json_response({"status": "alive"})

    async def readyz(request: Request) -> Response:
        # Ready: serving. Degraded (still 200: the other tables are served): some tables cannot be,
        # named with why. Not ready (503): warming up, or no read target answers.
        ready, reason = await service.readiness()
        details = service.details()
        if ready:
            status = "degraded" if details["broken_tables"] else "ready"
            return json_response({"status": status, **details})
        return json_response({"status": "not_ready", "reason": reason, **details}, 503,
                             {"Retry-After": str(config.retry_after)})

    async def metrics(request: Request) -> Response:
        service.flush_metrics()
        return Response(service.metrics.exposition(), media_type=CONTENT_TYPE)

    return [
        Route("/v1/features", features, methods=["POST"]),
        Route("/v1/features/batch", batch, methods=["POST"]),
        Route("/v1/tables", static_json(tables_document(service.registry)), methods=["GET"]),
        Route("/openapi.json", static_json(openapi_document(service.registry, config)), methods=["GET"]),
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
        return error_response(exc, retry_after)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            error = RequestError("not_found", f"no endpoint {request.method} {request.url.path}; endpoints: {endpoints}", 404)
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            error = RequestError(
                "method_not_allowed", f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}",
                405, dict(exc.headers or {}),
            )
        else:
            error = RequestError("http_error", exc.detail, exc.status_code, dict(exc.headers or {}))
        return error_response(error, retry_after)

    async def internal_error(request: Request, exc: Exception) -> Response:
        return error_response(exc, retry_after)

    return {PgFeaturesError: pgfeatures_error, HTTPException: http_error, Exception: internal_error}


# -- auth and timing ------------------------------------------------------------------------------


class ServiceMiddleware:
    """Checks the bearer token (all paths but the probes) and times every request into the metrics."""

    def __init__(self, app: ASGIApp, service: Service, endpoints: Iterable[str]):
        self.app = app
        self.metrics = service.metrics
        self.endpoints = frozenset(endpoints)
        token = service.config.bearer_token
        self.expected = f"Bearer {token}".encode() if token else None

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
            if self.expected is None or path in PROBES or self._authorized(scope):
                await self.app(scope, receive, send_timed)
            else:
                await _unauthorized(scope, receive, send_timed)
        finally:
            self.metrics.observe_request(path if path in self.endpoints else "other", status, time.perf_counter() - start)

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                return hmac.compare_digest(value, self.expected)  # type: ignore[arg-type]
        return False


async def _unauthorized(scope: Scope, receive: Receive, send: Send) -> None:
    response = Response(
        error_body("unauthorized", "missing or wrong bearer token: send 'Authorization: Bearer <token>'"),
        401, {"WWW-Authenticate": "Bearer"}, media_type=JSON,
    )
    await response(scope, receive, send)


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
) -> Starlette:
    """The ASGI app. The store opens in the background at startup; ``warmup`` hooks (default:
    ``warmup_hooks(config)``) run after it, before the app reports ready.

    Raises DefinitionError for a bad definitions file, ConfigError for bad settings.
    """
    service = Service(config, registry or config.registry(), warmup_hooks(config) if warmup is None else warmup)
    app_routes = routes(service)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = Starlette(
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

    return create_app(config_from_env())
