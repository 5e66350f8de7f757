"""What each failure looks like over HTTP: status, error type and a JSON body that says what is valid.

Every error response has the body ``{"error": {"type": ..., "message": ...}}``.
The message of a pgfeatures typed error is passed through unchanged: it
already names what was wrong and what is valid (the tables, the features,
the key format).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from starlette.responses import Response

from ..errors import (
    DatabaseUnavailableError,
    DefinitionError,
    KeyFormatError,
    PgFeaturesError,
    UnknownFeatureError,
    UnknownStrategyError,
    UnknownTableError,
)

JSON = "application/json"


class RequestError(PgFeaturesError, ValueError):
    """The HTTP request itself is unacceptable: not JSON, wrong shape, over a limit, not authorized."""

    def __init__(self, type: str, message: str, status: int = 400, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.type = type
        self.status = status
        self.headers = headers or {}


class NotReadyError(PgFeaturesError):
    """The service has not finished warming up (or failed to): it serves no reads yet."""


@dataclass(frozen=True)
class HTTPError:
    status: int
    type: str
    retry: bool = False  # send Retry-After


# Most specific first: UnknownTableError is also a KeyError, KeyFormatError a ValueError.
_BY_CLASS: tuple[tuple[type[Exception], HTTPError], ...] = (
    (KeyFormatError, HTTPError(400, "invalid_key")),
    (UnknownTableError, HTTPError(400, "unknown_table")),
    (UnknownFeatureError, HTTPError(400, "unknown_feature")),
    (UnknownStrategyError, HTTPError(400, "unknown_strategy")),
    (DefinitionError, HTTPError(400, "invalid_selection")),
    (DatabaseUnavailableError, HTTPError(503, "database_unavailable", retry=True)),
    (NotReadyError, HTTPError(503, "not_ready", retry=True)),
)
_INTERNAL = HTTPError(500, "internal")


def classify(exc: BaseException) -> HTTPError:
    """The HTTP status and error type for an exception; anything unexpected is a 500 ``internal``."""
    if isinstance(exc, RequestError):
        return HTTPError(exc.status, exc.type)
    for cls, error in _BY_CLASS:
        if isinstance(exc, cls):
            return error
    return _INTERNAL


def error_body(type: str, message: str) -> bytes:
    return orjson.dumps({"error": {"type": type, "message": message}})


def error_response(exc: BaseException, retry_after: int) -> Response:
    """The JSON error response for ``exc``; 503s carry ``Retry-After``."""
    error = classify(exc)
    headers = dict(exc.headers) if isinstance(exc, RequestError) else {}
    if error.retry:
        headers["Retry-After"] = str(retry_after)
    message = str(exc) if error is not _INTERNAL else f"internal error ({type(exc).__name__}); see the server log"
    return Response(error_body(error.type, message), error.status, headers, media_type=JSON)
