"""The feature stores (floor 5): thin I/O shells around the compiled readers.

- ``options``: StoreOptions, every setting of a store, validated once (the CLI, ``serve`` and the
  Feast plugin derive theirs from it);
- ``store_async``: AsyncFeatureStore, the source: lifecycle, public methods;
- ``store``: FeatureStore, generated from it (``tools/async_to_sync.py``);
- ``opening_async`` / ``opening``: what ``open`` and ``reload`` learn through the read router:
  catalog inspection, materialized services, read functions, statements prepared everywhere;
- ``reads_async`` / ``reads``: the read path, ``AsyncReadRouter`` / ``ReadRouter``: owns the read
  targets and their pools (warm-up, renewal, probes of targets that are down), routes and retries
  reads over them, re-checks broken tables; statements on a connection;
- ``writes_async`` / ``writes``: the write path, ``AsyncWritePath`` / ``WritePath``: owns the
  write pool (opened and closed with the store, renewed after an outage), upserts and their retry;
- ``base``: what both share without I/O: read targets and routing, tables that cannot be
  served, warm-up statements.
"""

from .options import StoreOptions
from .store import FeatureStore
from .store_async import AsyncFeatureStore

__all__ = ["AsyncFeatureStore", "FeatureStore", "StoreOptions"]
