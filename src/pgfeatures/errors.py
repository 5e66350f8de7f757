"""Typed errors. Each says what was wrong and, where there is a finite answer, what is valid."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


class PgFeaturesError(Exception):
    """Base class of every error pgfeatures raises on purpose."""


class DefinitionError(PgFeaturesError, ValueError):
    """A feature-table definition is invalid (bad name, unsupported type, ...)."""


class SchemaDriftError(PgFeaturesError):
    """The live database disagrees with the definitions: a table is missing or renamed, a column
    is missing, extra or of another type, a key or index is missing.

    ``problems`` maps each affected table to what is wrong with it. The message names the tables,
    the columns and the command that creates what is missing (``pgfeatures init``). Not retryable:
    an operator must change the database or the definitions.
    """

    def __init__(self, message: str, problems: Mapping[str, Sequence[str]] | None = None):
        super().__init__(message)
        self.problems: dict[str, list[str]] = {t: list(p) for t, p in (problems or {}).items()}

    @property
    def tables(self) -> list[str]:
        return list(self.problems)


class UnknownTableError(PgFeaturesError, KeyError):
    def __init__(self, names: Iterable[str], valid: Iterable[str]):
        self.names = sorted(names)
        self.valid = sorted(valid)
        super().__init__(
            f"unknown feature table(s): {', '.join(self.names)}; valid tables: {', '.join(self.valid) or '(none defined)'}"
        )

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class UnknownFeatureError(PgFeaturesError, KeyError):
    def __init__(self, table: str, names: Iterable[str], valid: Iterable[str]):
        self.table = table
        self.names = sorted(names)
        self.valid = list(valid)
        super().__init__(
            f"unknown feature(s) in table {table!r}: {', '.join(self.names)}; valid features: {', '.join(self.valid)}"
        )

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownServiceError(PgFeaturesError, KeyError):
    def __init__(self, names: Iterable[str], valid: Iterable[str]):
        self.names = sorted(names)
        self.valid = sorted(valid)
        super().__init__(
            f"unknown feature service(s): {', '.join(self.names)}; valid services: {', '.join(self.valid) or '(none defined)'}"
        )

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownEntityError(PgFeaturesError, KeyError):
    def __init__(self, names: Iterable[str], valid: Iterable[str]):
        self.names = sorted(names)
        self.valid = sorted(valid)
        super().__init__(f"unknown entity: {', '.join(self.names)}; valid entities: {', '.join(self.valid)}")

    def __str__(self) -> str:
        return str(self.args[0])


class KeyFormatError(PgFeaturesError, ValueError):
    """An entity key is not what its entity takes (32 bytes or 64 hex characters, an integer, a
    bounded string, a UUID), or a request lacks the key of an entity it needs."""


class UnknownStrategyError(PgFeaturesError, ValueError):
    pass


class DatabaseUnavailableError(PgFeaturesError, ConnectionError):
    """The database cannot be reached now (refused, down, restarting, connection lost, or no
    connection could be made within the timeout). Transient: retry later."""


class AuthenticationError(DatabaseUnavailableError):
    """The server refused the credentials (wrong or changed password, expired token, no TLS where
    TLS is required). Retryable once the credential is renewed: with a credential provider, the
    next connection asks it again."""


class CredentialsTimeoutError(AuthenticationError):
    """The credential provider did not answer within ``credentials_timeout`` (a token endpoint that
    hangs): no login was attempted. Retryable: the next connection asks the provider again, and the
    store is back within a probe of it answering."""


class WriteOutcomeUnknownError(DatabaseUnavailableError):
    """The connection to the primary was lost after a live update was sent: whether the server
    applied it before the connection ended is unknown, so it was not sent again (a resend could
    overwrite a newer write another writer made meanwhile). Reading the rows tells. Sending it again
    is harmless when the rows carry their event time in ``updated_at``: newest wins, so a resend
    never overwrites a newer row. A connection found dead *before* anything was sent on it is
    replaced and the update sent on another, without this error."""


class PoolExhaustedError(DatabaseUnavailableError):
    """Every pooled connection stayed busy for ``acquire_timeout``: the database answers, the
    store is over capacity. Retry later, or give the store a larger pool."""


class QueryTimeoutError(PgFeaturesError, TimeoutError):
    """A statement ran past its deadline (PostgreSQL's ``statement_timeout``, or the service's
    ``request_timeout``) and was cancelled. Retryable; a repeated timeout means a slow database."""


class StoreClosedError(PgFeaturesError, RuntimeError):
    """The store was never opened, or has been closed (a service shutting down)."""


class ReadOnlyStoreError(PgFeaturesError):
    """A write was asked of a store that has no write pool (``write_pool_size=0``, or a
    read-only service). Permanent for this store: not retryable."""


class DatabaseError(PgFeaturesError):
    """The database rejected a statement for a reason that is not an outage, a timeout or schema
    drift (for example a missing privilege, or a write sent to a read replica). ``sqlstate`` is
    PostgreSQL's error code when known."""

    def __init__(self, message: str, sqlstate: str | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate


class ConflictError(PgFeaturesError):
    """PostgreSQL rolled a statement back because it conflicted with a concurrent one (a deadlock or a
    serialization failure, SQLSTATE 40P01 / 40001; on a replica, a conflict with recovery). Nothing of
    it was applied: retrying is safe (pgfeatures retries live updates itself before raising this)."""

    def __init__(self, message: str, sqlstate: str | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate


class MaterializeError(PgFeaturesError):
    """A materialized service's serving rows cannot be built as asked (for example a table of the
    serving table's name exists that pgfeatures did not build); nothing was changed."""


class ChangeBlockedError(PgFeaturesError):
    """A definition change (``pgfeatures apply``) could not take the locks it needs in time: the
    message names what holds them. Nothing was changed; retry when they are released."""


class EmbeddedServerError(PgFeaturesError, RuntimeError):
    """The embedded PostgreSQL could not be created, started or stopped."""


class VectorOutputError(DefinitionError):
    """A service read as a vector holds a feature that is not a number (a string, a list); the
    message names them and what to do instead."""


class ExtensionMissingError(PgFeaturesError):
    """A definition needs a PostgreSQL extension the server does not have (pgvector for an embedding
    stored as a vector or indexed); the message says how to install it or what to declare instead."""


class NearestError(PgFeaturesError, ValueError):
    """A nearest-neighbour request cannot be answered as asked: the feature is not an embedding, ``k``
    or ``ef_search`` is out of range, a ``where`` filter names a feature it cannot compare. The
    message says what is valid."""


class ExactSearchRefusedError(NearestError):
    """An exact nearest-neighbour search (no usable HNSW index, or ``exact=True``) was refused: the
    table holds more rows than the store's ``exact_limit``. Declare ``index = "hnsw"`` (pgvector) or
    raise ``exact_limit``."""


class ExtraNotInstalledError(PgFeaturesError, ImportError):
    """A call needs an optional dependency group (an extra, e.g. ``load`` for bulk loads) that is not
    installed: the core install is psycopg only. The message names the extra and the pip command."""


# -- HTTP service (pgfeatures serve) --


class ConfigError(PgFeaturesError, ValueError):
    """A service setting (flag, environment variable or config-file entry) is invalid."""


class ConnectionSettingsError(ConfigError):
    """The connection settings cannot work as written: a DSN libpq cannot parse (or a value it
    refuses, such as ``port=abc``), or a database or role the server does not have. Neither an
    outage nor a credential to renew: the same settings fail the same way until the DSN is fixed
    (or the database or role is created). The message says which and how."""


# -- doctor and warm-up (pgfeatures doctor / warmup) --


class WarmupError(PgFeaturesError, RuntimeError):
    """The cache warm-up cannot run as asked (no feature table, pg_prewarm unavailable, unreadable hot-key file)."""


# -- write path (load.py / write.py) --


class LoadError(PgFeaturesError):
    """A bulk load failed before it committed: the table keeps exactly its previous contents.

    ``source``, ``column`` and ``row`` (1-based data row, header excluded) say where, when known.
    """

    def __init__(self, message: str, *, source: str | None = None, column: str | None = None, row: int | None = None):
        super().__init__(message)
        self.source, self.column, self.row = source, column, row
        self.unchanged_table: str | None = None  # set by the loader once the rollback is certain

    def __str__(self) -> str:
        note = f"; nothing was loaded, {self.unchanged_table} is unchanged" if self.unchanged_table else ""
        return f"{self.args[0]}{note}"


class LoadInputError(LoadError, ValueError):
    """The input is unusable: unreadable or empty file, missing or extra columns, wrong types,
    out-of-range or NaN values, malformed or duplicate keys, or invalid load options."""


class CorruptFileError(LoadInputError):
    """A source file is damaged: a Parquet page fails its checksum, decoded values contradict the
    column statistics the writer recorded, or the file cannot be decoded at all (truncated,
    garbled). ``row_group`` says where, when known. Not retryable: the file must be rewritten."""

    row_group: int | None = None


class LoadInterruptedError(LoadError, ConnectionError):
    """The database connection was lost or the load was cancelled mid-way.

    Whether running the same load again (on a fresh connection) is safe:

    ``committed``
        False: the load's transaction never reached COMMIT, so nothing was applied. None: the
        connection died during COMMIT, so the outcome is unknown (the load may or may not have
        been applied; a retry could apply it twice, which for ``mode="merge"`` with the same rows
        is harmless, but the caller must decide).
    ``source_rereadable``
        True when the load's data can be read again from the start: file paths, pyarrow
        Tables/RecordBatches, pandas/polars DataFrames, lists of RecordBatches. False for one-shot
        streams (iterators or generators of batches, a RecordBatchReader, an Arrow C stream):
        they were consumed, and a second load would see only what is left.

    ``retry_safe`` is both: nothing committed and the data still readable.
    """

    committed: bool | None = False
    source_rereadable: bool = False

    @property
    def retry_safe(self) -> bool:
        return self.committed is False and self.source_rereadable


class FeatureValueError(PgFeaturesError, ValueError):
    """A live update carries a value its column cannot hold (wrong type, out of range, NaN)."""


class ContextError(FeatureValueError):
    """A feature service's request ``context`` (the caller-supplied values its transforms take) is not
    what the service declares: an unknown name (the message lists the valid ones), a missing one, a value
    of the wrong type, or a batch's context whose length differs from its keys'. Nothing was read."""


class TransformError(PgFeaturesError):
    """A feature service's request-time transform failed: it raised (``cause`` is the exception), returned
    something other than a mapping of its outputs, missed an output or gave one a value its declared type
    cannot hold. ``service``, ``transform`` and ``output`` (None when not about one output) name it. A bug
    in the transform or its inputs, not an outage: not retryable. Over HTTP a 500 ``transform_error``
    whose message names the transform (the traceback goes to the server log, never into the answer)."""

    def __init__(
        self, message: str, *, service: str, transform: str, output: str | None = None, public: str | None = None
    ):
        super().__init__(message)
        self.service, self.transform, self.output = service, transform, output
        # What an HTTP answer says: the message without the request's values and the function's own
        # exception text (they go to the server's log with the traceback, not to every caller).
        self.public = public or message


class EventTimeInFutureError(FeatureValueError):
    """A write's event time (``updated_at``) is further ahead of the database server's clock than
    ``max_future_skew`` allows: nothing of the batch was written. (Time-dependent: no static schema can
    say it, so the OpenAPI document says it in words, and HTTP answers 400 ``event_time_in_future``.)"""


# -- benchmark (pgfeatures bench) --


class BenchmarkError(PgFeaturesError, ValueError):
    """A benchmark setting is invalid, or the strategies being compared disagree on the features."""
