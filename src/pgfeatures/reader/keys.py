"""Request keys bound to statement parameters: one parameter per entity (pure, on the hot path).

A request passes one key per entity it reads, ``{"user": 42, "merchant": "9f..."}``, or a bare key
when it reads one entity only. A batch passes a list of those (one per row), or ``{entity: [keys]}``.
Every key is checked by its entity (``Entity.parse``) before any I/O, and only once per request: a
front end binds the request's keys (``KeyBinder.one`` / ``many``, or ``bind`` with its stricter
rule) and hands the bound parameters to the store (``read_bound`` / ``read_batch_bound``), which
does not parse them again (hashing a key twice would not even give the same parameter).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..definitions import Entity, parse_hash_key
from ..errors import KeyFormatError, UnknownEntityError

EntityKeys = Mapping[str, Any]


def parse_key(key: Any) -> bytes:
    """A 32-byte key of the default entity, from bytes or 64 hex characters. Raises KeyFormatError."""
    return parse_hash_key(key)


def parse_keys(keys: Any) -> list[bytes]:
    """32-byte keys of the default entity (see ``parse_key``); errors name the position."""
    if isinstance(keys, (str, bytes)):
        raise KeyFormatError("keys must be a sequence of keys, not a single key")
    out = []
    for i, key in enumerate(keys):
        try:
            out.append(parse_hash_key(key))
        except KeyFormatError as exc:
            raise KeyFormatError(f"keys[{i}]: {exc}") from None
    return out


class KeyBinder:
    """Turns a request's keys into the statement's parameters, for one compiled reader.

    ``valid``: every entity name the registry knows (a key for an unknown entity is an error, a key
    for a known entity the request does not read is ignored); ``needs``: which tables need each
    entity, for the error when a key is missing.
    """

    __slots__ = ("entities", "names", "valid", "needs", "one", "_single", "plain")

    def __init__(self, entities: Sequence[Entity], valid: Sequence[str], needs: Mapping[str, Sequence[str]]):
        self.entities = tuple(entities)
        self.names = tuple(e.name for e in self.entities)
        self.valid = tuple(valid)
        self.needs = needs
        self._single = self.entities[0] if len(self.entities) == 1 else None
        self.one: Callable[[Any], tuple[Any, ...]] = self._one_single if self._single is not None else self._one_many
        # One entity of plain 32-byte keys (not hashed): a front end may take its keys as hex in one pass.
        single = self._single
        self.plain = single is not None and single.key_type == "bytea32" and single.hash is None

    def _one_single(self, key: Any) -> tuple[Any, ...]:
        entity = self._single
        assert entity is not None
        if isinstance(key, Mapping):
            return (entity.parse(self._pick(key, entity)),)
        return (entity.parse(key),)

    def _one_many(self, key: Any) -> tuple[Any, ...]:
        if not isinstance(key, Mapping):
            raise KeyFormatError(
                f"this request reads entities {', '.join(self.names)}: pass one key per entity, "
                f"e.g. {{{', '.join(repr(n) + ': ...' for n in self.names)}}}"
            )
        return tuple(e.parse(self._pick(key, e)) for e in self.entities)

    def _pick(self, keys: Mapping[str, Any], entity: Entity) -> Any:
        try:
            return keys[entity.name]
        except KeyError:
            pass
        unknown = [k for k in keys if k not in self.valid]
        if unknown:
            raise KeyFormatError(
                f"unknown entit{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))} "
                f"in the keys; valid entities: {', '.join(self.valid)}"
            )
        tables = ", ".join(self.needs.get(entity.name, ()))
        raise KeyFormatError(
            f"no key for entity {entity.name!r}, which table(s) {tables} need; the request has keys "
            f"for: {', '.join(map(str, keys)) or 'nothing'}"
        )

    def bind(self, keys: Mapping[str, Any], entities: Mapping[str, Entity], where: str = "key") -> tuple[Any, ...]:
        """The parameters of one request given as ``{entity: key}``, under the stricter rule of a wire
        front end: every entity named must be one of ``entities`` (the registry's) and its key one it
        takes, even an entity this request does not read. Each key is parsed (and hashed) once.
        Raises UnknownEntityError, KeyFormatError (prefixed with ``where``)."""
        if not keys:
            raise KeyFormatError(
                f"{where}: an object of entity keys must name at least one entity (entities: {', '.join(entities)})"
            )
        parsed: dict[str, Any] = {}
        for name, value in keys.items():
            entity = entities.get(name)
            if entity is None:
                raise UnknownEntityError([name], entities)
            try:
                parsed[name] = entity.parse(value)
            except KeyFormatError as exc:
                raise KeyFormatError(f"{where}: {exc}") from None
        try:
            return tuple(parsed[name] for name in self.names)
        except KeyError:
            pass
        missing = next(e for e in self.entities if e.name not in parsed)
        try:
            self._pick(keys, missing)
        except KeyFormatError as exc:
            raise KeyFormatError(f"{where}: {exc}") from None
        raise AssertionError("unreachable: an entity key is missing")  # pragma: no cover

    def check_unknown(self, keys: Mapping[str, Any]) -> None:
        unknown = [k for k in keys if k not in self.valid]
        if unknown:
            raise KeyFormatError(
                f"unknown entit{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))} "
                f"in the keys; valid entities: {', '.join(self.valid)}"
            )

    def many(self, keys: Any) -> tuple[list[Any], ...]:
        """One array per entity, for a batch. ``keys``: a sequence of row keys, or ``{entity: [keys]}``."""
        if isinstance(keys, (str, bytes)):
            raise KeyFormatError("keys must be a sequence of keys, not a single key")
        if isinstance(keys, Mapping):
            self.check_unknown(keys)
            columns = []
            lengths = set()
            for e in self.entities:
                values = self._pick(keys, e)
                if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
                    raise KeyFormatError(f"keys[{e.name!r}] must be a list of {e.name} keys")
                columns.append(self._column(e, values, f"keys[{e.name!r}]"))
                lengths.add(len(values))
            if len(lengths) > 1:
                raise KeyFormatError(
                    f"every entity needs the same number of keys, got {', '.join(f'{e.name}: {len(c)}' for e, c in zip(self.entities, columns))}"
                )
            return tuple(columns)
        arrays: tuple[list[Any], ...] = tuple([] for _ in self.entities)
        for i, key in enumerate(keys):
            try:
                for array, value in zip(arrays, self.one(key)):
                    array.append(value)
            except KeyFormatError as exc:
                raise KeyFormatError(f"keys[{i}]: {exc}") from None
        return arrays

    @staticmethod
    def _column(entity: Entity, values: Sequence[Any], where: str) -> list[Any]:
        out = []
        parse = entity.parse
        for i, v in enumerate(values):
            try:
                out.append(parse(v))
            except KeyFormatError as exc:
                raise KeyFormatError(f"{where}[{i}]: {exc}") from None
        return out
