"""A batch's ``updated_at`` column as event times: int64 epoch microseconds, vectorized, with the
rows that are invalid or too far ahead of the database server's clock. A ``timestamp`` feature's
column is read by the same rules (``instants``), its NULLs kept and no bound on the future.

What a column may hold (declared, never guessed; definitions/eventtime.py has the why):

- Arrow/Parquet timestamps of any unit: with a time zone they are instants; without one they are
  read in ``event_time_zone`` (refused without it: columns.py says so before any row is read);
  nanoseconds are floored to microseconds (what ``timestamptz`` keeps);
- strings (CSV): ISO 8601 with a zone (``Z``, ``+02:00``), or without one in ``event_time_zone``;
  a string of digits is an epoch number like an integer column;
- integers and floating-point numbers: epoch numbers in ``event_time_unit`` (``s``, ``ms``, ``us``).

NULL takes the load's stamp: the load's transaction time on the server, or ``updated_at=``. An
event time more than ``max_future_skew`` seconds ahead of the server's clock (read at the load's
start: the transaction's ``now()``) is invalid: the load fails naming the row, or skips it.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..definitions import UPDATED_AT, from_micros, rfc3339
from ..definitions.eventtime import MAX_MICROS, MIN_MICROS, UNITS, parse_iso, to_micros
from ..errors import LoadInputError
from .keys import Problem, decoded, nulls_of

_ARROW_UNITS = {"s": 1_000_000, "ms": 1_000, "us": 1}  # microseconds per Arrow timestamp unit (ns: rounded)
_DIGITS = r"^[+-]?[0-9]+$"
_ZONED = r"(Z|z|[+-][0-9][0-9](:?[0-9][0-9])?)$"
_FINER = r"[0-9][0-9][.,][0-9]{7}"  # a fraction of a second finer than microseconds (as parse_iso finds it)


@dataclass(frozen=True)
class EventClock:
    """What a load's event times are filled and checked with, from the server at the load's start
    (microseconds): ``now`` (the transaction's ``now()``), ``default`` (the stamp of rows without
    one), ``limit`` (the newest accepted, now + skew; None: no bound)."""

    now: int
    default: int
    limit: int | None
    unit: str = "s"
    zone: str | None = None
    skew: float | None = None

    def future(self, micros: int) -> str:
        """Why ``micros`` is refused as too far ahead."""
        ahead = (micros - self.now) / 1e6
        return (
            f"{rfc3339(from_micros(micros))} is in the future: {ahead:,.3f}s ahead of the database server's clock "
            f"({rfc3339(from_micros(self.now))}), more than max_future_skew ({self.skew:g}s, --max-future-skew) "
            "allows (a writer's clock running ahead, or epoch numbers in another unit than event_time_unit?)"
        )


def event_times(arr: pa.Array, clock: EventClock) -> tuple[np.ndarray, list[Problem]]:
    """The column's event times (epoch microseconds; NULL takes ``clock.default``) and its problems."""
    micros, nulls, problems = instants(arr, clock, UPDATED_AT)
    if nulls is not None:
        micros[nulls] = clock.default
    if clock.limit is not None:
        ahead = micros > clock.limit
        if nulls is not None:
            ahead &= ~nulls
        if ahead.any():
            values = micros
            problems.append(Problem(UPDATED_AT, ahead, lambda i: clock.future(int(values[i]))))
    return micros, problems


