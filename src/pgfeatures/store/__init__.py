"""The feature stores (floor 5): thin I/O shells around the compiled readers.

- ``options``: StoreOptions, every setting of a store, validated once (the CLI, ``serve`` and the
  Feast plugin derive theirs from it);
- ``store_async``: AsyncFeatureStore, the source: lifecycle, public methods;
- ``store``: FeatureStore, generated from it (``tools/async_to_sync.py``);
- ``opening_async`` / ``opening``: what ``open`` does: catalog inspection, materialized
  services, read functions, the pools and the warm-up of each read connection;
- ``reads_async`` / ``reads``: the read path: statements on a connection, routing and retry over
  the read targets, rechecks of broken tables, probes of targets that are down;
- ``writes_async`` / ``writes``: the write path: the write pool, upserts and their retry;
- ``base``: what both share without I/O: read targets and routing, tables that cannot be
  served, warm-up statements.
"""

from .options import StoreOptions
from .store import FeatureStore
from .store_async import AsyncFeatureStore

__all__ = ["AsyncFeatureStore", "FeatureStore", "StoreOptions"]
