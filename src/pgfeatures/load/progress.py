"""A rich progress bar for loads (the CLI's). rich is imported only when a bar is shown, so the
library does not need it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from .options import LoadProgress, ProgressCallback


@contextlib.contextmanager
def progress_bar(console: Any = None, enabled: bool = True) -> Iterator[ProgressCallback | None]:
    """A rich progress bar (phase, rows, rows/s, elapsed) as a ``progress`` callback; None when disabled."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    started = time.perf_counter()
    with Progress(
        TextColumn("{task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task("opening", total=None, rate="")

        def report(p: LoadProgress) -> None:
            rate = p.rows / max(time.perf_counter() - started, 1e-9)
            bar.update(task, description=p.phase, completed=p.rows, total=p.total, rate=f"{rate:,.0f} rows/s")

        yield report
