"""Feature types: what a feature column may be, how values travel and how they are checked.

Only narrow, fixed-width types are accepted: hot feature rows must stay small so that one index
lookup touches one small heap tuple (or none, with a covering index).
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..errors import DefinitionError, FeatureValueError
from .eventtime import parse_event_time

FLOAT32_MAX = 3.4028234663852886e38  # the largest finite real, printed shortest as 3.4028235e+38
# Halfway between FLOAT32_MAX and 2**128: the smallest magnitude that rounds to infinity as a float32
# (PostgreSQL refuses it as out of range). Everything below rounds to at most FLOAT32_MAX, including
# 3.4028235e+38, the text the server prints for FLOAT32_MAX, so what the server prints it accepts.
FLOAT32_OVERFLOW = 2.0**128 - 2.0**103
FLOAT32_SHOWN = "3.4028235e+38"  # FLOAT32_MAX as the server prints it
FLOAT32_ZERO = 2.0**-150  # the largest magnitude that rounds to a real 0 (half the smallest subnormal)
INT_RANGE = {"smallint": (-(2**15), 2**15 - 1), "integer": (-(2**31), 2**31 - 1), "bigint": (-(2**63), 2**63 - 1)}
NAN_POLICIES = ("reject", "null")
INF_POLICIES = ("reject", "keep")  # ±Infinity: refused (JSON cannot carry it as a number), or written as it is
NONFINITE_JSON = ("Infinity", "-Infinity", "NaN")  # how JSON answers carry stored non-finite values


def nonfinite_json(value: float) -> str:
    """The JSON form of a non-finite float: ``"Infinity"``, ``"-Infinity"`` or ``"NaN"``."""
    return "NaN" if value != value else "Infinity" if value > 0 else "-Infinity"


_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class FeatureType:
    """A supported column type and how values travel and come back."""

    name: str  # canonical PostgreSQL name, as format_type() prints it
    python: type
    exact_in_float8: bool  # can ride in a float8[] without loss

    def __str__(self) -> str:
        return self.name


TYPES: dict[str, FeatureType] = {
    "real": FeatureType("real", float, True),
    "double precision": FeatureType("double precision", float, True),
    "smallint": FeatureType("smallint", int, True),
    "integer": FeatureType("integer", int, True),
    "bigint": FeatureType("bigint", int, False),
    "boolean": FeatureType("boolean", bool, True),
}

# The type of ``updated_at`` (event time: definitions/eventtime.py). Not a feature type a definition
# may declare (yet): it travels as int8 epoch microseconds and comes back as an aware datetime.
EVENT_TIME = FeatureType("timestamp with time zone", datetime, False)

ALIASES = {
    "float4": "real",
    "float": "double precision",
    "float8": "double precision",
    "double": "double precision",
    "int2": "smallint",
    "int": "integer",
    "int4": "integer",
    "int8": "bigint",
    "bool": "boolean",
}

# Wide types and why they do not belong in a hot table; the doctor reuses this advice.
WIDE_TYPES = {
    "text": "variable-length and TOAST-able; encode categories as smallint/integer codes",
    "varchar": "variable-length; encode categories as smallint/integer codes",
    "character varying": "variable-length; encode categories as smallint/integer codes",
    "json": "parsed on every read and variable-length; one column per feature, as real/integer",
    "jsonb": "variable-length, often TOASTed; one column per feature, as real/integer",
    "numeric": "variable-length arbitrary precision, slow to decode; use real or double precision",
    "timestamptz": "8 bytes and converted on every read; event time is the table's updated_at, other times fit integer epoch seconds",
    "timestamp with time zone": "8 bytes and converted on every read; use integer epoch seconds",
    "timestamp": "8 bytes and converted on every read; use integer epoch seconds",
    "bytea": "variable-length; only the entity key should be bytea",
}


def feature_type(name: str) -> FeatureType:
    """Resolve a type name (canonical or alias). Raises DefinitionError for wide or unknown types."""
    key = " ".join(str(name).strip().lower().split())
    key = ALIASES.get(key, key)
    if key in TYPES:
        return TYPES[key]
    valid = ", ".join(TYPES)
    if key in WIDE_TYPES:
        raise DefinitionError(f"type {name!r} is not allowed in a feature table: {WIDE_TYPES[key]} (valid: {valid})")
    raise DefinitionError(f"unknown type {name!r} (valid: {valid})")


def check_identifier(kind: str, name: Any) -> str:
    """``name`` if it is a valid lowercase SQL identifier; else DefinitionError saying what is valid."""
    if not isinstance(name, str) or not _IDENT.match(name):
        raise DefinitionError(
            f"invalid {kind} name {name!r}: use lowercase letters, digits and '_', not starting with a digit, at most 63 characters"
        )
    return name


_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any, what: str) -> int:
    """Seconds from ``"7d"``, ``"12h"``, ``"30m"``, ``"3600s"``, ``"2w"`` or an integer. Raises DefinitionError."""
    if isinstance(value, bool):
        raise DefinitionError(f'{what}: expected a duration such as "7d", "12h", "3600s", got {value!r}')
    if isinstance(value, int):
        seconds = value
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise DefinitionError(
                f'{what}: expected a duration such as "7d", "12h", "30m", "3600s" or seconds, got {value!r}'
            )
        seconds = int(m[1]) * _UNITS[m[2]]
    if seconds <= 0:
        raise DefinitionError(f"{what}: a duration must be positive, got {value!r}")
    return seconds


def format_duration(seconds: int) -> str:
    """The shortest of ``parse_duration``'s forms for ``seconds``."""
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def check_value(where: str, type_: FeatureType, value: Any, nan: str = "reject", inf: str = "reject") -> Any:
    """``value`` as the Python type a column of ``type_`` takes; FeatureValueError says what is valid.

    ``where`` names the column (``table.feature``). NaN: refused, or None with ``nan="null"``.
    ±Infinity: refused, or kept with ``inf="keep"`` (JSON answers carry it as ``"Infinity"``).
    A ``real`` takes every value that rounds to a finite float32 (up to ±3.4028235e+38 as printed).
    """
    if value is None:
        return None
    kind = type_.name
    if type_ is EVENT_TIME:
        return parse_event_time(where, value)

    def invalid(why: str) -> FeatureValueError:
        return FeatureValueError(f"{where} ({kind}): {value!r} {why}")

    if kind == "boolean":
        if isinstance(value, bool) or type(value).__name__ == "bool_":
            return bool(value)
        raise invalid("is not a boolean (True, False or None)")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if isinstance(value, str) and value in NONFINITE_JSON:
            raise invalid(
                "is not a number: it is how JSON answers carry a stored non-finite value, which writes "
                "refuse by default (NaN: nan='null' writes NULL; ±Infinity: inf='keep' writes it)"
            )
        raise invalid("is not a number")
    if isinstance(value, numbers.Integral):
        number: float | int = int(value)
    else:
        number = float(value)
        if math.isnan(number):
            if nan == "null":
                return None
            raise invalid("is NaN, which this store rejects (nan='null' writes NULL)")
    if kind in ("real", "double precision"):
        number = float(number)
        if math.isinf(number):
            if inf == "keep":
                return number
            raise invalid(
                "is infinite, which this store refuses by default (inf='keep' writes it; JSON answers "
                'carry it as "Infinity")'
            )
        if kind == "real" and abs(number) >= FLOAT32_OVERFLOW:
            raise invalid(f"is out of range for real (at most ±{FLOAT32_SHOWN})")
        if kind == "real" and 0 < abs(number) <= FLOAT32_ZERO:  # PostgreSQL refuses what rounds to 0 (underflow)
            raise invalid(
                f"is too small for real (rounds to 0; non-zero values need a magnitude above {FLOAT32_ZERO:.2g})"
            )
        return number
    if isinstance(number, float):
        if not number.is_integer():
            raise invalid("is not an integer")
        number = int(number)
    lo, hi = INT_RANGE[kind]
    if not lo <= number <= hi:
        raise invalid(f"is out of range ({lo}..{hi})")
    return number
