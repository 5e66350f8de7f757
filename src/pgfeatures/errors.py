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
