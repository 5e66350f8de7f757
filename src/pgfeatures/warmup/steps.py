"""The warm-up's and the probe's common form: work written once as generators of queries (``Steps``),
and the two drivers that execute them, ``run`` (sync) and ``run_async``.

A step function yields a ``Query``, receives its rows (or has the psycopg error thrown in) and
returns a result; ``yield from`` composes them. The probe (``cache_probe.py``), the warm-up
(``prewarm.py``) and the doctor are written so, and run unchanged on either kind of connection.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

T = TypeVar("T")
Rows = list[tuple[Any, ...]]


# -- queries and their drivers --------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One statement for a driver to run. ``raw``: ``$n`` placeholders (the store's own statements)."""

    statement: sql.SQL | sql.Composed | bytes | str  # what Cursor.execute takes (psycopg.abc.Query, bar t-strings)
    params: Sequence[Any] | None = None
    raw: bool = False


Steps = Generator[Query, Rows, T]
"""A generator that yields queries, receives their rows (or has the psycopg error thrown in), returns a result."""


def run(conn: psycopg.Connection, steps: Steps[T]) -> T:
    """Execute ``steps`` on an autocommit connection; a transaction left open by an error is rolled back."""
    try:
        query = next(steps)
        while True:
            try:
                cur = (psycopg.RawCursor if query.raw else psycopg.Cursor)(conn)
                cur.execute(query.statement, query.params, prepare=False)
                rows = cur.fetchall() if cur.description else []
            except psycopg.Error as exc:
                query = steps.throw(exc)
            else:
                query = steps.send(rows)
    except StopIteration as stop:
        return stop.value
    finally:
        steps.close()
        if conn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
            conn.rollback()


async def run_async(conn: psycopg.AsyncConnection, steps: Steps[T]) -> T:
    """The asyncio twin of ``run``."""
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
