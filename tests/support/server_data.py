"""Shared by the HTTP service tests: three small feature tables of mixed types, their ground truth, metric parsing.

Values are chosen exact in every transport (float4 multiples of 1/4, a
bigint above 2^53), so equality through JSON is exact, and presence differs
per table so responses have misses.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pgfeatures.definitions import Registry
from pgfeatures.schema import apply_schema

N_KEYS = 12  # keys 0..9 have rows somewhere; 10 and 11 are in no table
DEFINITIONS = """
schema = "{schema}"

[tables.profile.features]
clicks = "integer"
ctr = "real"
big = "bigint"
active = "boolean"
score = "double precision"

[tables.stats.features]
a = "real"
b = "real"

[tables.flags.features]
f = "smallint"
g = "boolean"
"""


def key(i: int) -> bytes:
    return hashlib.sha256(b"server-test:%d" % i).digest()


def hexkey(i: int) -> str:
    return key(i).hex()


def rows(table: str, i: int) -> dict[str, Any] | None:
    """The row of entity ``i`` in ``table`` (feature values), or None where it has none."""
    if table == "profile" and i < 10:
        return {"clicks": i * 10, "ctr": i / 4, "big": 2**60 + i, "active": i % 2 == 0, "score": i * 1.5}
    if table == "stats" and i < 10 and i % 2 == 0:
        return {"a": i * 0.5, "b": float(-i)}
    if table == "flags" and i < 5:
        return {"f": i, "g": i % 3 == 0}
    return None


def updated_at(i: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(1_700_000_000 + i, datetime.UTC)


def expected(i: int, tables: tuple[str, ...] = ("profile", "stats", "flags")) -> dict[str, Any]:
    return {t: rows(t, i) for t in tables}


def status(i: int, tables: tuple[str, ...] = ("profile", "stats", "flags")) -> dict[str, str]:
    """Each table's status for entity ``i`` (these tables have no ttl: present or missing)."""
    return {t: "missing" if rows(t, i) is None else "present" for t in tables}


def create(dsn: str, schema: str, folder: Path) -> Path:
    """Create the tables in ``schema``, fill them, and write the definitions TOML; returns its path."""
    path = folder / "features.toml"
    path.write_text(DEFINITIONS.format(schema=schema))
    registry = Registry.from_toml(path)
    with psycopg.connect(dsn, autocommit=True) as conn:
        apply_schema(conn, registry)
        for table in registry.tables.values():
            names = [f.name for f in table.features]
            stmt = sql.SQL("INSERT INTO {} (hashkey, updated_at, {}) VALUES ({})").format(
                sql.Identifier(schema, table.name),
                sql.SQL(", ").join(map(sql.Identifier, names)),
                sql.SQL(", ").join(sql.Placeholder() * (len(names) + 2)),
            )
            with conn.cursor() as cur:
                cur.executemany(
                    stmt,
                    [
                        [key(i), updated_at(i), *(row[n] for n in names)]
                        for i in range(N_KEYS)
                        if (row := rows(table.name, i))
                    ],
                )
    return path


def drop(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text exposition, whatever the order of its labels (0 if absent)."""
    for line in text.splitlines():
        found = re.match(r"^" + re.escape(name) + r"(?:\{(.*)\})? (\S+)$", line)
        if found and dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', found.group(1) or "")) == labels:
            return float(found.group(2))
    return 0.0
