"""A mixed-type feature registry with random data, NULLs and misses, written with plain INSERTs.

The data is written without any pgfeatures code path (plain executemany), so
it is an independent ground truth for every read strategy.
"""

from __future__ import annotations

import datetime
import hashlib
import random
from dataclasses import dataclass

import numpy as np
import psycopg
from psycopg import sql

from pgfeatures.definitions import FeatureTable, Registry
from pgfeatures.schema import apply_schema

TYPES = ["real", "double precision", "smallint", "integer", "bigint", "boolean"]


def _value(rng: random.Random, type_name: str):
    if rng.random() < 0.1:
        return None
    if type_name == "real":
        return float(np.float32(rng.uniform(-1e6, 1e6)))  # what a real round-trips to
    if type_name == "double precision":
        return rng.uniform(-1e12, 1e12)
    if type_name == "smallint":
        return rng.randint(-32768, 32767)
    if type_name == "integer":
        return rng.randint(-(2**31), 2**31 - 1)
    if type_name == "bigint":
        return rng.choice([2**53 + 1, -(2**62) - 7, rng.randint(-(2**63), 2**63 - 1)])
    return rng.random() < 0.5


@dataclass
class GroundTruth:
    registry: Registry
    keys: list[bytes]
    absent: bytes
    rows: dict[str, dict[bytes, dict[str, object]]]  # table -> key -> {feature: value} (incl. updated_at)

    def expected(self, key: bytes, selection: dict[str, list[str]]) -> dict[str, dict[str, object] | None]:
        out = {}
        for table, features in selection.items():
            row = self.rows[table].get(key)
            out[table] = None if row is None else {f: row[f] for f in features}
        return out


def build(
    conn: psycopg.Connection, schema: str, n_keys: int = 120, seed: int = 7, float_only: bool = False
) -> GroundTruth:
    rng = random.Random(seed)
    tables = []
    for i in range(8):
        if float_only:
            types = ["real"] * 3 + ["double precision", "integer", "smallint", "boolean"][: i % 4]
        elif i == 0:
            types = ["real"] * 8  # the common all-real table
        else:
            types = [rng.choice(TYPES) for _ in range(rng.randint(1, 6))]
        tables.append(
            FeatureTable.of(f"tbl_{i}", {f"c{j}": t for j, t in enumerate(types)}, covering_index=(i % 3 == 0))
        )
    registry = Registry.of(tables, schema=schema)
    apply_schema(conn, registry)
    keys = [hashlib.sha256(b"gt:%d" % i).digest() for i in range(n_keys)]
    rows: dict[str, dict[bytes, dict[str, object]]] = {}
    for table in tables:
        rows[table.name] = {}
        present = [k for k in keys if rng.random() > 0.15]
        cols = [f.name for f in table.features] + ["updated_at"]
        stmt = sql.SQL("INSERT INTO {} (hashkey, {}) VALUES (%s, {})").format(
            sql.Identifier(schema, table.name),
            sql.SQL(", ").join(map(sql.Identifier, cols)),
            sql.SQL(", ").join(sql.Placeholder() * len(cols)),
        )
        params = []
        for k in present:
            values = {f.name: _value(rng, f.type.name) for f in table.features}
            values["updated_at"] = datetime.datetime.fromtimestamp(
                rng.randint(1_600_000_000, 1_800_000_000) + rng.random(), datetime.UTC
            ).replace(microsecond=rng.randrange(10**6))
            rows[table.name][k] = values
            params.append([k, *(values[c] for c in cols)])
        with conn.cursor() as cur:
            cur.executemany(stmt, params)
    return GroundTruth(registry, keys, hashlib.sha256(b"absent").digest(), rows)