def instants(arr: pa.Array, clock: EventClock, column: str) -> tuple[np.ndarray, np.ndarray | None, list[Problem]]:
    """A column of instants by the event-time rules (``updated_at``, or a ``timestamp`` feature): epoch
    microseconds (0 at NULL), the NULL mask (None: no NULLs) and the problems. No default, no future bound."""
    arr = decoded(arr)
    nulls = nulls_of(arr)
    n = len(arr)
    problems: list[Problem] = []
    kind = arr.type
    if pa.types.is_null(kind):
        return np.zeros(n, dtype=np.int64), np.ones(n, dtype=bool), problems
    what = "an event time" if column == UPDATED_AT else "a timestamp"
    if pa.types.is_timestamp(kind):
        micros, bad = _timestamps(arr, clock.zone, column)
    elif pa.types.is_integer(kind):
        micros, bad = _scaled(_ints(arr), UNITS[clock.unit])
    elif pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        micros, bad, invalid = _floats(arr, UNITS[clock.unit])
        if invalid.any():
            shown = arr
            problems.append(Problem(column, invalid, lambda i: f"{shown[i].as_py()!r} is not a finite epoch number"))
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        micros, bad, unreadable = _strings(arr, clock, column)
        problems += unreadable
    else:
        raise LoadInputError(
            f"column {column!r} is {kind}; {what} is a timestamp, an ISO 8601 string with a zone, or epoch numbers",
            column=column,
        )
    # Whatever the form, the instant in UTC must be one a datetime (and so a read) can hold: a string's
    # offset or a zone can carry 9999-12-31T23:30:00-05:00 into year 10000.
    bad |= (micros < MIN_MICROS) | (micros > MAX_MICROS)
    if nulls is not None:
        micros[nulls] = 0
        bad &= ~nulls
    if bad.any():
        raw = arr
        unit = {"s": "seconds", "ms": "milliseconds", "us": "microseconds"}[clock.unit]
        problems.append(
            Problem(
                column,
                bad,
                lambda i: (
                    f"{_shown(raw[i])} is out of range for {what} "
                    f"(years 1 to 9999; epoch numbers are read as {unit}: declare "
                    "another unit with event_time_unit= / --event-time-unit)"
                ),
            )
        )
    return micros, nulls, problems


def _ints(arr: pa.Array) -> np.ndarray:
    if arr.type == pa.uint64():
        arr = pc.min_element_wise(arr.fill_null(0), pa.scalar(2**63 - 1, pa.uint64()))  # beyond: out of range anyway
    return pc.cast(arr.fill_null(0), pa.int64()).to_numpy(zero_copy_only=False)


