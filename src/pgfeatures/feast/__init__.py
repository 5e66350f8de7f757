"""pgfeatures as a Feast online store (floor 7: a front end; nothing in the core imports it).

Install with the ``feast`` extra (``pip install 'pgfeatures[feast]'``) and set in
``feature_store.yaml``::

    online_store:
      type: pgfeatures.feast.PgfeaturesOnlineStore

- ``mapping``: Feast views, join keys and services as pgfeatures tables, entities and services;
- ``keys``: Feast join-key values (Python or protobuf) as pgfeatures keys;
- ``plan``: a Feast request compiled into pgfeatures batch reads (one statement for every view);
- ``response``: Feast's OnlineResponse held as Python columns;
- ``writes``: Feast's write batches as Arrow tables for pgfeatures' COPY load;
- ``infra``: ``feast apply`` / ``feast teardown`` through ``pgfeatures apply`` (precomputed services built);
- ``precomputed``: Feast's precomputed vectors from a materialized service's serving rows;
- ``online_store``: the store itself and its ``online_store:`` config;
- ``engine``: a Feast compute engine whose ``feast materialize`` writes Arrow straight to the COPY load;
- ``importer``: ``pgfeatures import-feast``: a Feast repository's definitions as pgfeatures TOML.

See docs/feast.md.
"""

from .engine import PgfeaturesComputeEngine, PgfeaturesComputeEngineConfig
from .online_store import PgfeaturesOnlineStore, PgfeaturesOnlineStoreConfig

__all__ = [
    "PgfeaturesComputeEngine",
    "PgfeaturesComputeEngineConfig",
    "PgfeaturesOnlineStore",
    "PgfeaturesOnlineStoreConfig",
]
