"""The read benchmark end to end, tiny: consistent figures, a breakdown that adds up, a report that renders.

One small run (3 tables, 300 entities, loopback and a 6 ms proxy) is shared by
the tests of this module, in its own schema. Timing is only ever asserted as
a lower bound (the proxy's delay was applied), never as an upper bound.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from rich.console import Console

from pgfeatures.cli import main
from pgfeatures.definitions import demo_registry
from pgfeatures.demo import entity_key, expected
from pgfeatures.errors import BenchmarkError
from pgfeatures.store import FeatureStore
from pgfeatures.timing import measure_interleaved, run_interleaved
from pgfeatures_bench import reads, redis_baseline
from pgfeatures_bench.instrument import COMPONENTS
from pgfeatures_bench.report import render, write_report

RTT = 6.0
SLACK_MS = 2.5  # the proxy may release up to 1 ms early per hop
REDIS_URL = os.environ.get("PGFEATURES_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _config(schema: str, **changes: Any) -> reads.BenchConfig:
    base = reads.BenchConfig(
        rtts_ms=(0.0, RTT),
        table_counts=(2, 3),
        requests=30,
        min_requests=10,
        row_seconds=0.02,
        batch_size=5,
        parallel=2,
        clients=(1, 2),
        client_seconds=0.15,
        instrument=("single", "pipeline", "batch"),
        explain_every=2,
        entities=300,
        sample=120,
        schema=schema,
        redis_url=REDIS_URL,
        service_clients=(1, 2),
        cold_entities=600,
        cold_requests=40,
    )
    return reads.BenchConfig(**{**base.__dict__, **changes})


@pytest.fixture(scope="module")
def bench_schema(dsn: str) -> Iterator[str]:
    name = f"test_bench_{uuid.uuid4().hex[:8]}"
    yield name
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
    if redis_baseline.probe(REDIS_URL) is None:
        client = redis_baseline.connect(REDIS_URL)
        keys = list(client.scan_iter(match=redis_baseline.KEY_PREFIX + name.encode() + b":*"))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture(scope="module")
def result(dsn: str, bench_schema: str) -> dict[str, Any]:
    lines: list[str] = []
    out = reads.run_benchmark(dsn, _config(bench_schema), argv=["pgfeatures", "bench", "--tiny"], progress=lines.append)
    assert any("demo data loaded" in line for line in lines)
    return out


def _rows(result: dict[str, Any], rtt: float, tables: int) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in result["latency"] if r["rtt_ms"] == rtt and r["tables"] == tables}


def test_every_cell_has_every_row_with_consistent_figures(result: dict[str, Any]) -> None:
    redis_up = "redis" not in result["skipped"]
    variants = {"ttl", "pooler functions", "unprepared"}
    for rtt in (0.0, RTT):
        for tables in (2, 3):
            services = {"service", "service materialized", "service vector", "service vector materialized"}
            expected_rows = (
                {"select1", "raw", *reads.STRATEGIES, f"{min(tables, 3)} entities"}
                | variants
                | ({"redis", "redis batch"} if redis_up else set())
                | (services if tables == 3 else set())
            )
            rows = _rows(result, rtt, tables)
            assert set(rows) == expected_rows
            for r in rows.values():
                assert r["n"] >= 10
                assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
                assert r["cpu_ms"] > 0
                qs = r["quantiles"]
                assert len(qs) == 101 and qs == sorted(qs)
                assert qs[50] == pytest.approx(r["p50_ms"], rel=1e-3, abs=1e-5)
            assert rows["single"]["default"] and not rows["union"]["default"]
            assert rows["sequential"]["round_trips"] == tables and rows["single"]["round_trips"] == 1
            assert rows["batch"]["keys_per_call"] == 5


def test_the_materialized_service_part(result: dict[str, Any]) -> None:
    mat = result["materialized"]
    assert mat["build_s"] > 0
    assert {(t["name"], t["clients"]) for t in mat["throughput"]} == {
        (n, c) for n in ("service", "service materialized", "service vector materialized") for c in (1, 2)
    }
    assert all(t["rps"] > 0 and t["machine_cpu_ms"] > 0 for t in mat["throughput"])
    cold = mat["cold"]
    assert cold["requests"] == 40 and cold["flexible_mean_ms"] > 0 and cold["materialized_mean_ms"] > 0
    checks = {c["check"] for c in result["checks"]}
    assert any(c.startswith("materialized / unmaterialized p50") for c in checks)
    assert any(c.startswith("cold reads") for c in checks)


def test_the_proxy_delay_is_in_every_far_row(result: dict[str, Any]) -> None:
    rows = _rows(result, RTT, 3)
    for name, r in rows.items():
        if r["keys_per_call"] == 1:
            assert r["quantiles"][0] >= r["round_trips"] * (RTT - SLACK_MS), name
    assert rows["batch"]["quantiles"][0] * 5 >= RTT - SLACK_MS  # per key: a fifth of one round-trip at least


@pytest.mark.timing  # the components are timed apart from the whole: preemption on a loaded machine falls between
def test_breakdown_adds_up(result: dict[str, Any]) -> None:
    labels = {(b["label"], b["rtt_ms"]) for b in result["breakdown"]}
    assert labels == {(s, rtt) for s in ("single", "pipeline", "batch") for rtt in (0.0, RTT)}
    for b in result["breakdown"]:
        assert list(b["components"]) == list(COMPONENTS)
        assert b["explained"] >= 1 and b["n"] >= 10
        covered = sum(c["mean_ms"] for c in b["components"].values())
        # Within 10%: what falls between the timers (a preempted process on a shared 2-core machine: 5.6%
        # seen in CI under load) is not a component; a component left out would be 20% or more.
        assert covered == pytest.approx(b["total"]["mean_ms"], rel=0.10)
        assert abs(b["unattributed_pct"]) <= 10  # the report's own check (sums_ok) holds it to 5%, and says so
        assert set(b["per_table"]) == {"t00", "t01", "t02"}  # one index lookup per table, from the EXPLAIN twins
        assert all(q["p50_ms"] > 0 for q in b["per_table"].values())
        if b["rtt_ms"] == RTT and b["label"] != "batch":
            assert b["components"]["network"]["p50_ms"] >= RTT - SLACK_MS  # the wait is where the distance shows


def test_targets_are_evaluated(result: dict[str, Any]) -> None:
    checks = {c["check"]: c for c in result["checks"]}
    assert f"single p50 - SELECT 1 ({RTT:g} ms, 3 tables)" in checks
    assert f"sequential round-trips ({RTT:g} ms, 3 tables)" in checks
    assert sum(k.startswith("breakdown adds up") for k in checks) == 6
    for c in checks.values():
        assert c["ok"] in (True, False, None) and c["value"]


def test_throughput_per_mode_and_client_count(result: dict[str, Any]) -> None:
    got = {(t["rtt_ms"], t["mode"], t["clients"]) for t in result["throughput"]}
    assert got == {(rtt, m, c) for rtt in (0.0, RTT) for m in ("threads", "async") for c in (1, 2)}
    for t in result["throughput"]:
        assert t["requests"] > 0 and t["rps"] > 0 and t["p50_ms"] <= t["p99_ms"]
        if t["rtt_ms"] == RTT:
            assert t["p50_ms"] >= RTT - SLACK_MS


def test_meta_and_json_round_trip(result: dict[str, Any], tmp_path: Path) -> None:
    meta = result["meta"]
    assert meta["command"] == "pgfeatures bench --tiny"
    assert meta["versions"]["postgresql"] and meta["versions"]["psycopg"] and meta["machine"]["cpus"]
    assert list(meta["config"]["table_counts"]) == [2, 3]
    path = tmp_path / "r.json"
    reads.save(result, path)
    again = reads.load(path)
    assert again["latency"] == json.loads(json.dumps(result["latency"]))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(BenchmarkError, match="not a pgfeatures bench result"):
        reads.load(tmp_path / "bad.json")


def test_console_output(result: dict[str, Any]) -> None:
    buf = io.StringIO()
    reads.print_result(result, Console(file=buf, width=120))
    text = buf.getvalue()
    assert "latency per request (ms), direct loopback" in text
    assert f"{RTT:g} ms round-trip through the proxy" in text
    assert "where the time goes: single" in text and "targets (issue 6)" in text


def test_redis_rows_match_or_skip_cleanly(result: dict[str, Any], dsn: str, bench_schema: str) -> None:
    if "redis" in result["skipped"]:
        assert "not usable" in result["skipped"]["redis"] or "no --redis-url" in result["skipped"]["redis"]
        pytest.skip(f"Redis not reachable: {result['skipped']['redis']}")
    # The benchmark already refused to run if Redis disagreed with PostgreSQL; check one entity by hand too.
    registry = demo_registry(n_tables=3, schema=bench_schema)
    client = redis_baseline.connect(REDIS_URL)
    rf = redis_baseline.RedisFeatures(client, registry)
    ids = reads._keys(_config(bench_schema))[0]
    entity = next(i for i in ids if i % 50 in (48, 49, 0))  # absent from one of the tables by construction
    truth = expected(registry, entity, 300)
    assert rf.reader(list(registry.tables))(entity_key(entity)) == truth
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=1) as store:
        assert store.get_features(entity_key(entity)) == truth
    client.close()


def test_cli_run_without_redis_or_extras(result: dict[str, Any], dsn: str, bench_schema: str, tmp_path: Path) -> None:
    out = tmp_path / "cli.json"
    argv = [
        "bench",
        "--dsn",
        dsn,
        "--schema",
        bench_schema,
        "--entities",
        "300",
        "--rtt",
        "0",
        "--tables",
        "1",
        "--strategies",
        "single",
        "--variants",
        "",
        "--no-materialized",
        "--clients",
        "",
        "--instrument",
        "",
        "--requests",
        "10",
        "--row-seconds",
        "0.01",
        "--redis-url",
        "redis://127.0.0.1:1/0",
        "--save",
        str(out),
    ]
    assert main(argv) == 0
    saved = reads.load(out)
    assert {r["name"] for r in saved["latency"]} == {"select1", "raw", "single"}
    assert saved["throughput"] == [] and saved["breakdown"] == []
    assert "redis://127.0.0.1:1/0" in saved["skipped"]["redis"]


def test_unreachable_redis_is_skipped_with_the_reason() -> None:
    assert redis_baseline.probe(None) == "no --redis-url given"
    reason = redis_baseline.probe("redis://127.0.0.1:1/0", timeout=0.5)
    assert reason is not None and "redis://127.0.0.1:1/0" in reason
    assert "not a Redis URL" in (redis_baseline.probe("http://x", timeout=0.5) or "")


def test_bad_settings_say_what_is_valid(dsn: str) -> None:
    with pytest.raises(BenchmarkError, match="valid: pipeline, sequential, single"):
        reads.run_benchmark(dsn, reads.BenchConfig(strategies=("nope",)))
    with pytest.raises(BenchmarkError, match="between 1 and 30"):
        reads.BenchConfig(table_counts=(31,)).validate()
    with pytest.raises(BenchmarkError, match="threads, async"):
        reads.BenchConfig(client_modes=("processes",)).validate()
    assert main(["bench", "--rtt", "0,x", "--save", os.devnull]) == 2


def test_runner_keeps_its_api() -> None:
    stats = measure_interleaved({"a": lambda x: x, "b": lambda x: x * 2}, [1, 2, 3], 40, rounds=4, warmup=1)
    assert set(stats) == {"a", "b"} and stats["a"].n == 40
    measured = run_interleaved(
        {"a": len, "b": len}, {"a": ["x"], "b": [[1, 2]]}, {"a": 7, "b": 3}, per={"b": 2}, warmup=0
    )
    assert measured["a"].stats.n == 7 and measured["b"].stats.n == 3 and len(measured["b"].latencies_ms) == 3


# -- report ---------------------------------------------------------------------------------------


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[str, int] = {}
        self.external: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        for name, value in attrs:
            if name in ("src", "href") and value and not value.startswith(("#", "data:")):
                self.external.append(value)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_report_is_one_self_contained_page(result: dict[str, Any]) -> None:
    page = _Page()
    page.feed(render(result))
    text = " ".join(page.text)
    assert page.tags.get("svg", 0) >= 6  # distributions, vs tables, vs round-trip, throughput, breakdown, per table
    assert page.tags.get("script", 0) == 0 and page.external == []
    for heading in (
        "Latency distribution per strategy",
        "Latency vs table count",
        "Latency vs round-trip",
        "Throughput vs concurrent clients",
        "Where the time goes",
        "Machine, versions, command",
    ):
        assert heading in text
    assert "pgfeatures bench --tiny" in text and result["meta"]["versions"]["postgresql"] in text


def test_report_renders_in_a_headless_browser(result: dict[str, Any], tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    path = write_report(result, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"]
    dom = subprocess.run([*common, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=90)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<svg") >= 6 and "Where the time goes" in dom.stdout
    done = subprocess.run(
        [*common, "--window-size=1400,3000", f"--screenshot={shot}", path.as_uri()],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000  # a blank page compresses to a few KB


def test_cli_renders_a_saved_result(result: dict[str, Any], tmp_path: Path) -> None:
    saved, out = tmp_path / "saved.json", tmp_path / "out.html"
    reads.save(result, saved)
    assert main(["bench", "--from-json", str(saved), "--report", str(out)]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")


# -- the OS page cache ----------------------------------------------------------------------------


def test_the_os_page_cache_is_dropped_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``bench`` (and ``--quick``) ran the cold-read part with the host's page cache dropped four times
    when run as root, unasked. The drop goes to ``DROP_CACHES``, here a file of the test (nothing
    host-wide): untouched without ``drop_os_cache``, written once per cold start with it."""
    from pgfeatures_bench import materialized, schema_effects

    target = tmp_path / "drop_caches"
    monkeypatch.setattr(schema_effects, "DROP_CACHES", target)
    assert reads.BenchConfig().drop_os_cache is False and reads.BenchConfig.quick().drop_os_cache is False
    kept = materialized.cold(300, 10, rounds=1, tables=2, progress=lambda line: None)
    assert not target.exists(), "the OS page cache was dropped without --drop-os-cache"
    assert kept["os_cache_drops"] == 0 and kept["os_cache_dropped"] is False
    assert "--drop-os-cache" in kept["os_cache_refused"]
    dropped = materialized.cold(300, 10, rounds=1, tables=2, progress=lambda line: None, drop_os_cache=True)
    assert target.read_text() == "3\n" and dropped["os_cache_drops"] == 2 and dropped["os_cache_dropped"] is True


def test_tables_are_full_width_when_stdout_is_not_a_terminal(
    result: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Piped to a file (here: pytest's capture, not a terminal), rich's default of 80 columns cut the
    targets table: its PASS/MISS column was gone. Every target keeps its verdict, on one line."""
    saved = tmp_path / "result.json"
    reads.save(result, saved)
    capsys.readouterr()
    assert main(["bench", "--from-json", str(saved)]) == 0
    text = capsys.readouterr().out
    targets = text[text.index("targets (issue 6)") :]
    for check in result["checks"]:
        line = next((ln for ln in targets.splitlines() if ln.strip().startswith(check["check"])), None)
        assert line is not None, f"the check {check['check']!r} is cut or wrapped:\n{targets}"
        if check["ok"] is not None:
            assert line.rstrip().endswith("PASS" if check["ok"] else "MISS"), line
    assert "…" not in text
    assert max(len(ln) for ln in text.splitlines()) > 80
