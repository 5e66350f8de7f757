"""Bulk loads: Parquet, CSV, Arrow IPC files and Arrow/pandas/polars frames into one feature table.

A load is one transaction; the live table changes only at COMMIT, so any failure (bad input, a
damaged file, a lost connection, a lock timeout) leaves it exactly as it was:

1. Every source is opened and its columns checked against the table definition before the
   database is touched (``sources``, ``columns``).
2. Rows stream, batch by batch, through integrity checks (``integrity``: Parquet page checksums
   or column statistics), validation and a vectorized (numpy) encoder (``validate``, ``copy``)
   into a staging table by ``COPY ... (FORMAT BINARY)``. Nothing per row runs in Python on the
   fast path.
3. Keys that appear more than once in the load are found with numpy (``dedupe``); all but the
   newest row (``on_duplicate="newest"``: by ``updated_at``, then load order) or the last
   (``"last"``) are dropped, or the load fails (``"reject"``).
4. The staged rows are applied (``plan``, ``statements``):

   ``upsert``
       ``INSERT ... SELECT ... ORDER BY key ON CONFLICT (key) DO UPDATE`` into the live
       table. Cheapest when the load is small next to the table.
   ``rebuild`` (merge mode)
       A new table is filled with the staged rows plus the live rows the load does not touch,
       its primary key (and covering index) built in bulk, then swapped in. Index builds in bulk
       are several times faster than a million single-row index inserts, so large loads take
       this path. Live writers wait (SHARE ROW EXCLUSIVE lock) from the start of the rebuild to
       COMMIT; readers never wait except for the swap itself.
   ``replace`` (``mode="replace"``)
       The same swap, with only the loaded rows.

   ``strategy="auto"`` (default) rebuilds when the load has at least ``REBUILD_FRACTION`` of
   the table's rows and the table can be swapped (no triggers, views, foreign keys,
   publications, policies or indexes other than its own).
5. After COMMIT: ANALYZE, and VACUUM where it pays (``Job.maintenance``).

The plan is one generator (``plan.Job``) run by an async driver (``driver_async``) and its
generated sync twin (``driver``). Keys are the table's entity keys, checked per key type
(``keys``: bytea32 as 32 raw bytes or 64 hex characters, bigint, bounded text, uuid, natural ids
of a ``hash = "sha256"`` entity or with ``hash_keys=True`` hashed with SHA-256); the source key
column defaults to the entity's key column. ``updated_at`` is the load's transaction time on the
database server unless the source has an ``updated_at`` column (``eventtime``: timestamps, ISO
8601 strings with a zone, epoch numbers in ``event_time_unit``; nulls in it also take the load's
time; more than ``max_future_skew`` ahead of the server's clock is invalid); then newest wins: a
row never overwrites a stored row with a newer ``updated_at`` (skipped,
``LoadSummary.skipped_newer``) unless ``overwrite_newer=True``, and of a key's rows in one load
the newest is kept (``on_duplicate="newest"``).
"""

from __future__ import annotations

from .copy import COPY_HEADER, COPY_TRAILER, CopyFormatError, decode_copy, encode_copy_rows
from .dedupe import Duplicates, find_duplicates
from .driver import load
from .driver_async import load_async
from .options import (
    BATCH_ROWS,
    REBUILD_FRACTION,
    REBUILD_MIN_ROWS,
    VACUUM_FRACTION,
    ApplyStrategy,
    InfPolicy,
    LoadOptions,
    LoadProgress,
    LoadSummary,
    Mode,
    NanPolicy,
    OnDuplicate,
    OnInvalid,
    ProgressCallback,
    VacuumPolicy,
    load_options,
)
from .plan import TRANSACTION_SETTINGS, Plan
from .progress import progress_bar
from .sources import open_sources
from .statements import upsert_sql

__all__ = [
    "BATCH_ROWS",
    "COPY_HEADER",
    "COPY_TRAILER",
    "REBUILD_FRACTION",
    "REBUILD_MIN_ROWS",
    "TRANSACTION_SETTINGS",
    "VACUUM_FRACTION",
    "ApplyStrategy",
    "CopyFormatError",
    "Duplicates",
    "InfPolicy",
    "LoadOptions",
    "LoadProgress",
    "LoadSummary",
    "Mode",
    "NanPolicy",
    "OnDuplicate",
    "OnInvalid",
    "Plan",
    "ProgressCallback",
    "VacuumPolicy",
    "decode_copy",
    "encode_copy_rows",
    "find_duplicates",
    "load",
    "load_async",
    "load_options",
    "open_sources",
    "progress_bar",
    "upsert_sql",
]
