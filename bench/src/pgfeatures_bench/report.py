"""The benchmark report: one self-contained HTML page (inline CSS, inline SVG plots, no scripts, no links).

``render(result)`` turns a ``reads.run_benchmark`` result (or a saved JSON of
one) into the page: the targets, latency distributions per strategy, latency
against table count and against round-trip, throughput against concurrent
clients, where the time of a request goes, the figures as tables, and the
machine, versions and command that produced them.
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .instrument import COMPONENTS  # noqa: E402

COLORS = {
    "select1": "#000000",
    "raw": "#7f7f7f",
    "single": "#d62728",
    "union": "#ff7f0e",
    "join": "#bcbd22",
    "pipeline": "#1f77b4",
    "sequential": "#9467bd",
    "batch": "#2ca02c",
    "parallel": "#17becf",
    "redis": "#8c564b",
    "redis batch": "#e377c2",
}
COMPONENT_COLORS = dict(zip(COMPONENTS, ["#bcbd22", "#1f77b4", "#d62728", "#c7c7c7", "#9467bd", "#ff7f0e", "#2ca02c"]))


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and doctype: the SVG is inlined in HTML


def _rtt_label(rtt: float) -> str:
    return "loopback" if rtt == 0 else f"{rtt:g} ms RTT"


def _label(r: dict[str, Any]) -> str:
    return r["name"] + (" (default)" if r["default"] else "") + (" /key" if r["keys_per_call"] > 1 else "")


def _grid(n: int, width: float = 5.0, height: float = 3.6) -> tuple[Figure, list[Any]]:
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, list(axes[0])


def _legend(fig: Figure, axes: list[Any]) -> None:
    handles: dict[str, Any] = {}  # one entry per label across panels
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=min(6, len(handles)),
        frameon=False,
    )


# -- plots ----------------------------------------------------------------------------------------


def plot_distributions(rows: list[dict[str, Any]]) -> str:
    """Latency CDFs at the largest table count, one column per round-trip.

    Top: every row, log scale. Bottom: the one-round-trip rows minus SELECT 1's
    p50, linear, where "within 0.7 ms of a round-trip" can be seen.
    """
    tables = max(r["tables"] for r in rows)
    rtts = sorted({r["rtt_ms"] for r in rows})
    fig, grid = plt.subplots(2, len(rtts), figsize=(5.0 * len(rtts), 7.4), squeeze=False)
    for col, rtt in enumerate(rtts):
        cell = [r for r in rows if r["rtt_ms"] == rtt and r["tables"] == tables]
        base = next((r["p50_ms"] for r in cell if r["name"] == "select1"), 0.0)
        top, bottom = grid[0][col], grid[1][col]
        right = 0.0
        for r in cell:
            qs = r["quantiles"]
            pct = [100 * i / (len(qs) - 1) for i in range(len(qs))]
            style = {
                "label": _label(r),
                "color": COLORS.get(r["name"]),
                "lw": 2.2 if r["default"] or r["name"] == "select1" else 1.2,
            }
            top.plot(qs, pct, **style)
            if r["keys_per_call"] == 1 and r["round_trips"] == 1:
                excess = [q - base for q in qs]
                bottom.plot(excess, pct, **style)
                right = max(right, excess[len(qs) * 95 // 100])
        top.set_xscale("log")
        top.set_xlabel("latency per request (ms, log)")
        top.set_title(f"{_rtt_label(rtt)}, {tables} tables")
        bottom.set_xlim(-0.3 if rtt else -0.05, max(0.5, right * 1.3))
        bottom.set_xlabel("ms above SELECT 1's p50 (one-round-trip rows)")
        for ax in (top, bottom):
            ax.set_ylabel("percentile")
            ax.grid(True, which="both", alpha=0.3)
    _legend(fig, list(grid[0]))
    return _svg(fig)


def plot_vs_tables(rows: list[dict[str, Any]]) -> str:
    rtts = sorted({r["rtt_ms"] for r in rows})
    fig, axes = _grid(len(rtts))
    for ax, rtt in zip(axes, rtts):
        cell = [r for r in rows if r["rtt_ms"] == rtt]
        for name in dict.fromkeys(r["name"] for r in cell):
            pts = sorted((r["tables"], r["p50_ms"], r) for r in cell if r["name"] == name)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=_label(pts[0][2]), color=COLORS.get(name))
        ax.set_yscale("log")
        ax.set_xlabel("tables read")
        ax.set_ylabel("p50 latency (ms, log)")
        ax.set_title(_rtt_label(rtt))
        ax.set_xticks(sorted({r["tables"] for r in cell}))
        ax.grid(True, which="both", alpha=0.3)
    _legend(fig, axes)
    return _svg(fig)


def plot_vs_rtt(rows: list[dict[str, Any]]) -> str:
    tables = max(r["tables"] for r in rows)
    rtts = sorted({r["rtt_ms"] for r in rows})
    fig, axes = _grid(2, 6.0, 4.0)
    for ax, key, title in zip(axes, ("p50_ms", "p99_ms"), ("p50", "p99")):
        cell = [r for r in rows if r["tables"] == tables]
        for name in dict.fromkeys(r["name"] for r in cell):
            by = {r["rtt_ms"]: r for r in cell if r["name"] == name}
            xs = [i for i, rtt in enumerate(rtts) if rtt in by]
            ax.plot(
                xs, [by[rtts[i]][key] for i in xs], "o-", label=_label(next(iter(by.values()))), color=COLORS.get(name)
            )
        ax.set_xticks(range(len(rtts)), [_rtt_label(r) for r in rtts])
        ax.set_yscale("log")
        ax.set_ylabel(f"{title} latency (ms, log)")
        ax.set_title(f"{title}, {tables} tables")
        ax.grid(True, which="both", alpha=0.3)
    _legend(fig, axes)
    return _svg(fig)


def plot_throughput(rows: list[dict[str, Any]]) -> str:
    fig, axes = _grid(2, 6.0, 4.0)
    styles = {"threads": "-", "async": "--"}
    for mode, rtt in dict.fromkeys((r["mode"], r["rtt_ms"]) for r in rows):
        pts = sorted((r["clients"], r["rps"], r["p50_ms"]) for r in rows if r["mode"] == mode and r["rtt_ms"] == rtt)
        label = f"{mode}, {_rtt_label(rtt)}"
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], "o" + styles.get(mode, "-"), label=label)
        axes[1].plot([p[0] for p in pts], [p[2] for p in pts], "o" + styles.get(mode, "-"), label=label)
    for ax, title in zip(axes, ("requests/s", "p50 latency under load (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.set_xticks(sorted({r["clients"] for r in rows}), [str(c) for c in sorted({r["clients"] for r in rows})])
        ax.grid(True, which="both", alpha=0.3)
    _legend(fig, axes)
    return _svg(fig)


def plot_breakdown(breakdowns: list[dict[str, Any]]) -> str:
    """Stacked mean component times per (strategy, distance); right panel without the network wait."""
    labels = [f"{b['label']} @ {_rtt_label(b['rtt_ms'])}" for b in breakdowns]
    fig, axes = _grid(2, 6.5, 0.6 * len(breakdowns) + 1.8)
    for ax, parts, title in (
        (axes[0], COMPONENTS, "all components (mean ms)"),
        (axes[1], tuple(c for c in COMPONENTS if c != "network"), "without the network wait (mean ms)"),
    ):
        left = [0.0] * len(breakdowns)
        for comp in parts:
            widths = [max(0.0, b["components"][comp]["mean_ms"]) for b in breakdowns]
            ax.barh(labels, widths, left=left, label=comp, color=COMPONENT_COLORS[comp])
            left = [a + w for a, w in zip(left, widths)]
        ax.set_title(title)
        ax.invert_yaxis()
        ax.grid(True, axis="x", alpha=0.3)
    axes[1].set_yticklabels([])
    _legend(fig, axes)
    return _svg(fig)


def plot_per_table(b: dict[str, Any]) -> str:
    items = sorted(b["per_table"].items())
    fig, axes = _grid(1, max(6.0, 0.25 * len(items)), 3.0)
    ax = axes[0]
    ax.bar([k for k, _ in items], [v["p50_ms"] * 1e3 for _, v in items], color="#d62728", label="p50")
    ax.plot([k for k, _ in items], [v["p99_ms"] * 1e3 for _, v in items], "k_", markersize=10, label="p99")
    ax.set_ylabel("server time per lookup (µs)")
    ax.set_title(f"per-table server time: {b['label']} @ {_rtt_label(b['rtt_ms'])} (EXPLAIN ANALYZE twins)")
    ax.tick_params(axis="x", rotation=90)
    ax.legend()
    return _svg(fig)


# -- tables ---------------------------------------------------------------------------------------


def _table(headers: Iterable[str], rows: Iterable[Iterable[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _latency_table(rows: list[dict[str, Any]]) -> str:
    out = []
    for r in rows:
        out.append(
            [
                f"{r['rtt_ms']:g}",
                r["tables"],
                _label(r),
                r["n"],
                f"{r['p50_ms']:.3f}",
                f"{r['p90_ms']:.3f}",
                f"{r['p99_ms']:.3f}",
                f"{r['mean_ms']:.3f}",
                f"{r['cpu_ms']:.3f}",
            ]
        )
    return _table(
        ["RTT ms", "tables", "row", "n", "p50 ms", "p90 ms", "p99 ms", "mean ms", "client CPU ms"], out, "num"
    )


def _checks_table(checks: list[dict[str, Any]]) -> str:
    rows = [
        [c["check"], c["target"], c["value"], "" if c["ok"] is None else ("PASS" if c["ok"] else "MISS")]
        for c in checks
    ]
    return _table(["check", "target", "this run", ""], rows, "checks")


def _breakdown_tables(breakdowns: list[dict[str, Any]]) -> str:
    parts = []
    for b in breakdowns:
        rows = [
            [c, f"{q['p50_ms']:.3f}", f"{q['p99_ms']:.3f}", f"{q['mean_ms']:.3f}"] for c, q in b["components"].items()
        ]
        rows.append(
            [
                "total (instrumented)",
                f"{b['total']['p50_ms']:.3f}",
                f"{b['total']['p99_ms']:.3f}",
                f"{b['total']['mean_ms']:.3f}",
            ]
        )
        u = b["uninstrumented"]
        rows.append(["production read", f"{u['p50_ms']:.3f}", f"{u['p99_ms']:.3f}", f"{u['mean_ms']:.3f}"])
        parts.append(
            f"<h3>{html.escape(b['label'])} @ {html.escape(_rtt_label(b['rtt_ms']))}, {b['tables']} tables: "
            f"{b['n']} requests, {b['explained']} EXPLAIN twins, {b['unattributed_pct']:+.2f}% unattributed</h3>"
        )
        parts.append(_table(["component", "p50 ms", "p99 ms", "mean ms"], rows, "num"))
    return "".join(parts)


def _meta(meta: dict[str, Any]) -> str:
    rows = [
        ["command", meta["command"]],
        ["started", meta["started"]],
        ["duration", f"{meta['duration_s']} s"],
        ["database", meta["dsn"]],
    ]
    rows += [[k, v] for k, v in meta["machine"].items()]
    rows += [[k, v] for k, v in meta["versions"].items()]
    rows += [["config", ", ".join(f"{k}={v}" for k, v in meta["config"].items())]]
    return _table(["", ""], rows, "meta")


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; } h3 { font-size: 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
table.num td:not(:nth-child(3)) { text-align: right; font-variant-numeric: tabular-nums; }
table.meta td:first-child { font-weight: 600; }
.plot svg { max-width: 100%; height: auto; }
.note { color: #555; max-width: 70em; }
"""


