"""``pgfeatures demo``: load the demo tables and compare the read strategies (``pgfeatures.demo.run_demo``
measures; this prints)."""

from __future__ import annotations

import argparse
import platform

from .common import Command, add_dsn, add_json, add_settings, dsn_of, dsn_with_credentials, given
from .output import Output


def configure(p: argparse.ArgumentParser) -> None:
    from ..demo import DemoSettings

    add_dsn(p)
    add_settings(p, DemoSettings)
    add_json(p)


def run(args: argparse.Namespace, out: Output) -> int:
    from ..definitions import demo_registry
    from ..demo import DemoSettings, run_demo

    settings = DemoSettings(**given(args, DemoSettings))
    dsn = dsn_of(args)  # shown; the one with the credential merged in is not
    login = dsn_with_credentials(args, dsn)
    n_tables = len(demo_registry(schema=settings.schema).tables)
    out.say(
        f"pgfeatures demo: {n_tables} tables x 8 real features, {settings.entities:,} entities, server {dsn}",
        style="bold",
    )
    with out.progress("loading tables (COPY binary)", n_tables) as bar:
        rows = [0]

        def step(name: str, n: int) -> None:
            rows[0] += n
            if name.startswith("vacuum"):
                bar.describe(f"loaded {rows[0]:,} rows; {name}")
            else:
                bar.advance(name)

        result = run_demo(login, settings, progress=step)
    out.say(f"data {'loaded' if result.loaded else 'already present, reused'} in {result.load_seconds:.1f}s")
    if args.json:
        out.json(result.as_dict())
        return 0

    rows_shown: list[list[str] | None] = []
    for count, stats in result.stats.items():
        base = stats["sequential"].p50_ms
        for name, s in stats.items():
            rows_shown.append(
                [
                    str(count),
                    name,
                    f"{s.p50_ms:.3f}",
                    f"{s.p99_ms:.3f}",
                    f"{s.mean_ms:.3f}",
                    f"{s.cpu_ms:.3f}",
                    f"{base / s.p50_ms:.1f}x faster" if name != "sequential" else "1.0x",
                ]
            )
        rows_shown.append(None)
    columns = ["tables", "strategy", "p50 ms", "p99 ms", "mean ms", "client CPU ms", "p50 vs sequential"]
    out.table(
        f"read latency per request, loopback TCP, PostgreSQL {result.server_version // 10000}, "
        f"Python {platform.python_version()}, {settings.requests} requests per strategy (interleaved)",
        columns,
        rows_shown[:-1],
        right=[c for c in columns if c != "strategy"],
    )
    out.say("sequential = one round-trip per table; every other row is one round-trip per request.")
    out.say(f"\nsample read for entity 1 ({result.sample_key.hex()[:16]}...):")
    out.say(str(result.sample))
    out.say(f"absent key: {result.absent}; entity 49 is absent from t01: {result.missing_in_t01}")
    return 0


COMMANDS = (
    Command(
        "demo",
        "load 30 demo tables and compare read strategies at 10, 20 and 30 tables",
        configure,
        run,
        needs=("load",),
    ),
)
