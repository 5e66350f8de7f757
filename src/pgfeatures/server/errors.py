"""What each failure looks like over HTTP: a status that tells the caller whether to retry, an
error type, and a JSON body that says what was wrong and what is valid.

Every error response has the body::

    {"error": {"type": ..., "message": ..., "retryable": true|false}}

plus ``"sqlstate"`` for a database error. Retryable errors (an outage, an
exhausted pool, a timeout, a service warming up or shutting down) also carry
``Retry-After``. The message of a pgfeatures typed error is passed through
unchanged: it already names what was wrong and what is valid (the tables,
the features, the key format, the setting to raise). Anything that is not a
pgfeatures error is a bug: a 500 ``internal`` whose message names only the
exception's class (the details go to the server log).

``ERRORS`` maps every typed error of ``pgfeatures.errors`` (and the two of the
service) to its answer; ``tests/test_server_errors.py`` fails when a new
error class is added without a row here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from starlette.responses import Response

from ..errors import (
    AuthenticationError,
    BenchmarkError,
    ChangeBlockedError,
    ConfigError,
    ConflictError,
    ContextError,
    CorruptFileError,
    CredentialsTimeoutError,
    DatabaseError,
    DatabaseUnavailableError,
    DefinitionError,
    EmbeddedServerError,
    EventTimeInFutureError,
    ExactSearchRefusedError,
    ExtensionMissingError,
    ExtraNotInstalledError,
    FeatureValueError,
    KeyFormatError,
    LoadError,
    LoadInputError,
    LoadInterruptedError,
    MaterializeError,
    NearestError,
    PgFeaturesError,
    PoolExhaustedError,
    QueryTimeoutError,
    ReadOnlyStoreError,
    SchemaDriftError,
    StoreClosedError,
    TransformError,
    UnknownEntityError,
    UnknownFeatureError,
    UnknownServiceError,
    UnknownStrategyError,
    UnknownTableError,
    VectorOutputError,
    WarmupError,
    WriteOutcomeUnknownError,
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
    retryable: bool = False  # the same request may succeed later: sent with Retry-After


# Most specific first: AuthenticationError and PoolExhaustedError are DatabaseUnavailableErrors,
# CredentialsTimeoutError an AuthenticationError, LoadInputError a LoadError, UnknownTableError also a
# KeyError, KeyFormatError a ValueError, ContextError and EventTimeInFutureError FeatureValueErrors.
ERRORS: tuple[tuple[type[Exception], HTTPError], ...] = (
    # the request is wrong: do not retry it as it is
    (KeyFormatError, HTTPError(400, "invalid_key")),
    (UnknownServiceError, HTTPError(404, "unknown_service")),
    (UnknownEntityError, HTTPError(400, "unknown_entity")),
    (CorruptFileError, HTTPError(400, "corrupt_file")),
    (UnknownTableError, HTTPError(400, "unknown_table")),
    (UnknownFeatureError, HTTPError(400, "unknown_feature")),
    (UnknownStrategyError, HTTPError(400, "unknown_strategy")),
    (EventTimeInFutureError, HTTPError(400, "event_time_in_future")),
    (ContextError, HTTPError(400, "invalid_context")),
    (FeatureValueError, HTTPError(400, "invalid_value")),
    (ExactSearchRefusedError, HTTPError(400, "exact_search_refused")),
    (NearestError, HTTPError(400, "invalid_nearest")),
    (VectorOutputError, HTTPError(400, "vector_output_refused")),
    (DefinitionError, HTTPError(400, "invalid_selection")),
    (LoadInputError, HTTPError(400, "invalid_input")),
    # transient: retry after Retry-After (elsewhere if there is an elsewhere)
    (CredentialsTimeoutError, HTTPError(503, "credentials_timeout", retryable=True)),
    (AuthenticationError, HTTPError(503, "database_auth_failed", retryable=True)),
    (WriteOutcomeUnknownError, HTTPError(503, "write_outcome_unknown", retryable=True)),
    (PoolExhaustedError, HTTPError(503, "pool_exhausted", retryable=True)),
    (DatabaseUnavailableError, HTTPError(503, "database_unavailable", retryable=True)),
    (EmbeddedServerError, HTTPError(503, "database_unavailable", retryable=True)),
    (LoadInterruptedError, HTTPError(503, "database_unavailable", retryable=True)),
    (ConflictError, HTTPError(503, "conflict", retryable=True)),
    (ChangeBlockedError, HTTPError(503, "change_blocked", retryable=True)),
    (QueryTimeoutError, HTTPError(504, "query_timeout", retryable=True)),
    (StoreClosedError, HTTPError(503, "shutting_down", retryable=True)),
    (NotReadyError, HTTPError(503, "not_ready", retryable=True)),
    # permanent until an operator acts: retrying the same request gives the same answer
    (ReadOnlyStoreError, HTTPError(403, "read_only")),
    (SchemaDriftError, HTTPError(500, "schema_drift")),
    (DatabaseError, HTTPError(500, "database_error")),
    (LoadError, HTTPError(500, "load_failed")),
    (MaterializeError, HTTPError(500, "materialize_failed")),
    (ConfigError, HTTPError(500, "config_error")),
    (ExtensionMissingError, HTTPError(500, "extension_missing")),
    (ExtraNotInstalledError, HTTPError(500, "missing_extra")),
    (WarmupError, HTTPError(500, "warmup_failed")),
    (BenchmarkError, HTTPError(500, "benchmark_error")),
    (TransformError, HTTPError(500, "transform_error")),
)
INTERNAL = HTTPError(500, "internal")


def classify(exc: BaseException) -> HTTPError:
    """The HTTP status and error type for an exception; anything unexpected is a 500 ``internal``."""
    if isinstance(exc, RequestError):
        return HTTPError(exc.status, exc.type)
    for cls, error in ERRORS:
        if isinstance(exc, cls):
            return error
    return INTERNAL


def error_body(type: str, message: str, retryable: bool = False, **extra: Any) -> bytes:
    return orjson.dumps({"error": {"type": type, "message": message, "retryable": retryable, **extra}})


def error_response(exc: BaseException, retry_after: int) -> Response:
    """The JSON error response for ``exc``; retryable ones carry ``Retry-After``."""
    error = classify(exc)
    headers = dict(exc.headers) if isinstance(exc, RequestError) else {}
    if error.retryable:
        headers["Retry-After"] = str(retry_after)
    extra = {"sqlstate": exc.sqlstate} if isinstance(exc, (DatabaseError, ConflictError)) and exc.sqlstate else {}
    if error is INTERNAL:
        message = f"internal error ({type(exc).__name__}); see the server log"
    else:
        message = exc.public if isinstance(exc, TransformError) else str(exc)
    return Response(error_body(error.type, message, error.retryable, **extra), error.status, headers, media_type=JSON)
