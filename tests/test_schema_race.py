"""`pgfeatures init` and a first `pgfeatures load` at the same moment both succeed.

Concurrent ``CREATE SCHEMA/TABLE IF NOT EXISTS`` race in PostgreSQL: the second creator waits
on the first one's uncommitted catalog row and then fails with a unique violation
(``pg_namespace_nspname_index``, ``pg_type_typname_nsp_index``) instead of finding the object.
Before the fix, ``init`` crashed (rolling back every table it had created) or the load failed
in several of these rounds. Each round drops the test's schema and runs ``apply_schema`` (what
``init`` runs) for many missing tables in one thread while another thread, a moment later, loads
into one of them (the first, a middle one or the last one init creates), on real connections;
in every other round the schema exists and only the tables are missing.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from pgfeatures.definitions import FeatureTable, Registry
from pgfeatures.load import load
from pgfeatures.schema import apply_schema, drift
from test_load import keys_for

TABLES = 300
ROUNDS = 16


def registry(schema: str) -> Registry:
    return Registry.of(
        [FeatureTable.of(f"t{i:03d}", {"x": "real", "n": "integer"}, covering_index=i % 2 == 0) for i in range(TABLES)],
        schema=schema,
    )


def rows(n: int = 50) -> pa.Table:
    return pa.table(
        {
            "hashkey": pa.array(keys_for(range(n)), pa.binary(32)),
            "x": np.arange(n, dtype=np.float32),
            "n": np.arange(n, dtype=np.int32),
        }
    )


@pytest.mark.slow
def test_init_and_first_load_race(dsn, schema):
    reg = registry(schema)
    rng = random.Random(7)
    with psycopg.connect(dsn, autocommit=True) as admin:
        start = time.perf_counter()
        apply_schema(admin, reg)
        init_seconds = time.perf_counter() - start
        failures: list[str] = []
        for round_ in range(ROUNDS):
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
            if round_ % 2:  # the schema exists, its tables are missing
                admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            target = reg.tables[[f"t{i:03d}" for i in (0, TABLES // 2, TABLES - 1)][round_ % 3]].name
            delay = rng.uniform(0, init_seconds)
            results: dict[str, Any] = {}

            def init() -> None:
                try:
                    with psycopg.connect(dsn, autocommit=True) as c:
                        results["init"] = apply_schema(c, reg)
                except Exception as exc:  # noqa: BLE001 - reported below
                    results["init"] = exc

            def first_load() -> None:
                time.sleep(delay)
                try:
                    with psycopg.connect(dsn, autocommit=True) as c:
                        results["load"] = load(c, reg, target, rows(), vacuum="never")
                except Exception as exc:  # noqa: BLE001 - reported below
                    results["load"] = exc

            threads = [threading.Thread(target=init), threading.Thread(target=first_load)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            for name, result in results.items():
                if isinstance(result, Exception):
                    failures.append(
                        f"round {round_} ({target}, load after {delay:.2f}s): {name}: {type(result).__name__}: {result}"
                    )
            if len(results) != 2:
                failures.append(f"round {round_}: a thread did not finish")
            if not any(isinstance(r, Exception) for r in results.values()):
                assert all(drift(admin, schema, t) == [] for t in reg.tables.values())
                assert (
                    admin.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, target))).fetchone()[
                        0
                    ]
                    == 50
                )
                report = results["init"]
                assert sorted(report.created + report.existing) == sorted(reg.tables) and report.ok
    assert not failures, "\n".join(failures)
