"""Request bodies checked before any I/O (pure): JSON, fields, keys, selections, push rows, output.

Keys. A request's ``"key"`` is a bare key (when what it reads has one entity) or an object of
entity keys, ``{"user": 42, "merchant": "m-1"}``; a batch's ``"keys"`` is a list of those. Each
key is checked by its entity (``Entity.parse``, the store's own rule and error), every entity
named in an object is checked, even one the request does not read, and a name that is no entity
is an error: bad input never passes silently. Each key is parsed (and hashed) once: bound here to
the reader's parameters (``bind_key`` / ``bind_keys``), which the service hands to the store's
``read_bound`` / ``read_batch_bound``.

Numbers. JSON does not tell ``5.0`` from ``5``, and OpenAPI's ``integer`` matches both: a key (and
a pushed value of an integer feature) written as an integral float is taken as the integer below
±2**53, where a float holds every integer; from there on, it may not be the number the client
wrote (2**53 + 1 reads as 2**53), so it is refused with a request to send an integer literal (or,
for keys, the text).

The fast path: a read of the default kind of entity (32-byte keys, not hashed) with bare 64-hex
keys, the only form before entities existed. A single key is matched by one regex; a batch's keys
are joined and checked in C in one pass, then held as one bytes object (``PackedKeys``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from ..definitions import INT_RANGE, KEY_LENGTH, UPDATED_AT, Entity, Registry
from ..errors import FeatureValueError, KeyFormatError, UnknownEntityError
from ..reader import FeaturesArg, KeyBinder
from .errors import RequestError

_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
_HEX_KEYS = re.compile(r"[0-9a-fA-F]*")
SINGLE_FIELDS = ("key", "tables", "features")
BATCH_FIELDS = ("keys", "tables", "features")
SERVICE_FIELDS = ("key", "features", "output", "context")
SERVICE_BATCH_FIELDS = ("keys", "features", "output", "context")
PUSH_FIELDS = ("rows", "key", "features", "overwrite_newer")
PUSH_ROW_FIELDS = ("key", "features")
OUTPUTS = ("dict", "vector")
OCTET_STREAM = "application/octet-stream"


def parse_json(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object. Raises RequestError."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestError("invalid_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError("invalid_request", f"the body must be a JSON object, got {json_type(body)}")
    return body


def json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def check_fields(body: Mapping[str, Any], allowed: Sequence[str], required: str | None) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise RequestError(
            "invalid_request", f"unknown field(s): {', '.join(unknown)}; valid fields: {', '.join(allowed)}"
        )
    if required is not None and required not in body:
        raise RequestError("invalid_request", f"missing field {required!r}; valid fields: {', '.join(allowed)}")


# -- keys -----------------------------------------------------------------------------------------


def parse_hex_key(value: Any, where: str = "key") -> bytes:
    """A key as 64 hex characters (nothing else: no whitespace, no 0x). Raises KeyFormatError."""
    if not isinstance(value, str):
        raise KeyFormatError(f"{where}: a key must be a string of 64 hex characters, got {json_type(value)}")
    if not _HEX_KEY.fullmatch(value):
        if len(value) != 64:
            raise KeyFormatError(f"{where}: a key must be 64 hex characters, got {len(value)} characters")
        raise KeyFormatError(f"{where}: a key must be 64 hex characters (0-9, a-f), got {value!r}")
    return bytes.fromhex(value)


class PackedKeys(Sequence[bytes]):
    """Keys held as one bytes object of 32-byte keys; slicing gives the keys of one chunk."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes):
        self.raw = raw

    def __len__(self) -> int:
        return len(self.raw) // KEY_LENGTH

    def __getitem__(self, index: Any) -> Any:
        raw, n = self.raw, KEY_LENGTH
        if isinstance(index, slice):
            return [raw[i * n : (i + 1) * n] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return raw[index * n : (index + 1) * n]


def parse_hex_keys(texts: list[Any]) -> PackedKeys:
    """Many keys as 64 hex characters each, checked in C in one pass over the joined text;
    on any failure the keys are checked one by one so the error names the first bad one
    (``keys[i]: ...``). Raises KeyFormatError."""
    try:
        joined = "".join(texts)
    except TypeError:
        joined = ""  # a non-string: found below
    if (
        len(joined) == 2 * KEY_LENGTH * len(texts)
        and _HEX_KEYS.fullmatch(joined)
        and all(len(t) == 2 * KEY_LENGTH for t in texts)
    ):
        return PackedKeys(bytes.fromhex(joined))
    for i, text in enumerate(texts):
        parse_hex_key(text, f"keys[{i}]")
    raise AssertionError("unreachable: the joined keys failed but every key passed")  # pragma: no cover


EXACT_FLOAT = 2**53  # floats hold every integer below this magnitude; 2**53 itself is also 2**53 + 1 rounded


def json_key(value: Any, where: str, entity: str | None = None) -> Any:
    """A key as sent, with integral floats (``5.0``) as the integers they are, in an object of entity
    keys too. Raises KeyFormatError for an integral float beyond ±2**53 (not exact), naming the entity
    (``entity``: the one a bare key is for, when the request reads one)."""
    if type(value) is float:
        return _exact_integer(value, where, entity) if value.is_integer() else value
    if isinstance(value, dict) and any(type(v) is float for v in value.values()):
        return {name: json_key(v, f"{where}.{name}", name) for name, v in value.items()}
    return value


def _exact_integer(value: float, where: str, entity: str | None) -> int:
    if abs(value) >= EXACT_FLOAT:
        whose = f"{entity} key " if entity else ""
        raise KeyFormatError(
            f"{where}: {whose}{value!r} is a number beyond ±2**53 written with a fraction or exponent, "
            "which JSON does not carry exactly: send the key as an integer literal, or as text"
        )
    return int(value)


def _check_entity_keys(registry: Registry, keys: Mapping[str, Any], where: str) -> None:
    """Every entity named in a key object exists and its key is one it takes (a push's key)."""
    if not keys:
        raise KeyFormatError(
            f"{where}: an object of entity keys must name at least one entity "
            f"(entities: {', '.join(registry.entities)})"
        )
    for name, value in keys.items():
        entity: Entity | None = registry.entities.get(name)
        if entity is None:
            raise UnknownEntityError([name], registry.entities)
        try:
            entity.parse(value)
        except KeyFormatError as exc:
            raise KeyFormatError(f"{where}: {exc}") from None


Bound = tuple[Any, ...]
"""One request's statement parameters: one per entity its reader reads (``KeyBinder``)."""


def bind_key(value: Any, binder: KeyBinder, registry: Registry, where: str = "key") -> Bound:
    """One request's key bound to ``binder``'s parameters, each key parsed (and hashed) once: a 64-hex
    key of the fast path in one regex, an object of entity keys by ``KeyBinder.bind`` (every entity
    named checked), else ``KeyBinder.one`` (integral floats as integers first: ``json_key``).
    Raises KeyFormatError / UnknownEntityError saying what each entity takes (or which key is missing)."""
    entities = binder.entities
    value = json_key(value, where, entities[0].name if len(entities) == 1 else None)
    if isinstance(value, Mapping):
        return binder.bind(value, registry.entities, where)
    if binder.plain:
        return (parse_hex_key(value, where),)
    try:
        return binder.one(value)
    except KeyFormatError as exc:
        raise KeyFormatError(f"{where}: {exc}") from None


def bind_keys(values: Any, binder: KeyBinder, registry: Registry, max_keys: int) -> tuple[Sequence[Any], ...]:
    """A batch's keys (``"keys"``: a list of keys as ``bind_key`` takes them) bound to one array per
    entity, in order: PackedKeys on the fast path (64-hex keys, one C pass), else every key bound once
    (``keys[i]: ...``). Raises RequestError (not a list, too many), KeyFormatError, UnknownEntityError."""
    if not isinstance(values, list):
        raise RequestError("invalid_request", f"keys must be an array of keys, got {json_type(values)}")
    if len(values) > max_keys:
        raise RequestError(
            "too_many_keys",
            f"{len(values)} keys in one request; the limit is {max_keys}: send fewer keys per request, or raise "
            "it with --max-batch-keys or PGFEATURES_MAX_BATCH_KEYS (max_batch_keys in the config file)",
        )
    if binder.plain:
        try:
            "".join(values)
        except TypeError:
            pass  # not all strings: some are objects of entity keys (or wrong), checked one by one
        else:
            return (parse_hex_keys(values),)
    arrays: tuple[list[Any], ...] = tuple([] for _ in binder.entities)
    for i, value in enumerate(values):
        for array, param in zip(arrays, bind_key(value, binder, registry, f"keys[{i}]")):
            array.append(param)
    return arrays


# -- selections and options -----------------------------------------------------------------------


def _names(value: Any, field: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RequestError("invalid_request", f"{field} must be an array of strings, got {json_type(value)}")
    if not value:
        raise RequestError("invalid_request", f"{field} must not be empty (omit it to read all)")
    return value


def parse_features(body: Mapping[str, Any]) -> FeaturesArg:
    """``features``: ``{table: [feature, ...]}`` or ``["table.feature", ...]``, checked for shape (names
    are checked by the store: UnknownTableError, UnknownFeatureError, ...)."""
    features = body.get("features")
    if features is None or isinstance(features, list):
        return features if features is None else _names(features, "features")
    if not isinstance(features, dict):
        raise RequestError(
            "invalid_request",
            f'features must be an object {{table: [feature, ...]}} or an array ["table.feature", ...], got {json_type(features)}',
        )
    if not features:
        raise RequestError("invalid_request", "features must name at least one table (omit it to read all)")
    return {table: _names(names, f"features.{table}") for table, names in features.items()}


def parse_selection(body: Mapping[str, Any]) -> tuple[list[str] | None, FeaturesArg]:
    """``tables`` and ``features`` checked for shape."""
    tables = body.get("tables")
    if tables is not None:
        tables = _names(tables, "tables")
    return tables, parse_features(body)


def _accepted(accept: str) -> list[tuple[float, int, str]]:
    out = []
    for i, part in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for p in params:
            if p.lower().startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        out.append((q, -i, media.lower()))
    return out


def wants_octets(accept: str | None) -> bool:
    """Whether the Accept header prefers ``application/octet-stream`` to JSON (JSON on a tie, a
    wildcard or no header)."""
    if not accept or OCTET_STREAM not in accept.lower():
        return False
    best = {"octets": (-1.0, 0), "json": (-1.0, 0)}
    for q, order, media in _accepted(accept):
        kind = (
            "octets"
            if media == OCTET_STREAM
            else "json"
            if media in ("application/json", "application/*", "*/*")
            else None
        )
        if kind is not None and q > 0 and (q, order) > best[kind]:
            best[kind] = (q, order)
    return best["octets"] > best["json"]


def parse_output(body: Mapping[str, Any], accept: str | None) -> tuple[bool, bool]:
    """``(vector, octets)`` from ``"output"`` (``dict``, the default, or ``vector``) and the Accept header:
    ``Accept: application/octet-stream`` answers the vector as raw numbers (``output`` may be left out).
    Raises RequestError for another output, or octets asked with ``"output": "dict"``."""
    output = body.get("output")
    if output is not None and output not in OUTPUTS:
        raise RequestError("invalid_request", f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    octets = wants_octets(accept)
    if octets and output == "dict":
        raise RequestError(
            "not_acceptable",
            "Accept: application/octet-stream carries the vector only: drop "
            '"output": "dict" (or send "output": "vector"), or accept '
            "application/json",
            406,
        )
    return octets or output == "vector", octets


# -- push ---------------------------------------------------------------------------------------


def _push_key(value: Any, entity: Entity, registry: Registry, where: str) -> Any:
    """A pushed row's key: the table's entity key, bare or as ``{entity: key}`` (other entities named
    must exist and take their keys, and are otherwise ignored)."""
    value = json_key(value, where, entity.name)
    if isinstance(value, Mapping):
        _check_entity_keys(registry, value, where)
        if entity.name not in value:
            raise KeyFormatError(
                f"{where}: no key for entity {entity.name!r}, which this table is keyed by; "
                f"the key has: {', '.join(map(str, value))}"
            )
        value = value[entity.name]
    try:
        entity.parse(value)
    except KeyFormatError as exc:
        raise KeyFormatError(f"{where}: {exc}") from None
    return value


def _push_features(value: Any, where: str, integers: frozenset[str]) -> Mapping[str, Any]:
    """A row's features; values of the ``integers`` features written as floats beyond ±2**53 are refused (not exact)."""
    if not isinstance(value, dict):
        raise RequestError(
            "invalid_request", f"{where}features must be an object {{feature: value}}, got {json_type(value)}"
        )
    if not value:
        raise RequestError("invalid_request", f"{where}features must set at least one feature")
    for name, v in value.items():
        if type(v) is float and abs(v) >= EXACT_FLOAT and name in integers:
            raise FeatureValueError(
                f"{where}features.{name}: {v!r} is a number beyond ±2**53 written with a fraction "
                "or exponent, which JSON does not carry exactly: send it as an integer literal"
            )
    return value


def parse_push(
    body: Mapping[str, Any], table: str, registry: Registry, max_rows: int
) -> tuple[list[tuple[Any, Mapping[str, Any]]], bool]:
    """``([(key, features), ...], overwrite_newer)`` of a push to ``table``: ``{"rows": [{"key",
    "features"}, ...]}`` or one ``{"key", "features"}``, and ``"overwrite_newer"`` (default false).
    Keys are checked here (``rows[i]: ...``); feature names and values by the store before any I/O.
    Raises UnknownTableError, RequestError, KeyFormatError, UnknownEntityError."""
    entity = registry.table(table).entity
    integers = frozenset(f.name for f in registry.table(table).features if f.type.name in INT_RANGE) | {UPDATED_AT}
    check_fields(body, PUSH_FIELDS, None)
    overwrite = body.get("overwrite_newer", False)
    if not isinstance(overwrite, bool):
        raise RequestError("invalid_request", f"overwrite_newer must be true or false, got {json_type(overwrite)}")
    if "rows" in body:
        if "key" in body or "features" in body:
            raise RequestError(
                "invalid_request",
                'send either "rows": [{"key", "features"}, ...] or one "key" with its "features", not both',
            )
        rows = body["rows"]
        if not isinstance(rows, list):
            raise RequestError(
                "invalid_request", f'rows must be an array of {{"key", "features"}} objects, got {json_type(rows)}'
            )
        if len(rows) > max_rows:
            raise RequestError(
                "too_many_rows",
                f"{len(rows)} rows in one request; the limit is {max_rows}: send fewer rows per request, or raise it "
                "with --max-batch-keys or PGFEATURES_MAX_BATCH_KEYS (max_batch_keys in the config file)",
            )
        out = []
        for i, row in enumerate(rows):
            where = f"rows[{i}]"
            if not isinstance(row, dict):
                raise RequestError(
                    "invalid_request", f'{where} must be an object {{"key", "features"}}, got {json_type(row)}'
                )
            unknown = sorted(set(row) - set(PUSH_ROW_FIELDS))
            missing = [f for f in PUSH_ROW_FIELDS if f not in row]
            if unknown or missing:
                raise RequestError(
                    "invalid_request",
                    f"{where}: "
                    + "; ".join(
                        ([f"unknown field(s): {', '.join(unknown)}"] if unknown else [])
                        + ([f"missing field(s): {', '.join(missing)}"] if missing else [])
                    )
                    + "; valid fields: key, features",
                )
            out.append(
                (_push_key(row["key"], entity, registry, where), _push_features(row["features"], where + ".", integers))
            )
        return out, overwrite
    missing = [f for f in PUSH_ROW_FIELDS if f not in body]
    if missing:
        raise RequestError(
            "invalid_request",
            f'missing field(s) {", ".join(missing)}: send "rows": [{{"key", '
            '"features"}, ...], or one "key" with its "features"',
        )
    return [
        (_push_key(body["key"], entity, registry, "key"), _push_features(body["features"], "", integers))
    ], overwrite
