"""``pgfeatures bench-http --mode services`` end to end on a tiny copy of the demo data: it loads and
materializes its own schema, checks that the materialized and the table-by-table service answer
alike over HTTP before timing, and reports every variant and the ratios. Timings are not asserted."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from pgfeatures.materialize.build import status
from pgfeatures_bench import http, http_services


@pytest.mark.slow
def test_services_mode_runs_and_compares_like_with_like(dsn: str, schema: str) -> None:
    args = http.HttpBenchConfig(
        mode="services",
        entities=300,
        requests=20,
        concurrency=(1, 2),
        rounds=1,
        seconds=0.2,
        pool_size=2,
        services_schema=schema,
    )
    said: list[str] = []
    figures = http_services.run(args, dsn, asyncio.run, said.append)["services"]
    assert any("materialized mat30" in s for s in said), said
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert status(conn, http_services.registry(schema)) == {"mat30": "built"}
    variants = {f"{s} {o}" for s, o in http_services.VARIANTS}
    assert set(figures["latency"]) == variants and all(v["n"] == 20 for v in figures["latency"].values())
    assert {(r["variant"], r["clients"]) for r in figures["throughput"]} == {(v, c) for v in variants for c in (1, 2)}
    assert all(r["requests"] > 0 and r["cpu_ms"]["server"] >= 0 for r in figures["throughput"])
    assert set(figures["ratios"]) == {"dict", "vector"}
    assert set(figures["ratios"]["vector"]["throughput"]) == {1, 2}
    # a second run reuses the data and the serving rows
    said.clear()
    http_services.prepare(dsn, schema, 300, said.append)
    assert said == []
