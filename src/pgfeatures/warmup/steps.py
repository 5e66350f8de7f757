"""The warm-up's and the probe's common form: work written once as generators of queries (``Steps``),
run by the drivers in ``driver_async.py`` (``run_async``) and ``driver.py`` (``run``, generated).

A step function yields a ``Query``, receives its rows (or has the psycopg error thrown in) and
returns a result; ``yield from`` composes them. The probe (``cache_probe.py``), the warm-up
(``prewarm.py``) and the doctor are written so, and run unchanged on either kind of connection.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from psycopg import sql

T = TypeVar("T")
Rows = list[tuple[Any, ...]]


# -- queries ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One statement for a driver to run. ``raw``: ``$n`` placeholders (the store's own statements)."""

    statement: sql.SQL | sql.Composed | bytes | str  # what Cursor.execute takes (psycopg.abc.Query, bar t-strings)
    params: Sequence[Any] | None = None
    raw: bool = False


Steps = Generator[Query, Rows, T]
"""A generator that yields queries, receives their rows (or has the psycopg error thrown in), returns a result."""
