"""pgfeatures: online feature serving on PostgreSQL, one round-trip for any number of feature tables."""

from .definitions import Feature, FeatureTable, FeatureType, Registry
from .connections import Cached, CredentialProvider, EnvPassword, PasswordFile, load_provider
from .errors import (
    AuthenticationError,
    DatabaseError,
    DatabaseUnavailableError,
    DefinitionError,
    EmbeddedServerError,
    FeatureValueError,
    KeyFormatError,
    LoadError,
    LoadInputError,
    LoadInterruptedError,
    PgFeaturesError,
    PoolExhaustedError,
    QueryTimeoutError,
    ReadOnlyStoreError,
    SchemaDriftError,
    StoreClosedError,
    UnknownFeatureError,
    UnknownStrategyError,
    UnknownTableError,
)
from .reader import MISSING, BatchReader, Reader, Strategy
from .store import AsyncFeatureStore, FeatureStore

__version__ = "0.1.0"

__all__ = [
    "AsyncFeatureStore",
    "AuthenticationError",
    "Cached",
    "CredentialProvider",
    "DatabaseError",
    "EnvPassword",
    "PasswordFile",
    "PoolExhaustedError",
    "QueryTimeoutError",
    "ReadOnlyStoreError",
    "StoreClosedError",
    "load_provider",
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
