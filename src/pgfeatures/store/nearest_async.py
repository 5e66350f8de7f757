"""Nearest-neighbour statements on one read connection (async source; ``nearest.py`` is generated).

``vector_facts_async`` asks the catalog what the database has for an embedding column (its type,
pgvector, a usable HNSW index): once per feature and definitions served, before its first search.
``execute_nearest_async`` runs a compiled search (``reader/nearest.py``): one statement, one round-trip.
Both run through the store's read router (``AsyncReadRouter.run_async``): its targets, retry and errors.
"""

from __future__ import annotations

from typing import Any

import psycopg

from ..definitions import Feature, FeatureTable
from ..reader.nearest import FACTS_QUERY, Nearest, NearestReader, VectorFacts, facts_of, facts_params
from .base import READ_CURSOR


async def vector_facts_async(
    conn: psycopg.AsyncConnection, reader: None, args: tuple[str, FeatureTable, Feature], prepare: bool
) -> VectorFacts:
    """What the database has for the embedding ``args`` = (schema, table, feature). Raises
    SchemaDriftError when its column does not exist."""
    schema, table, feature = args
    cur = psycopg.AsyncRawCursor(conn)
    await cur.execute(FACTS_QUERY, facts_params(schema, table, feature), prepare=False)
    return facts_of(await cur.fetchone(), schema, table, feature)


async def execute_nearest_async(
    conn: psycopg.AsyncConnection, reader: NearestReader, params: tuple[Any, ...], prepare: bool
) -> Nearest:
    """One search on ``conn``: its statement (prepared when the store prepares), every row fetched, decoded.
    Raises ExactSearchRefusedError (an exact search past the limit)."""
    cur = getattr(conn, READ_CURSOR, None) or psycopg.AsyncRawCursor(conn)
    await cur.execute(reader.statement, params, prepare=prepare, binary=True)
    return reader.decode(await cur.fetchall())
