"""The read benchmark's result: its targets checked, its environment recorded, saved, loaded and printed.

Owns ``evaluate`` (the issue's targets against the measured rows: the ``checks`` of a result),
``environment`` (the ``meta``: machine, versions, command), and the output: ``save`` / ``load``
(JSON) and ``print_result`` (the console tables). The measuring is ``reads.py`` and
``reads_cell.py``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from pgfeatures import __version__
from pgfeatures.connections import redact
from pgfeatures.errors import BenchmarkError
from pgfeatures.reader import DEFAULT_STRATEGY

if TYPE_CHECKING:
    from .reads import BenchConfig


# -- targets --------------------------------------------------------------------------------------


def _find(rows: list[dict[str, Any]], rtt: float, tables: int, name: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["rtt_ms"] == rtt and r["tables"] == tables and r["name"] == name), None)


def evaluate(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets against this run's figures: ``{check, target, value, ok}`` (ok None: for information)."""
    rows = result["latency"]
    checks: list[dict[str, Any]] = []

    def add(check: str, target: str, value: str, ok: bool | None) -> None:
        checks.append({"check": check, "target": target, "value": value, "ok": ok})

    default = DEFAULT_STRATEGY.value
    tables = max((r["tables"] for r in rows), default=0)
    far = max((r["rtt_ms"] for r in rows), default=0.0)
    base, best = _find(rows, far, tables, "select1"), _find(rows, far, tables, default)
    if far > 0 and base and best:
        d50, d99 = best["p50_ms"] - base["p50_ms"], best["p99_ms"] - base["p99_ms"]
        add(f"{default} p50 - SELECT 1 ({far:g} ms, {tables} tables)", "<= +0.7 ms", f"{d50:+.3f} ms", d50 <= 0.7)
        add(f"{default} p99 - SELECT 1 ({far:g} ms, {tables} tables)", "<= +3 ms", f"{d99:+.3f} ms", d99 <= 3.0)
        seq = _find(rows, far, tables, "sequential")
        if seq:
            trips = seq["p50_ms"] / base["p50_ms"]
            add(
                f"sequential round-trips ({far:g} ms, {tables} tables)",
                f"~{tables}",
                f"{trips:.1f}",
                0.8 * tables <= trips <= 1.3 * tables,
            )
    near = min((r["rtt_ms"] for r in rows), default=None)
    if near == 0:
        best = _find(rows, 0.0, tables, default)
        if best:
            add(
                f"{default} p50 (loopback, {tables} tables)",
                "<= 0.3 ms",
                f"{best['p50_ms']:.3f} ms",
                best["p50_ms"] <= 0.3,
            )
            add(
                f"{default} client CPU (loopback, {tables} tables)",
                "<= 0.06 ms",
                f"{best['cpu_ms']:.3f} ms",
                best["cpu_ms"] <= 0.06,
            )
            raw = _find(rows, 0.0, tables, "raw")
            if raw:
                add(
                    f"library cost: {default} / raw (loopback)",
                    "-",
                    f"x{best['p50_ms'] / raw['p50_ms']:.2f} (CPU x{best['cpu_ms'] / raw['cpu_ms']:.2f})",
                    None,
                )
            for count in sorted({r["tables"] for r in rows} - {tables}):
                fewer = _find(rows, 0.0, count, default)
                if fewer:
                    add(
                        f"{default} p50 (loopback, {count} tables)",
                        f"< {best['p50_ms']:.3f} ms",
                        f"{fewer['p50_ms']:.3f} ms",
                        fewer["p50_ms"] < best["p50_ms"],
                    )
        batch = _find(rows, 0.0, tables, "batch")
        if batch:
            add(
                f"batch x{batch['keys_per_call']} per key (loopback, {tables} tables)",
                "<= 0.15 ms",
                f"{batch['p50_ms']:.3f} ms",
                batch["p50_ms"] <= 0.15,
            )
        redis = _find(rows, 0.0, tables, "redis")
        if redis and best:
            add(
                f"{default} / redis p50 (loopback, {tables} tables)",
                "-",
                f"x{best['p50_ms'] / redis['p50_ms']:.2f}",
                None,
            )
    _materialized_checks(result, add)
    for b in result.get("breakdown", []):
        add(
            f"breakdown adds up ({b['label']}, {b['rtt_ms']:g} ms)",
            "within 5%",
            f"{b['unattributed_pct']:+.2f}% left",
            b["sums_ok"],
        )
    return checks