def _scaled(values: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """``values`` (int64) times ``factor`` microseconds, and the mask of those out of range."""
    bad = (values < MIN_MICROS // factor) | (values > MAX_MICROS // factor)
    return np.where(bad, 0, values) * factor, bad


def _floats(arr: pa.Array, factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    floats = pc.cast(arr, pa.float64(), safe=False).fill_null(0.0).to_numpy(zero_copy_only=False) * factor
    invalid = ~np.isfinite(floats)
    bad = ~invalid & ((floats < MIN_MICROS) | (floats > MAX_MICROS))
    return np.where(invalid | bad, 0, np.round(floats)).astype(np.int64), bad, invalid


def _shown(value: Any) -> str:
    """A value of the column as a message shows it (a timestamp past year 9999 has no datetime: its text)."""
    try:
        return repr(value.as_py())
    except (OverflowError, ValueError):  # str() converts through a datetime too
        return f"{value.cast(pa.int64()).as_py()} {getattr(value.type, 'unit', '')} since 1970-01-01T00:00:00Z"


def _timestamps(arr: pa.Array, zone: str | None, column: str) -> tuple[np.ndarray, np.ndarray]:
    kind = arr.type
    if kind.tz is None:
        assert zone is not None  # columns.py refuses a zoneless timestamp column without event_time_zone
        try:
            arr = pc.assume_timezone(arr, zone)
        except pa.ArrowInvalid as exc:  # a local time that does not exist, or exists twice, in the zone
            raise LoadInputError(f"column {column!r}: {exc} (event_time_zone={zone!r})", column=column) from None
    raw = pc.cast(arr, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    if kind.unit == "ns":  # timestamptz keeps microseconds: rounded as PostgreSQL rounds a finer fraction
        return nanos_to_micros(raw), np.zeros(len(raw), dtype=bool)
    return _scaled(raw, _ARROW_UNITS[kind.unit])


def nanos_to_micros(nanos: np.ndarray) -> np.ndarray:
    """Epoch nanoseconds as epoch microseconds, the fraction of each second rounded as PostgreSQL rounds
    the same time written as text (``rint(fraction * 1e6)``, ``definitions.eventtime.parse_iso``), and as a
    live update of the same pandas Timestamp stores it."""
    seconds = nanos // 1_000_000_000  # floor: the fraction is in [0, 1) second, as the text writes it
    fraction = (nanos - seconds * 1_000_000_000) / 1e9
    return seconds * 1_000_000 + np.rint(fraction * 1e6).astype(np.int64)


def _strings(arr: pa.Array, clock: EventClock, column: str) -> tuple[np.ndarray, np.ndarray, list[Problem]]:
    """ISO 8601 strings (with a zone, or in ``clock.zone``) and strings of digits (epoch numbers)."""
    n = len(arr)
    text = pc.utf8_trim_whitespace(arr)
    digits = pc.match_substring_regex(text, _DIGITS).fill_null(False).to_numpy(zero_copy_only=False)
    zoned = pc.match_substring_regex(text, _ZONED).fill_null(False).to_numpy(zero_copy_only=False) & ~digits
    present = ~arr.is_null().to_numpy(zero_copy_only=False)
    local = present & ~digits & ~zoned
    micros = np.zeros(n, dtype=np.int64)
    bad = np.zeros(n, dtype=bool)
    unreadable = np.zeros(n, dtype=bool)
    reasons: dict[int, str] = {}
    if digits.any():
        picked = np.flatnonzero(digits)
        try:
            values = pc.cast(pc.take(text, pa.array(picked)), pa.int64()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid:  # more digits than an int64 holds
            values = np.array(
                [min(max(int(text[int(i)].as_py()), -(2**63)), 2**63 - 1) for i in picked], dtype=np.int64
            )
        micros[picked], bad[picked] = _scaled(values, UNITS[clock.unit])
    if zoned.any():
        _parse(text, np.flatnonzero(zoned), pa.timestamp("us", tz="UTC"), None, micros, unreadable, reasons)
    if local.any():
        if clock.zone is None:
            unreadable |= local
            for i in np.flatnonzero(local)[:1]:
                reasons[int(i)] = (
                    f"{text[int(i)].as_py()!r} has no time zone: write ISO 8601 with a zone (e.g. "
                    "2026-05-01T12:00:00Z or 2026-05-01T14:00:00+02:00), or name the zone of such times "
                    "with event_time_zone= (--event-time-zone)"
                )
        else:
            _parse(text, np.flatnonzero(local), pa.timestamp("us"), clock.zone, micros, unreadable, reasons)
    problems = []
    if unreadable.any():
        shown = text

        def why(i: int) -> str:
            return reasons.get(i) or f"{shown[i].as_py()!r} is not an ISO 8601 time (e.g. 2026-05-01T12:00:00Z)"

        problems.append(Problem(column, unreadable, why))
    return micros, bad, problems


def _parse(
    text: pa.Array,
    rows: np.ndarray,
    target: pa.DataType,
    zone: str | None,
    micros: np.ndarray,
    unreadable: np.ndarray,
    reasons: dict[int, str],
) -> None:
    """Parse ``text[rows]`` into ``micros``: vectorized by Arrow, or row by row (``parse_iso``: Python's ISO
    8601 parser, which also takes what Arrow does not) for a value finer than microseconds and for every row
    when some value defeats Arrow."""
    picked = pc.take(text, pa.array(rows))
    # Arrow's cast truncates a fraction of a second finer than microseconds: such rows are parsed one by one
    # (parse_iso rounds it as PostgreSQL does), as is every row when Arrow cannot cast some value.
    finer = pc.match_substring_regex(picked, _FINER).fill_null(False).to_numpy(zero_copy_only=False)
    one_by_one, coarse = rows[finer], rows[~finer]
    if len(coarse):
        try:
            stamps = pc.cast(pc.take(text, pa.array(coarse)), target)
            if zone is not None:
                stamps = pc.assume_timezone(stamps, zone)
            micros[coarse] = pc.cast(stamps, pa.int64()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid:
            one_by_one = rows
    if not len(one_by_one):
        return
    tz: dt.tzinfo | None = zoneinfo.ZoneInfo(zone) if zone is not None else None
    for i, value in zip(one_by_one, pc.take(text, pa.array(one_by_one)).to_pylist()):
        try:
            moment = parse_iso(value)
            if moment.tzinfo is None:
                if tz is None:
                    raise ValueError("no time zone")
                moment = moment.replace(tzinfo=tz)
                if moment.replace(fold=0).utcoffset() != moment.replace(fold=1).utcoffset():
                    # A local time the zone has twice (clocks back) or never (clocks forward): which instant
                    # is meant is not known, as Arrow's cast of a timestamp column says too.
                    unreadable[i] = True
                    reasons[int(i)] = (
                        f"{value!r} happens twice or never in {zone} (a daylight-saving change): write it with "
                        "its UTC offset"
                    )
                    continue
            micros[i] = to_micros(moment)
        except OverflowError:
            unreadable[i] = True
            reasons[int(i)] = f"{value!r} is outside years 1 to 9999 in UTC"
        except ValueError:
            unreadable[i] = True
