"""Where a command's output goes, and how it looks with or without rich.

- stdout carries a command's result: text for people, or with ``--json`` one JSON document and
  nothing else (so ``pgfeatures doctor --json | jq`` always parses);
- stderr carries errors (``error: ...``), progress, notes, and with ``--json`` everything meant
  for people;
- text is printed as it is: never parsed as rich markup, so a hint such as
  ``[tables.x.features]`` reaches the user intact.

rich draws tables and progress bars when it is installed; without it (the core install is
psycopg only) the same tables come out as aligned plain text and progress as plain lines.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from ..definitions import rfc3339

_STYLES = {"pass": "green", "ok": "green", "warn": "yellow", "fail": "red", "error": "red", "bold": "bold"}
UNBOUNDED_WIDTH = 1000  # columns of a rich console that is not a terminal: tables as wide as their content


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def have_rich() -> bool:
    """rich can be imported (it is an extra, not a core dependency)."""
    try:
        import rich.console  # noqa: F401
    except ImportError:
        return False
    return True


class Output:
    """A command's output streams. ``json_mode``: stdout is reserved for ``json()``."""

    def __init__(self, json_mode: bool = False, *, stdout: TextIO | None = None, stderr: TextIO | None = None):
        self.json_mode = json_mode
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self._rich = have_rich()
        self._consoles: dict[bool, Any] = {}

    @property
    def have_rich(self) -> bool:
        return self._rich

    @property
    def stderr_is_terminal(self) -> bool:
        return _isatty(self.stderr)

    @property
    def human(self) -> TextIO:
        """The stream for people: stdout, or stderr under ``--json``."""
        return self.stderr if self.json_mode else self.stdout

    def console(self, *, err: bool = False) -> Any:
        """A rich Console on the stream for people (stderr with ``err``). Needs rich: callers are
        commands whose extra includes it (the benchmarks)."""
        to_err = err or self.json_mode
        if to_err not in self._consoles:
            from rich.console import Console

            stream = self.stderr if to_err else self.stdout
            # Not a terminal (a pipe, a file, a CI log): there is no width to fit, and rich's default of
            # 80 columns would cut the tables (the benchmark's targets table lost its PASS/MISS column).
            width = None if _isatty(stream) else UNBOUNDED_WIDTH
            self._consoles[to_err] = Console(file=stream, highlight=False, width=width)
        return self._consoles[to_err]

    def say(self, text: str = "", *, style: str | None = None, err: bool = False) -> None:
        """One message for people, printed verbatim (``style``: pass/warn/fail/bold, when rich can show it)."""
        stream = self.stderr if err else self.human
        if self._rich and style and stream.isatty():
            self.console(err=err).print(text, style=_STYLES.get(style, style), markup=False, highlight=False)
        else:
            print(text, file=stream, flush=True)

    def note(self, text: str) -> None:
        """A side remark on stderr (never mixed into a result)."""
        print(text, file=self.stderr, flush=True)

    def json(self, data: Any) -> None:
        """The machine-readable result: one JSON document on stdout."""
        print(json.dumps(data, indent=2, default=_json_default), file=self.stdout, flush=True)

    def table(
        self,
        title: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[str] | None],
        *,
        right: Sequence[str] = (),
        status: str | None = None,
        lines: bool = False,
    ) -> None:
        """A table for people. ``rows``: ``None`` starts a new section; ``right``: right-aligned
        columns; ``status``: the column whose pass/warn/fail cells are coloured."""
        if self._rich:
            from rich.table import Table
            from rich.text import Text

            t = Table(title=title, show_lines=lines)
            for col in columns:
                t.add_column(col, justify="right" if col in right else "left", overflow="fold")
            coloured = columns.index(status) if status in columns else -1
            for row in rows:
                if row is None:
                    t.add_section()
                    continue
                t.add_row(
                    *(Text(str(c), style=_STYLES.get(str(c), "") if i == coloured else "") for i, c in enumerate(row))
                )
            self.console().print(t)
            return
        self._plain_table(title, columns, rows, right)

    def _plain_table(
        self, title: str, columns: Sequence[str], rows: Sequence[Sequence[str] | None], right: Sequence[str]
    ) -> None:
        body = [list(map(str, r)) for r in rows if r is not None]
        widths = [max([len(c), *(len(r[i]) for r in body)]) for i, c in enumerate(columns)]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(
                c.rjust(w) if columns[i] in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
            ).rstrip()

        out = [title, line(columns), "  ".join("-" * w for w in widths)]
        for row in rows:
            out.append("" if row is None else line(list(map(str, row))))
        print("\n".join(out), file=self.human, flush=True)

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Progress]:
        """A progress bar on stderr (rich), else a line per step."""
        if self._rich:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            with RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console(err=True),
                transient=False,
            ) as bar:
                yield Progress(self, bar, bar.add_task(description, total=total))
            return
        self.note(description)
        yield Progress(self, None, None)


class Progress:
    """Steps of a long operation, shown on stderr."""

    def __init__(self, output: Output, bar: Any, task: Any):
        self._output, self._bar, self._task = output, bar, task

    def advance(self, step: str) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)
        else:
            self._output.note(f"  {step}")

    def describe(self, text: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=text)
        else:
            self._output.note(f"  {text}")


def _json_default(value: Any) -> Any:
    """What the JSON output prints for a value json cannot: event times as RFC 3339 (as the HTTP
    service does), anything else as its text."""
    if isinstance(value, datetime.datetime) and value.tzinfo is not None:
        return rfc3339(value)
    return str(value)
