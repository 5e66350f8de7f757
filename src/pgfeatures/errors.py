"""Typed errors. Each says what was wrong and, where there is a finite answer, what is valid."""

from __future__ import annotations

from collections.abc import Iterable


class PgFeaturesError(Exception):
    """Base class of every error pgfeatures raises on purpose."""


class DefinitionError(PgFeaturesError, ValueError):
    """A feature-table definition is invalid (bad name, unsupported type, ...)."""


class SchemaDriftError(PgFeaturesError):
    """The live table disagrees with its definition."""


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


class KeyFormatError(PgFeaturesError, ValueError):
    """An entity key is not 32 bytes or 64 hex characters."""


class UnknownStrategyError(PgFeaturesError, ValueError):
    pass


class DatabaseUnavailableError(PgFeaturesError, ConnectionError):
    """The database could not be reached within the connect timeout."""


class EmbeddedServerError(PgFeaturesError, RuntimeError):
    """The embedded PostgreSQL could not be created, started or stopped."""


# -- HTTP service (pgfeatures serve) --


class ConfigError(PgFeaturesError, ValueError):
    """A service setting (flag, environment variable or config-file entry) is invalid."""


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


class LoadInterruptedError(LoadError, ConnectionError):
    """The database connection was lost or the load was cancelled mid-way (``committed`` is None
    when the connection died during COMMIT, so the outcome is unknown)."""

    committed: bool | None = False


class FeatureValueError(PgFeaturesError, ValueError):
    """A live update carries a value its column cannot hold (wrong type, out of range, NaN)."""


# -- benchmark (pgfeatures bench) --


class BenchmarkError(PgFeaturesError, ValueError):
    """A benchmark setting is invalid, or the strategies being compared disagree on the features."""
