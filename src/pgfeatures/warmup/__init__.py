"""Cache warm-up: load feature tables and their indexes into shared_buffers, and measure how warm they are.

A lookup on a cold cache pays one read per missing block (from disk, or a
copy from the OS page cache) for each table's index leaf and heap page. After
a restart every block is cold, and the cumulative ``pg_statio_*`` counters do
not show it: they survive a clean restart and are dominated by history. So
warmth is measured directly, with a *probe*, inside one read-only transaction:

- cache: the store's real batch statement reads 100 random keys per table
  (absent keys, uniform over the key space: each descends to a random index
  leaf) and a TID scan reads 100 random heap pages; with a hot-key list, the
  batch statement reads the hot keys instead. The transaction's own block
  counters (``pg_stat_get_xact_blocks_fetched`` / ``_hit``) before and after
  give the hit ratio per table and per index: no other session's traffic is
  counted, nothing waits for statistics to be flushed, and since the places
  are random an earlier probe does not make a later one look warm;
- plans: the batch statement runs under ``EXPLAIN (ANALYZE, BUFFERS)`` for
  real keys (the hot keys, else the key histogram ANALYZE keeps in
  ``pg_stats``: found without reading the table), which shows the scan each
  table's lookup uses and its heap fetches (for the doctor).

``warmup`` then:

1. probes (hit ratio before);
2. loads every table (main fork and visibility map) and then every index with
   ``pg_prewarm`` (``CREATE EXTENSION IF NOT EXISTS pg_prewarm`` when it is not
   installed yet); where that is impossible, reads each table through a full
   ordered index scan instead (the key index and every heap page), plus a full
   index-only scan of the covering index once VACUUM has set the visibility map;
3. reads the hot keys with the store's batch statement;
4. probes again (hit ratio after).

Everything is written once, as generators of queries (``Steps``) executed by a
sync driver (``run``) or an async one (``run_async``), so the CLI, a
FeatureStore and the HTTP server's start-up (``warm_store_async``, before
/readyz turns ready) run the same warm-up.

The package, one module per concept (every name is importable from ``pgfeatures.warmup``):

- ``steps``: ``Query`` and ``Steps``; ``driver_async`` (``run_async``) and ``driver`` (``run``, generated) execute them;
- ``cache_probe``: the relations, the keys a probe reads, the probe (``probe``, ``measure``);
- ``prewarm``: the warm-up (``Method``, ``warmup_steps``, ``WarmupReport``) and its entry points
  (``warmup``, ``warm_store``, their async twins, ``connect``, ``load_hot_keys``).
"""

from .cache_probe import (
    PROBE_KEYS,
    PROBE_PLACES,
    Blocks,
    Probe,
    Relation,
    Scan,
    TableProbe,
    existing_tables,
    hot_tables,
    measure,
    probe,
    random_keys,
    relations,
    sample_keys,
    scan_nodes,
)
from .driver import run
from .driver_async import run_async
from .prewarm import (
    HOT_KEY_CHUNK,
    Method,
    Warmed,
    WarmupReport,
    connect,
    load_hot_keys,
    warm_store,
    warm_store_async,
    warmup,
    warmup_async,
    warmup_steps,
)
from .steps import Query, Rows, Steps

__all__ = [
    "HOT_KEY_CHUNK",
    "PROBE_KEYS",
    "PROBE_PLACES",
    "Blocks",
    "Method",
    "Probe",
    "Query",
    "Relation",
    "Rows",
    "Scan",
    "Steps",
    "TableProbe",
    "Warmed",
    "WarmupReport",
    "connect",
    "existing_tables",
    "hot_tables",
    "load_hot_keys",
    "measure",
    "probe",
    "random_keys",
    "relations",
    "run",
    "run_async",
    "sample_keys",
    "scan_nodes",
    "warm_store",
    "warm_store_async",
    "warmup",
    "warmup_async",
    "warmup_steps",
]
