"""The driver that executes ``Steps`` on a connection (async source).

``driver.py`` is generated from this file by ``tools/async_to_sync.py``.
"""

from __future__ import annotations

import psycopg
from psycopg.pq import TransactionStatus

from .steps import Steps, T


async def run_async(conn: psycopg.AsyncConnection, steps: Steps[T]) -> T:
    """Execute ``steps`` on an autocommit connection; a transaction left open by an error is rolled back."""
    try:
        query = next(steps)
        while True:
            try:
                cur = (psycopg.AsyncRawCursor if query.raw else psycopg.AsyncCursor)(conn)
                await cur.execute(query.statement, query.params, prepare=False)
                rows = await cur.fetchall() if cur.description else []
            except psycopg.Error as exc:
                query = steps.throw(exc)
            else:
                query = steps.send(rows)
    except StopIteration as stop:
        return stop.value
    finally:
        steps.close()
        if conn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
            await conn.rollback()
