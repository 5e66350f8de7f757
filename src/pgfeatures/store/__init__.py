"""The feature stores (floor 5): thin I/O shells around the compiled readers.

- ``store_async``: AsyncFeatureStore, the source;
- ``store``: FeatureStore, generated from it (``tools/async_to_sync.py``);
- ``base``: what both share without I/O: read targets and routing, tables that cannot be
  served, warm-up statements.
"""

from .store import FeatureStore
from .store_async import AsyncFeatureStore

__all__ = ["AsyncFeatureStore", "FeatureStore"]
