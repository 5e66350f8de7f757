"""Query planning and row decoding (floor 3): pure code, no I/O, shared by the sync and async stores.

- ``selection``: what a request reads (tables, features, entities, ttls), validated;
- ``keys``: request keys checked per entity and bound to parameters (one per entity);
- ``transport``: the lossless arrays each table's features travel in;
- ``compile``: the strategies (``single`` by default, ``union``, ``join``, ``pipeline``,
  ``sequential``, and the batch form), each a statement plus a decoder;
- ``decode``: rows into FeatureResults: values, defaults, status per table;
- ``cache``: compiled readers per request shape, bounded in prepared statements.

The stores cache readers per request shape, so the hot path does no registry walks and no string work.
"""

from .cache import ReaderCache, request_shape
from .compile import (
    DEFAULT_STRATEGY,
    BatchReader,
    Fetch,
    Reader,
    Strategy,
    compile_batch_reader,
    compile_reader,
    fresh_sql,
)
from .decode import EXPIRED, MISSING, PRESENT, STATUSES, FeatureResult, Features, TableDecoder
from .keys import EntityKeys, KeyBinder, parse_key, parse_keys
from .selection import FeaturesArg, Selection, select, select_service
from .transport import Part, transport

__all__ = [
    "BatchReader",
    "DEFAULT_STRATEGY",
    "EXPIRED",
    "EntityKeys",
    "FeatureResult",
    "Features",
    "FeaturesArg",
    "Fetch",
    "KeyBinder",
    "MISSING",
    "PRESENT",
    "Part",
    "Reader",
    "ReaderCache",
    "STATUSES",
    "Selection",
    "Strategy",
    "TableDecoder",
    "compile_batch_reader",
    "compile_reader",
    "fresh_sql",
    "parse_key",
    "parse_keys",
    "request_shape",
    "select",
    "select_service",
    "transport",
]
