"""Compiled readers as server-side functions: the fast path behind a transaction-mode pooler (pure).

Behind PgBouncer in transaction mode a client must not prepare statements: a prepared statement
lives on a server connection that the next transaction may give to another client (PgBouncer
1.18 has no protocol-level prepared statements). Unprepared, a 30-table read is planned at every
call, which costs more than running it (measured: 3.4x slower at p50, see README). A PL/pgSQL
function's statements are planned once per server backend and cached there, whichever client
calls them, so reading through ``SELECT * FROM "s"."_pgf_read_<hash>"($1)`` unprepared recovers
nearly all of it. (A SQL-language function does not: it is inlined into the calling query, which is
then planned at every call.)

Only the single-statement forms (the ``single`` strategy and the batch) of numeric features have a
function form (a table with a string, list or embedding travels as an anonymous record, which a function
cannot declare as a column: such a read goes unprepared, planned at every call); each
is named after a hash of its statement, so a changed definition gets a new function, never a stale
one. The functions are created by ``pgfeatures init`` and, when missing, by a store opening with
``pooler="transaction"`` (which needs CREATE on the schema; without it the store reads unprepared).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from ..definitions import Registry
from .compile import BatchReader, Reader, Strategy, compile_batch_reader, compile_reader
from .decode import FeatureResult
from .selection import select, select_service
from .transport import RECORD, transport

FUNCTION_PREFIX = "_pgf_read_"


@dataclass(frozen=True)
class ReadFunction:
    """A reader's function form: the DDL that creates it and the statement that calls it."""

    schema: str
    name: str
    create: sql.Composed
    call: bytes


def read_function(reader: Reader[Any] | BatchReader[Any]) -> ReadFunction | None:
    """The function form of a ``single`` or batch reader (None for the other strategies, and for the
    reads of serving rows, which are one lookup per entity: cheap to plan)."""
    if reader.materialized:
        return None
    if isinstance(reader, BatchReader):
        statement, suffix = reader.statement, "[]"
    elif reader.strategy is Strategy.SINGLE:
        statement, suffix = reader.statements[0], ""
    else:
        return None
    selection = reader.selection
    name = FUNCTION_PREFIX + hashlib.sha256(statement).hexdigest()[:24]
    args = sql.SQL(", ").join(sql.SQL(e.cast + suffix) for e in selection.entities)
    columns: list[sql.Composable] = []
    for _, features in selection.items:
        for part in transport(features):
            if part.array_type == RECORD:  # an anonymous record cannot be a column a function declares:
                return None  # a read of rich features behind a transaction pooler goes unprepared
            columns.append(sql.SQL("{} {}").format(sql.Identifier(f"c{len(columns)}"), sql.SQL(part.array_type)))
    body = b"#variable_conflict use_column\nBEGIN\nRETURN QUERY " + statement + b";\nEND"
    ident = sql.Identifier(selection.schema, name)
    create = sql.SQL(
        "CREATE OR REPLACE FUNCTION {}({}) RETURNS TABLE ({}) LANGUAGE plpgsql STABLE PARALLEL SAFE "
        "SET plan_cache_mode = force_generic_plan AS {}"
    ).format(ident, args, sql.SQL(", ").join(columns), sql.Literal(body.decode()))
    params = sql.SQL(", ").join(sql.SQL(f"${i + 1}::{e.cast}{suffix}") for i, e in enumerate(selection.entities))
    call = sql.SQL("SELECT * FROM {}({})").format(ident, params).as_bytes(None)
    return ReadFunction(selection.schema, name, create, call)


def registry_readers(registry: Registry) -> list[Reader[FeatureResult] | BatchReader[FeatureResult]]:
    """The readers a store prepares at open (the full read, the full batch, every service's single and
    batch readers), compiled here without a store: what ``pgfeatures init`` gives a function form."""
    readers: list[Reader[FeatureResult] | BatchReader[FeatureResult]] = [
        compile_reader(select(registry)),
        compile_batch_reader(select(registry)),
    ]
    for name in registry.services:
        readers += [
            compile_reader(select_service(registry, name)),
            compile_batch_reader(select_service(registry, name)),
        ]
    return readers


def registry_functions(registry: Registry) -> list[ReadFunction]:
    """The function forms of ``registry_readers``."""
    return [f for f in map(read_function, registry_readers(registry)) if f is not None]


EXISTING_FUNCTIONS = b"""
SELECT p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = $1 AND p.proname = ANY($2::text[])
"""
"""Parameters: the schema and function names. The names of those that exist."""