# -- environment ----------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _memory_gb() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def environment(
    dsn: str,
    server_version: str,
    redis_version: str | None,
    cfg: BenchConfig,
    argv: Sequence[str] | None,
    started: float,
) -> dict[str, Any]:
    import matplotlib
    import numpy
    import psycopg_pool
    import redis
    import redis.utils

    return {
        "command": shlex.join(argv if argv is not None else ["pgfeatures", *sys.argv[1:]]),
        "started": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "dsn": redact(dsn),
        "machine": {
            "platform": platform.platform(),
            "cpu": _cpu_model(),
            "cpus": os.cpu_count(),
            "memory_gb": _memory_gb(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],  # 1, 5, 15 min: how busy the box was
        },
        "versions": {
            "pgfeatures": __version__,
            "python": platform.python_version(),
            "postgresql": server_version,
            "psycopg": f"{psycopg.__version__} ({psycopg.pq.__impl__}, libpq {psycopg.pq.version()})",
            "psycopg_pool": psycopg_pool.__version__,
            "numpy": numpy.__version__,
            "matplotlib": matplotlib.__version__,
            "redis_server": redis_version,
            "redis_py": f"{redis.__version__}{' + hiredis' if redis.utils.HIREDIS_AVAILABLE else ''}",
        },
        "config": asdict(cfg) | {"redis_url": redact(cfg.redis_url) if cfg.redis_url else None},
    }


# -- output ---------------------------------------------------------------------------------------


def save(result: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(result, indent=1))


def load(path: str | Path) -> dict[str, Any]:
    """A saved result. Raises BenchmarkError when the file is not one."""
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise BenchmarkError(f"cannot read benchmark results from {path}: {exc}") from None
    missing = {"meta", "latency", "throughput", "breakdown", "checks"} - set(result if isinstance(result, dict) else ())
    if missing:
        raise BenchmarkError(f"{path} is not a pgfeatures bench result (missing {', '.join(sorted(missing))})")
    return result


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 100 else f"{value:.1f}"  # keeps the table within 80 columns


def _materialized_checks(result: dict[str, Any], add: Callable[[str, str, str, bool | None], None]) -> None:
    """Issue 13's targets: materialized against unmaterialized, within the same run."""
    rows = result["latency"]
    tables = max((r["tables"] for r in rows), default=0)
    flex, mat = _find(rows, 0.0, tables, "service"), _find(rows, 0.0, tables, "service materialized")
    if flex and mat:
        ratio = mat["p50_ms"] / flex["p50_ms"]
        add(f"materialized / unmaterialized p50 (loopback, {tables} tables)", "<= 0.5x", f"x{ratio:.2f}", ratio <= 0.5)
        redis = _find(rows, 0.0, tables, "redis")
        if redis:
            r = mat["p50_ms"] / redis["p50_ms"]
            add(f"materialized / redis p50 (loopback, {tables} tables)", "<= 1.5x", f"x{r:.2f}", r <= 1.5)
    through = result.get("materialized", {}).get("throughput", [])
    by = {(t["name"], t["clients"]): t for t in through}
    for c in sorted({t["clients"] for t in through} - {1}):
        base = by.get(("service", c))
        for name, target in (("service materialized", 2.0), ("service vector materialized", 3.0)):
            got = by.get((name, c))
            if base and got:
                x = got["rps"] / base["rps"]
                add(f"{name} / service req/s ({c} async clients)", f">= {target:g}x", f"x{x:.2f}", x >= target)
        got = by.get(("service materialized", c))
        if base and got:
            x = got["machine_cpu_ms"] / base["machine_cpu_ms"]
            add(f"machine CPU per request, materialized / service ({c} clients)", "<= 0.4x", f"x{x:.2f}", x <= 0.4)
    cold = result.get("materialized", {}).get("cold")
    if cold:
        how = "restart + dropped OS cache" if cold["os_cache_dropped"] else "restart (OS cache kept)"
        add(
            f"cold reads ({how}), first {cold['requests']}: service / materialized mean",
            ">= 5x",
            f"x{cold['speedup']:.2f}",
            cold["speedup"] >= 5,
        )


