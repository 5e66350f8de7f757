"""pgfeatures: online feature serving on PostgreSQL, one round-trip for any number of feature tables."""

from .definitions import Feature, FeatureTable, FeatureType, Registry
from .errors import (
    DatabaseUnavailableError,
    DefinitionError,
    EmbeddedServerError,
    FeatureValueError,
    KeyFormatError,
    LoadError,
    LoadInputError,
    LoadInterruptedError,
    PgFeaturesError,
    SchemaDriftError,
    UnknownFeatureError,
    UnknownStrategyError,
    UnknownTableError,
)
from .reader import MISSING, BatchReader, Reader, Strategy
from .store import AsyncFeatureStore, FeatureStore

__version__ = "0.1.0"

__all__ = [
    "AsyncFeatureStore",
    "BatchReader",
    "DatabaseUnavailableError",
    "DefinitionError",
    "EmbeddedServerError",
    "FeatureValueError",
    "LoadError",
    "LoadInputError",
    "LoadInterruptedError",
    "Feature",
    "FeatureStore",
    "FeatureTable",
    "FeatureType",
    "KeyFormatError",
    "MISSING",
    "PgFeaturesError",
    "Reader",
    "Registry",
    "SchemaDriftError",
    "Strategy",
    "UnknownFeatureError",
    "UnknownStrategyError",
    "UnknownTableError",
]
