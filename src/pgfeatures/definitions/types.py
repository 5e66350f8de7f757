"""Feature types: what a feature column may be, how values travel and how they are checked.

Scalars (``real``, ``double precision``, ``smallint``, ``integer``, ``bigint``, ``boolean``) are
narrow and fixed-width: they travel in one typed array per table and keep a hot row small. The rich
types real models need are declared explicitly and bounded, so a row's width stays known:

- ``string``: ``character varying(max_length)`` (default 256 characters); a longer value is refused
  naming the row, never truncated;
- ``timestamp``: ``timestamp with time zone`` (an aware ``datetime``; JSON prints RFC 3339);
- ``list<integer|bigint|real|double|string>``: a PostgreSQL array of that element type, variable
  length, optionally at most ``max_length`` elements (checked on every write);
- ``embedding`` of ``dim`` floats: pgvector's ``vector(dim)`` (or ``halfvec(dim)``) where the
  extension exists, else ``real[]`` with the dimension checked on every write (``storage``).
"""

from __future__ import annotations

import math
import numbers
import re
import struct
from array import array
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
# Why a non-zero value that rounds to a real 0 is refused (PostgreSQL refuses it as underflow), on every write path.
REAL_UNDERFLOW = f"too small for real (rounds to 0; non-zero values need a magnitude above {FLOAT32_ZERO:.2g})"
FLOAT32_MIN_NORMAL = 2.0**-126  # the smallest normal float32
# Why an embedding is refused whose squared norm float32 cannot hold (pgvector ranks in float32), on every write path.
NORM_OVERFLOWS = f"overflows float32 (at most {FLOAT32_MAX:.4g}), in which pgvector computes distances"
NORM_UNDERFLOWS = (
    f"underflows float32 (at least {FLOAT32_MIN_NORMAL:.4g} when not all zero), in which pgvector computes distances"
)
HALF_MAX = 65504.0  # the largest finite half-precision value (pgvector's halfvec)
_HALF = struct.Struct("<e")  # a halfvec element: packing rounds to half precision, ties to even
INT_RANGE = {"smallint": (-(2**15), 2**15 - 1), "integer": (-(2**31), 2**31 - 1), "bigint": (-(2**63), 2**63 - 1)}
NAN_POLICIES = ("reject", "null")
INF_POLICIES = ("reject", "keep")  # ±Infinity: refused (JSON cannot carry it as a number), or written as it is
NONFINITE_JSON = ("Infinity", "-Infinity", "NaN")  # how JSON answers carry stored non-finite values


def nonfinite_json(value: float) -> str:
    """The JSON form of a non-finite float: ``"Infinity"``, ``"-Infinity"`` or ``"NaN"``."""
    return "NaN" if value != value else "Infinity" if value > 0 else "-Infinity"


_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


SCALAR = "scalar"
STRING = "string"
TIMESTAMP = "timestamp"
LIST = "list"
EMBEDDING = "embedding"
DEFAULT_STRING_LENGTH = 256
MAX_STRING_LENGTH = 10_485_760  # PostgreSQL's limit for varchar(n)
MAX_DIM = 16_000  # pgvector's limit for vector(n)
STORAGES = ("auto", "vector", "halfvec", "array")
METRICS = ("cosine", "l2", "ip")
INDEXES = ("hnsw",)
LIST_ELEMENTS = ("integer", "bigint", "real", "double precision", "string")