def print_result(result: dict[str, Any], console: Any) -> None:
    """Rich tables: latency per distance, throughput, breakdown, targets."""
    from rich import box
    from rich.table import Table

    rows = result["latency"]
    for rtt in sorted({r["rtt_ms"] for r in rows}):
        where = "direct loopback" if rtt == 0 else f"{rtt:g} ms round-trip through the proxy"
        t = Table(
            title=f"latency per request (ms), {where}",
            caption="* default strategy; /key: per key of a batch; "
            "-select1: p50 above SELECT 1's; xraw: p50 over the raw statement's",
            box=box.SIMPLE_HEAD,
        )
        for col in ["row", "n", "p50", "p90", "p99", "CPU", "-select1", "xraw"]:
            t.add_column(col, justify="left" if col == "row" else "right", no_wrap=True)
        for count in sorted({r["tables"] for r in rows if r["rtt_ms"] == rtt}):
            t.add_row(f"[bold]{count} tables[/bold]")
            cell = [r for r in rows if r["rtt_ms"] == rtt and r["tables"] == count]
            base, raw = _find(cell, rtt, count, "select1"), _find(cell, rtt, count, "raw")
            for r in cell:
                single = r["keys_per_call"] == 1
                label = r["name"] + ("*" if r["default"] else "") + ("" if single else "/key")
                above = r["p50_ms"] - base["p50_ms"] if base else 0.0
                diff = f"{above:+.3f}" if abs(above) < 10 else f"{above:+.1f}"
                diff = diff if base and single and r is not base else ""
                x = r["p50_ms"] / raw["p50_ms"] if raw else 0.0
                ratio = f"{x:.2f}" if x < 10 else f"{x:.0f}"
                ratio = ratio if raw and r["kind"] == "strategy" and single else ""
                t.add_row(
                    label,
                    str(r["n"]),
                    _ms(r["p50_ms"]),
                    _ms(r["p90_ms"]),
                    _ms(r["p99_ms"]),
                    _ms(r["cpu_ms"]),
                    diff,
                    ratio,
                )
        console.print(t)
    if result["throughput"]:
        t = Table(
            title="throughput: concurrent clients reading the default strategy back to back (ms)", box=box.SIMPLE_HEAD
        )
        for col in ["rtt", "tables", "mode", "clients", "req/s", "p50", "p99", "CPU/req"]:
            t.add_column(col, justify="right", no_wrap=True)
        for r in result["throughput"]:
            t.add_row(
                f"{r['rtt_ms']:g}",
                str(r["tables"]),
                r["mode"],
                str(r["clients"]),
                f"{r['rps']:.0f}",
                f"{r['p50_ms']:.3f}",
                f"{r['p99_ms']:.3f}",
                f"{r['cpu_ms']:.3f}",
            )
        console.print(t)
    mat = result.get("materialized") or {}
    if mat.get("throughput"):
        t = Table(
            title=f"feature service over every table: materialized or not, async clients, one process "
            f"(built in {mat.get('build_s', 0):.1f}s)",
            box=box.SIMPLE_HEAD,
        )
        for col in ["variant", "clients", "req/s", "p50", "p99", "client CPU/req", "machine CPU/req"]:
            t.add_column(col, justify="left" if col == "variant" else "right", no_wrap=True)
        for r in mat["throughput"]:
            t.add_row(
                r["name"],
                str(r["clients"]),
                f"{r['rps']:.0f}",
                f"{r['p50_ms']:.3f}",
                f"{r['p99_ms']:.3f}",
                f"{r['cpu_ms']:.3f}",
                f"{r['machine_cpu_ms']:.3f}",
            )
        console.print(t)
    if mat.get("cold"):
        c = mat["cold"]
        how = "restart + dropped OS page cache" if c["os_cache_dropped"] else f"restart only ({c['os_cache_refused']})"
        console.print(
            f"cold reads ({how}, shared_buffers {c['shared_buffers']}, {c['tables']} tables x "
            f"{c['entities']:,} entities): mean of the first {c['requests']} requests: service "
            f"{c['flexible_mean_ms']:.3f} ms, materialized {c['materialized_mean_ms']:.3f} ms "
            f"(x{c['speedup']:.1f})",
            highlight=False,
        )
    for b in result["breakdown"]:
        t = Table(
            title=f"where the time goes: {b['label']}, {b['tables']} tables, {b['rtt_ms']:g} ms round-trip "
            f"({b['n']} requests, {b['explained']} EXPLAIN twins)",
            box=box.SIMPLE_HEAD,
        )
        for col in ["component", "p50 ms", "p99 ms", "mean ms", "share"]:
            t.add_column(col, justify="left" if col == "component" else "right", no_wrap=True)
        total = b["total"]["mean_ms"]
        for name, q in b["components"].items():
            t.add_row(
                name, f"{q['p50_ms']:.3f}", f"{q['p99_ms']:.3f}", f"{q['mean_ms']:.3f}", f"{q['mean_ms'] / total:.0%}"
            )
        t.add_section()
        t.add_row(
            "total",
            f"{b['total']['p50_ms']:.3f}",
            f"{b['total']['p99_ms']:.3f}",
            f"{total:.3f}",
            f"{b['unattributed_pct']:+.1f}% left",
        )
        u = b["uninstrumented"]
        t.add_row("uninstrumented", f"{u['p50_ms']:.3f}", f"{u['p99_ms']:.3f}", f"{u['mean_ms']:.3f}", "")
        console.print(t)
        slowest = sorted(b["per_table"].items(), key=lambda kv: -kv[1]["p50_ms"])[:3]
        if slowest:
            console.print(
                "  slowest tables on the server (p50): " + ", ".join(f"{k} {v['p50_ms']:.3f} ms" for k, v in slowest)
            )
    for name, why in result.get("skipped", {}).items():
        console.print(f"[yellow]skipped {name}:[/yellow] {why}")
    t = Table(title="targets (issue 6)", box=box.SIMPLE_HEAD)
    for col in ["check", "target", "this run", ""]:
        t.add_column(col, no_wrap=col != "this run")
    for c in result["checks"]:
        mark = "" if c["ok"] is None else ("[green]PASS[/green]" if c["ok"] else "[red]MISS[/red]")
        t.add_row(c["check"], c["target"], c["value"], mark)
    console.print(t)
    m = result["meta"]
    console.print(
        f"{m['machine']['cpu']} x{m['machine']['cpus']}, PostgreSQL {m['versions']['postgresql']}, "
        f"Python {m['versions']['python']}, psycopg {m['versions']['psycopg']}; {m['duration_s']}s; command: {m['command']}"
    )
