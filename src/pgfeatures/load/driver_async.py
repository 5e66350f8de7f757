"""The driver that runs a load's plan on a connection (async source).

``load_async`` and its generated sync twin ``load`` (driver.py, made by ``tools/async_to_sync.py``:
edit this file, then regenerate) run the same plan (plan.py) in one transaction, then the
maintenance after COMMIT. Async: plan steps and COPY chunks are CPU work (reading files, numpy),
so they run on a worker thread and the event loop keeps serving while a load runs. Sync: psycopg's
queued writer sends each chunk on a thread while the next one is encoded.

A load logs (logger ``pgfeatures.load``) once, at its end: committed (info), rolled back (a
warning; info for bad input, the caller's to fix), or of unknown outcome (connection lost during
COMMIT: a warning); and a failed VACUUM/ANALYZE after a committed load (a warning).
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from ..connections.concurrency import to_thread_async
from ..definitions import Registry
from ..errors import LoadInputError, LoadInterruptedError
from .options import LoadOptions, LoadSummary, ProgressCallback, load_options
from .plan import Copy, Job, Plan, check_idle, step
from .prefetch import copy_writer_async, prefetched_async

logger = logging.getLogger("pgfeatures.load")


async def _execute(conn: psycopg.AsyncConnection, plan: Plan) -> None:
    """Run the plan's statements and COPY streams, sending each result back into the plan."""
    cur = conn.cursor()
    result: Any = None
    while (op := await to_thread_async(step, plan, result)) is not None:
        if isinstance(op, Copy):
            async with cur.copy(op.query, writer=copy_writer_async(cur)) as copy:
                async for chunk in prefetched_async(op.chunks):
                    await copy.write(chunk)
            result = cur.rowcount
        else:
            await cur.execute(op.query, op.params or None, prepare=False)
            result = await cur.fetchall() if op.fetch else cur.rowcount


async def load_async(
    conn: psycopg.AsyncConnection, registry: Registry, table: str, data: Any, options: LoadOptions | None = None,
    *, progress: ProgressCallback | None = None, **changes: Any,
) -> LoadSummary:
    """Load ``data`` into ``table`` in one transaction, then ANALYZE/VACUUM; returns the summary.

    ``data``: file path(s) (Parquet, CSV, Arrow IPC), pyarrow Table/RecordBatch/RecordBatchReader,
    pandas/polars DataFrame, or an iterable of RecordBatches. ``changes`` are LoadOptions fields.
    ``progress`` is called with a LoadProgress after every batch and phase change.

    Raises, with the table unchanged in every case: LoadInputError (bad input or options;
    CorruptFileError, a subclass, for a damaged file), SchemaDriftError (the live table differs
    from its definition), LoadInterruptedError (connection lost or load cancelled: its
    ``committed`` and ``source_rereadable`` say whether running the load again is safe; when the
    connection died during COMMIT, ``committed`` is None and the outcome is unknown), LoadError
    (lock timeout, swap blockers, other database errors).
    """
    check_idle(conn.info.transaction_status)
    job = await to_thread_async(Job, registry, table, data, load_options(options, **changes), progress)
    try:
        async with conn.transaction():
            await _execute(conn, job.plan())
            job.phase = "commit"
    except BaseException as exc:
        error = job.failure(exc)
        _log_failure(table, error)
        if error is exc:
            raise
        raise error from exc
    job.finish()
    statement = job.maintenance()
    if statement is not None:
        autocommit = conn.autocommit
        try:
            await conn.set_autocommit(True)  # VACUUM cannot run in a transaction block
            await conn.execute(statement, prepare=False)
        except psycopg.Error as exc:
            job.maintenance_failed(exc)
            logger.warning("pgfeatures: load into %s: %s", table, job.summary.maintenance)
        finally:
            await conn.set_autocommit(autocommit)
    summary = job.finish_maintenance()
    logger.info("pgfeatures: %s into %s committed: %d rows read, %d inserted, %d updated in %.1fs",
                summary.mode, table, summary.rows_read, summary.inserted, summary.updated, summary.seconds)
    return summary


def _log_failure(table: str, error: BaseException) -> None:
    """The log line of a load that did not commit: rolled back, or (connection lost during COMMIT) unknown.
    Bad input is the caller's to fix (it gets the error): info; the database's failures: a warning."""
    if isinstance(error, LoadInterruptedError) and error.committed is None:
        logger.warning("pgfeatures: load into %s: %s", table, error)
    elif isinstance(error, LoadInputError):
        logger.info("pgfeatures: load into %s rolled back, the table is unchanged: %s", table, error)
    elif isinstance(error, Exception):
        logger.warning("pgfeatures: load into %s rolled back, the table is unchanged: %s", table, error)
    else:  # cancelled (KeyboardInterrupt, a cancelled task)
        logger.info("pgfeatures: load into %s cancelled and rolled back, the table is unchanged", table)