@dataclass(frozen=True)
class FeatureType:
    """A supported column type and how values travel and come back.

    ``kind`` is ``scalar``, ``string``, ``timestamp``, ``list`` or ``embedding``. ``max_length``: a
    string's characters or a list's elements (None: unbounded list); ``element``: a list's element
    type; ``dim``, ``storage``, ``index``, ``metric``: an embedding's (see the module docstring).
    """

    name: str  # canonical PostgreSQL name, as format_type() prints it
    python: type
    exact_in_float8: bool  # can ride in a float8[] without loss
    kind: str = SCALAR
    max_length: int | None = None
    element: FeatureType | None = None
    dim: int | None = None
    storage: str | None = None
    index: str | None = None
    metric: str | None = None
    ef_search: int | None = None  # an indexed embedding's default hnsw.ef_search for nearest (None: the server's)

    def __str__(self) -> str:
        return self.name

    @property
    def rich(self) -> bool:
        """Does not fit a numeric array: travels in a row of its own (strings, lists, embeddings)."""
        return self.kind in (STRING, LIST, EMBEDDING)

    @property
    def float32_elements(self) -> bool:
        """An embedding or a ``list<real>``: its elements are float32 (printed shortest as float32 in JSON)."""
        return self.kind == EMBEDDING or (
            self.kind == LIST and self.element is not None and self.element.name == "real"
        )

    @property
    def spec(self) -> str:
        """How a definition names this type (``real``, ``string``, ``list<integer>``, ``embedding``)."""
        if self.kind == LIST:
            assert self.element is not None
            return f"list<{'double' if self.element.name == 'double precision' else self.element.spec}>"
        if self.kind in (STRING, TIMESTAMP, EMBEDDING):
            return self.kind
        return self.name

    def options(self) -> dict[str, Any]:
        """The definition's options besides ``type`` (what ``to_dict`` writes back)."""
        out: dict[str, Any] = {}
        if self.kind == STRING and self.max_length != DEFAULT_STRING_LENGTH:
            out["max_length"] = self.max_length
        if self.kind == LIST and self.max_length is not None:
            out["max_length"] = self.max_length
        if self.kind == EMBEDDING:
            out["dim"] = self.dim
            if self.storage != "auto":
                out["storage"] = self.storage
            if self.index is not None:
                out["index"] = self.index
            if self.metric is not None:
                out["metric"] = self.metric
            if self.ef_search is not None:
                out["ef_search"] = self.ef_search
        return out

    def sql_names(self) -> tuple[str, ...]:
        """Every ``format_type`` spelling a live column of this type may have (an ``auto`` embedding's
        column is a vector where pgvector was installed when the table was made, else ``real[]``)."""
        if self.kind == EMBEDDING and self.storage == "auto":
            return (f"vector({self.dim})", "real[]")
        return (self.name,)

    def storage_name(self, has_vector: bool) -> str:
        """The SQL type a new column of this type gets (``has_vector``: pgvector can be used)."""
        if self.kind == EMBEDDING and self.storage == "auto":
            return f"vector({self.dim})" if has_vector else "real[]"
        return self.name

    @property
    def needs_vector(self) -> bool:
        """Its column (or its index) needs the pgvector extension."""
        return self.kind == EMBEDDING and (self.storage in ("vector", "halfvec") or self.index is not None)


TYPES: dict[str, FeatureType] = {
    "real": FeatureType("real", float, True),
    "double precision": FeatureType("double precision", float, True),
    "smallint": FeatureType("smallint", int, True),
    "integer": FeatureType("integer", int, True),
    "bigint": FeatureType("bigint", int, False),
    "boolean": FeatureType("boolean", bool, True),
}

# The type of ``updated_at`` (event time: definitions/eventtime.py) and of ``timestamp`` features: it
# travels as int8 epoch microseconds and comes back as an aware UTC datetime.
EVENT_TIME = FeatureType("timestamp with time zone", datetime, False, TIMESTAMP)

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
    "timestamp": "timestamp with time zone",
    "timestamptz": "timestamp with time zone",
}

# Wide types and why they do not belong in a hot table; the doctor reuses this advice.
WIDE_TYPES = {
    "text": "unbounded; declare string (character varying(max_length), 256 by default), or encode categories as smallint codes",
    "varchar": "unbounded; declare string (character varying(max_length), 256 by default), or encode categories as smallint codes",
    "character varying": "unbounded; declare string (character varying(max_length), 256 by default), or encode categories as smallint codes",
    "json": "parsed on every read and variable-length; one column per feature, as real/integer",
    "jsonb": "variable-length, often TOASTed; one column per feature, as real/integer",
    "numeric": "variable-length arbitrary precision, slow to decode; use real or double precision",
    "timestamp without time zone": "an instant without its zone; declare timestamp (with time zone)",
    "bytea": "variable-length; only the entity key should be bytea",
}
# Advice on the rich types, for the doctor's row-width check (a declared rich feature is allowed).
RICH_ADVICE = {
    STRING: "variable-length, bounded by max_length; a category read by every request is cheaper as a smallint code",
    LIST: "variable-length; keep max_length small on hot tables",
    EMBEDDING: "4 bytes per dimension (2 with halfvec); a wide embedding is best alone in its table",
}
_LIST_FORM = re.compile(r"^list\s*<\s*(.+?)\s*>$|^(.+?)\s*\[\]$")
_EMBEDDING_FORM = re.compile(r"^(?:embedding|vector)\s*\(\s*(\d+)\s*\)$")
TYPE_OPTIONS = ("max_length", "dim", "storage", "index", "metric", "ef_search")


VALID_TYPES = ", ".join([*TYPES, "timestamp", "string", "list<integer|bigint|real|double|string>", "embedding"])


