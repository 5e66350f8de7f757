"""The row of a statement that always returns one (an aggregate, ``SHOW``, ``SELECT`` without ``FROM``).

``Cursor.fetchone()`` is typed ``Row | None``; these statements cannot return no row, and
``one_row`` says so where they are read (bench and doctor queries).
"""

from __future__ import annotations

from typing import TypeVar

import psycopg

R = TypeVar("R")


def one_row(cur: psycopg.Cursor[R]) -> R:
    """The row ``cur``'s statement returned; raises LookupError when it returned none."""
    row = cur.fetchone()
    if row is None:
        raise LookupError("the statement returned no row")
    return row
