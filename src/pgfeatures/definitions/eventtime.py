"""Event time: when a row's values were true (``updated_at``), as callers give it and as it travels (pure).

Stored as ``timestamptz``: microseconds over years 4713 BC to 294276 AD, compared with the server's
``now()`` and with intervals natively (a TTL is ``updated_at >= now() - ttl``), the type a user's
own SQL and every tool expects of a timestamp, and sent by binary COPY as one int64 (microseconds
since 2000-01-01 UTC), so a load encodes it as cheaply as a ``bigint`` of microseconds would be.
A ``bigint`` of microseconds would store the same 8 bytes but read as an opaque number and need a
conversion in every comparison with ``now()``.

What callers may give, one meaning each (declared, never guessed):

- a timezone-aware ``datetime`` (a naive one is refused: which zone it means is not known);
- an ISO 8601 / RFC 3339 string with a zone (``2026-05-01T12:00:00Z``, ``...+02:00``);
- a number of epoch seconds (live updates, HTTP pushes); a load declares the unit of an integer
  column (``event_time_unit``: ``s``, ``ms`` or ``us``).

It travels back from PostgreSQL as int8 epoch microseconds (``schema.event_time_micros_sql``),
exact, and becomes a UTC ``datetime`` (``from_micros``); JSON prints it as RFC 3339 (``rfc3339``).
Python's ``datetime`` covers years 1 to 9999, so that is the range accepted.
"""

from __future__ import annotations

import datetime as dt
import math
import numbers
import re
from typing import Any

from ..errors import FeatureValueError

UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
UNITS = {"s": 1_000_000, "ms": 1_000, "us": 1}  # microseconds per unit of an epoch number
MIN_MICROS = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z, the first instant a datetime holds
MAX_MICROS = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z, the last
DEFAULT_MAX_FUTURE_SKEW = 300.0  # seconds an event time may be ahead of the database server's clock

_ZONE = re.compile(r"(Z|z|[+-]\d\d(:?\d\d)?)$")
# A fraction of a second finer than microseconds, after hh:mm:ss or hhmmss (ISO 8601's basic format), written
# with a point or a comma.
_SUBMICRO = re.compile(r"(?<=\d\d)[.,](\d{7,})")


def parse_iso(text: str) -> dt.datetime:
    """``datetime.fromisoformat(text)`` (a trailing ``Z`` read as UTC), with a fraction of a second finer than
    a microsecond rounded as PostgreSQL rounds it (``rint(fraction * 1e6)``), where ``fromisoformat``
    truncates: the same text stores the same instant whether pgfeatures or SQL writes it. Raises
    ValueError as ``fromisoformat``, OverflowError when rounding up passes year 9999."""
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    finer = _SUBMICRO.search(text)
    if finer is None:
        return dt.datetime.fromisoformat(text)
    micros = round(float("0." + finer.group(1)) * 1_000_000)  # round(): to even, as C's rint
    return dt.datetime.fromisoformat(text[: finer.start()] + text[finer.end() :]) + dt.timedelta(microseconds=micros)


def from_micros(micros: int) -> dt.datetime:
    """The UTC datetime of ``micros`` epoch microseconds."""
    return EPOCH + dt.timedelta(microseconds=micros)


def to_micros(value: dt.datetime) -> int:
    """Epoch microseconds of an aware datetime (exact)."""
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def rfc3339(value: dt.datetime) -> str:
    """``2026-05-01T12:00:00.250000Z`` (``...T12:00:00Z`` without a fraction): UTC, as the HTTP
    service's JSON encoder (orjson, ``OPT_UTC_Z``) prints it, so the CLI and HTTP agree."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def check_unit(unit: Any) -> str:
    """``unit`` if it is one of ``UNITS``; else ValueError saying which are."""
    if unit not in UNITS:
        raise ValueError(
            f"unknown event time unit {unit!r}; valid: {', '.join(UNITS)} (epoch seconds, milliseconds, microseconds)"
        )
    return str(unit)


def parse_event_time(where: str, value: Any, unit: str = "s") -> dt.datetime:
    """``value`` as an aware UTC datetime (see the module docstring for what is accepted).

    ``where`` names the column (``table.updated_at``); ``unit`` is the unit of a number. Raises
    FeatureValueError saying what was wrong and what is valid.
    """

    def invalid(why: str) -> FeatureValueError:
        return FeatureValueError(f"{where} (event time): {value!r} {why}")

    if isinstance(value, dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise invalid("has no time zone: pass an aware datetime (e.g. datetime.now(timezone.utc))")
        moment = value
    elif isinstance(value, str):
        text = value.strip()
        if not _ZONE.search(text):
            raise invalid(
                "has no time zone: write it as ISO 8601 with a zone, e.g. 2026-05-01T12:00:00Z or "
                "2026-05-01T14:00:00+02:00"
            )
        try:
            moment = parse_iso(text)
        except ValueError:
            raise invalid("is not an ISO 8601 time (e.g. 2026-05-01T12:00:00Z)") from None
        except OverflowError:
            raise invalid("is outside years 1 to 9999 in UTC") from None
        if moment.tzinfo is None:
            raise invalid("has no time zone: write it as ISO 8601 with a zone, e.g. 2026-05-01T12:00:00Z")
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise invalid(
            "is not an event time: give an aware datetime, an ISO 8601 string with a zone, or epoch "
            f"{'seconds' if unit == 's' else unit}"
        )
    else:
        number = float(value) if not isinstance(value, numbers.Integral) else int(value)
        if isinstance(number, float) and not math.isfinite(number):
            raise invalid("is not a finite number")
        scaled = number * UNITS[unit]  # an int stays exact; a float out of range stays a (finite or infinite) float
        if not MIN_MICROS <= scaled <= MAX_MICROS:
            raise invalid(f"is out of range as epoch {unit} (years 1 to 9999)")
        return from_micros(scaled if isinstance(scaled, int) else int(round(scaled)))
    try:  # 9999-12-31T23:00:00-05:00 is in year 10000 in UTC: no datetime holds it, nor can a read
        return moment.astimezone(UTC)
    except OverflowError:
        raise invalid("is outside years 1 to 9999 in UTC") from None