def _positive(what: str, value: Any, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise DefinitionError(f"{what} must be an integer from 1 to {limit}, got {value!r}")
    return value


def feature_type(name: Any, **options: Any) -> FeatureType:
    """Resolve a type name (canonical, alias or rich form) with its options (``max_length``, ``dim``,
    ``storage``, ``index``, ``metric``). Raises DefinitionError for wide or unknown types and for
    options the type does not take, naming what is valid."""
    if isinstance(name, FeatureType):
        if options:
            raise DefinitionError(f"type {name.spec!r} takes no options here (got {', '.join(options)})")
        return name
    key = " ".join(str(name).strip().lower().split())
    key = ALIASES.get(key, key)
    unknown = set(options) - set(TYPE_OPTIONS)
    if unknown:
        raise DefinitionError(f"unknown type option(s) {', '.join(sorted(unknown))} (valid: {', '.join(TYPE_OPTIONS)})")

    def takes(*allowed: str) -> None:
        extra = [o for o in options if o not in allowed]
        if extra:
            valid = ", ".join(allowed) or "none"
            raise DefinitionError(f"type {name!r} takes no option {', '.join(extra)} (valid: {valid})")

    if key in TYPES or key == EVENT_TIME.name:
        takes()
        return TYPES.get(key, EVENT_TIME)
    if key == "string" or re.fullmatch(r"(varchar|character varying)\(\d+\)", key):
        takes("max_length")
        bound = re.search(r"\((\d+)\)$", key)
        length = _positive(
            "string max_length",
            options.get("max_length", int(bound[1]) if bound else DEFAULT_STRING_LENGTH),
            MAX_STRING_LENGTH,
        )
        return FeatureType(f"character varying({length})", str, False, STRING, max_length=length)
    if m := _LIST_FORM.match(key):
        takes("max_length")
        inner = m[1] or m[2]
        element = feature_type(inner)
        if element.spec not in LIST_ELEMENTS and element.name not in LIST_ELEMENTS:
            raise DefinitionError(
                f"type {name!r}: a list's elements must be integer, bigint, real, double or string (got {inner!r})"
            )
        bound = options.get("max_length")
        elements = None if bound is None else _positive("list max_length", bound, 1_000_000)
        return FeatureType(f"{element.name}[]", list, False, LIST, max_length=elements, element=element)
    if key == "embedding" or (m := _EMBEDDING_FORM.match(key)):
        takes("dim", "storage", "index", "metric", "ef_search")
        dim = options.get("dim", int(m[1]) if key != "embedding" and m else None)
        if dim is None:
            raise DefinitionError(
                f'type {name!r}: an embedding needs its dimension: {{ type = "embedding", dim = 384 }}'
            )
        dim = _positive("embedding dim", dim, MAX_DIM)
        storage = options.get("storage", "auto")
        if storage not in STORAGES:
            raise DefinitionError(f"embedding storage {storage!r} is not one of {', '.join(STORAGES)}")
        index = options.get("index")
        if index is not None and index not in INDEXES:
            raise DefinitionError(f"embedding index {index!r} is not one of {', '.join(INDEXES)}")
        metric = options.get("metric")
        if metric is not None and metric not in METRICS:
            raise DefinitionError(f"embedding metric {metric!r} is not one of {', '.join(METRICS)}")
        if index is not None and metric is None:
            metric = "l2"
        ef_search = options.get("ef_search")
        if ef_search is not None:
            if index is None:
                raise DefinitionError(
                    'embedding ef_search is the default of an index\'s search: declare index = "hnsw"'
                )
            ef_search = _positive("embedding ef_search", ef_search, 1000)
        if index is not None and storage == "array":
            raise DefinitionError('an embedding index needs pgvector: storage = "array" cannot have one')
        sql_name = {
            "auto": f"vector({dim})",
            "vector": f"vector({dim})",
            "halfvec": f"halfvec({dim})",
            "array": "real[]",
        }
        return FeatureType(
            sql_name[storage],
            list,
            False,
            EMBEDDING,
            dim=dim,
            storage=storage,
            index=index,
            metric=metric,
            ef_search=ef_search,
        )
    if key in WIDE_TYPES:
        raise DefinitionError(
            f"type {name!r} is not allowed in a feature table: {WIDE_TYPES[key]} (valid: {VALID_TYPES})"
        )
    raise DefinitionError(f"unknown type {name!r} (valid: {VALID_TYPES})")


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
        try:
            return parse_event_time(where, value)
        except FeatureValueError as exc:  # a timestamp feature is not the row's event time: say which it is
            if where.endswith(".updated_at"):
                raise
            raise FeatureValueError(str(exc).replace(" (event time): ", " (timestamp): ", 1)) from None
    if type_.kind == STRING:
        return _check_string(where, type_, value)
    if type_.kind in (LIST, EMBEDDING):
        return _check_list(where, type_, value)

    def invalid(why: str) -> FeatureValueError:
        return FeatureValueError(f"{where} ({kind}): {value!r} {why}")

    if kind == "boolean":
        if isinstance(value, bool) or (type(value).__module__ == "numpy" and type(value).__name__ in ("bool_", "bool")):
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
        if kind in ("real", "double precision") and abs(number) > 2**1024:  # float() would overflow
            raise invalid(f"is out of range for {kind}")
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
            raise invalid(f"is {REAL_UNDERFLOW}")
        return number
    if isinstance(number, float):
        if not number.is_integer():
            raise invalid("is not an integer")
        number = int(number)
    lo, hi = INT_RANGE[kind]
    if not lo <= number <= hi:
        raise invalid(f"is out of range ({lo}..{hi})")
    return number


def _check_string(where: str, type_: FeatureType, value: Any) -> str:
    if not isinstance(value, str):
        raise FeatureValueError(f"{where} (string): {value!r} is not a string")
    if len(value) > (type_.max_length or 0):
        raise FeatureValueError(
            f"{where} (string): a value of {len(value)} characters is longer than max_length {type_.max_length} "
            f"(refused, never truncated; raise max_length in the definition): {value[:40]!r}"
            + ("..." if len(value) > 40 else "")
        )
    if "\x00" in value:
        raise FeatureValueError(
            f"{where} (string): {value[:40]!r} contains a NUL character, which PostgreSQL text cannot hold"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise FeatureValueError(
            f"{where} (string): {value[:40]!r} is not valid Unicode (a lone surrogate), which UTF-8 cannot hold"
        ) from None
    return value


def _check_list(where: str, type_: FeatureType, value: Any) -> list[Any]:
    tolist = getattr(value, "tolist", None)  # a numpy array (or an Arrow scalar's list)
    if callable(tolist) and not isinstance(value, (list, tuple)):
        value = tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise FeatureValueError(f"{where} ({type_.spec}): {value!r} is not a list")
    if type_.kind == EMBEDDING:
        if len(value) != type_.dim:
            raise FeatureValueError(f"{where} (embedding): {len(value)} values where the embedding has dim {type_.dim}")
        element = TYPES["real"]
        out = []
        for i, x in enumerate(value):
            # An embedding element is never NULL, NaN or infinite: pgvector refuses them and no metric
            # can rank a vector holding one.
            if x is None or (isinstance(x, float) and not math.isfinite(x)):
                raise FeatureValueError(
                    f"{where} (embedding): element {i} is {x!r}; an embedding's values must be finite numbers"
                )
            checked = check_value(f"{where}[{i}]", element, x)
            if type_.storage == "halfvec":
                try:
                    checked = _HALF.unpack(_HALF.pack(checked))[0]
                except OverflowError:  # rounds past the largest half: what a load refuses too
                    raise FeatureValueError(
                        f"{where} (embedding): element {i} is {x!r}, out of range for halfvec (at most ±{HALF_MAX:g})"
                    ) from None
            out.append(checked)
        if type_.storage != "halfvec":
            out = as_reals(out)
        # pgvector computes distances in float32 (of the values stored, rounded above): a vector whose squared
        # norm overflows (or, not all zero, underflows) has no distance it could rank, so it is refused rather
        # than found in the wrong place.
        squares = math.fsum(v * v for v in out)
        if squares >= FLOAT32_MAX:
            raise FeatureValueError(
                f"{where} (embedding): its squared norm {squares:.3g} {NORM_OVERFLOWS}: scale it down"
            )
        if 0 < squares < FLOAT32_MIN_NORMAL:
            raise FeatureValueError(
                f"{where} (embedding): its squared norm {squares:.3g} {NORM_UNDERFLOWS}: scale it up"
            )
        return out
    if type_.max_length is not None and len(value) > type_.max_length:
        raise FeatureValueError(f"{where} ({type_.spec}): {len(value)} elements where max_length is {type_.max_length}")
    assert type_.element is not None
    element = type_.element
    checked = []
    for i, x in enumerate(value):
        if x is None:
            raise FeatureValueError(f"{where} ({type_.spec}): element {i} is None; a list's elements may not be NULL")
        # Non-finite elements are refused whatever the policy: JSON has no number for them, and a list
        # printed with a string among its numbers would not read back as the list stored.
        checked.append(check_value(f"{where}[{i}]", element, x))
    return as_reals(checked) if element.name == "real" else checked


def as_reals(values: list[Any]) -> list[float]:
    """Checked ``real`` values rounded to float32 (ties to even, as PostgreSQL casts a double to real and as a
    load rounds them): a list's elements travel as decimal text, which PostgreSQL would round from the
    decimal instead, the other way for a double halfway between two reals."""
    return array("f", values).tolist()