def _section(title: str, body: str, note: str = "") -> str:
    note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return f"<h2>{html.escape(title)}</h2>{note_html}{body}"


def _plot(render: Callable[[], str]) -> str:
    return f'<div class="plot">{render()}</div>'


def render(result: dict[str, Any]) -> str:
    """The whole page as a string."""
    meta, rows = result["meta"], result["latency"]
    parts = [
        f'<h1>pgfeatures read benchmark</h1><p class="note">{html.escape(meta["command"])} &middot; '
        f"{html.escape(meta['started'])} &middot; {html.escape(str(meta['machine']['cpu']))} "
        f"x{meta['machine']['cpus']} &middot; PostgreSQL {html.escape(str(meta['versions']['postgresql']))}</p>"
    ]
    parts.append(_section("Targets", _checks_table(result["checks"])))
    for name, why in result.get("skipped", {}).items():
        parts.append(f'<p class="note">skipped {html.escape(name)}: {html.escape(why)}</p>')
    if rows:
        parts.append(
            _section(
                "Latency distribution per strategy",
                _plot(lambda: plot_distributions(rows)),
                "Cumulative distribution of request latency at the largest table count. select1 is one "
                "round-trip on a plain connection; raw is the default statement without the library.",
            )
        )
        parts.append(_section("Latency vs table count", _plot(lambda: plot_vs_tables(rows))))
        parts.append(
            _section(
                "Latency vs round-trip",
                _plot(lambda: plot_vs_rtt(rows)),
                "Round-trips other than loopback go through a userspace latency-injecting proxy.",
            )
        )
    if result["throughput"]:
        parts.append(
            _section(
                "Throughput vs concurrent clients",
                _plot(lambda: plot_throughput(result["throughput"])),
                "Clients read the default strategy back to back (closed loop) for a fixed time; "
                "threads share one FeatureStore, async tasks one AsyncFeatureStore.",
            )
        )
    if result["breakdown"]:
        bd = result["breakdown"]
        loop = next((b for b in bd if b["rtt_ms"] == min(x["rtt_ms"] for x in bd)), bd[0])
        parts.append(
            _section(
                "Where the time goes",
                _plot(lambda: plot_breakdown(bd)) + _plot(lambda: plot_per_table(loop)) + _breakdown_tables(bd),
                "Instrumented reads: server time from sampled EXPLAIN (ANALYZE) twins; network is the rest "
                "of the wait. The production read (uninstrumented) is timed alternately for comparison.",
            )
        )
    if rows:
        parts.append(_section("Latency figures", _latency_table(rows)))
    if result["throughput"]:
        parts.append(
            _section(
                "Throughput figures",
                _table(
                    ["RTT ms", "tables", "mode", "clients", "requests/s", "p50 ms", "p99 ms", "CPU ms/req"],
                    [
                        [
                            f"{r['rtt_ms']:g}",
                            r["tables"],
                            r["mode"],
                            r["clients"],
                            f"{r['rps']:.0f}",
                            f"{r['p50_ms']:.3f}",
                            f"{r['p99_ms']:.3f}",
                            f"{r['cpu_ms']:.3f}",
                        ]
                        for r in result["throughput"]
                    ],
                    "num",
                ),
            )
        )
    parts.append(_section("Machine, versions, command", _meta(meta)))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>pgfeatures benchmark</title>'
        f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n"
    )


def write_report(result: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.write_text(render(result), encoding="utf-8")
    return path
