"""Decoding fetched rows into results: values, defaults and each table's status (pure).

Every table of a result has a status:

- ``present``: the key has a row, fresh enough;
- ``missing``: the key has no row in the table;
- ``expired``: it has one, older than the table's (or service's) ttl, so it is not served.

The statement itself decides expiry on the server (see compile.py): a missing row comes back as
NULL, an expired one as an empty array (or a false freshness flag), so no client clock is
involved. A table that is not present maps to None, or, when some of its requested features have
defaults, to a dict of the defaults (None for those without one); a NULL value of a present row
also takes its feature's default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..definitions import Feature
from .records import record_parser
from .transport import RECORD, Part, converter

PRESENT = "present"
MISSING = "missing"
EXPIRED = "expired"
STATUSES = (PRESENT, MISSING, EXPIRED)

Row = tuple[Any, ...]
TableValues = dict[str, Any] | None


class FeatureResult(dict[str, TableValues]):
    """``{table: {feature: value} | None}``, with ``status``: ``{table: "present" | "missing" | "expired"}``.

    A plain dict in every other respect: it compares equal to one and prints as one.
    """

    __slots__ = ("_status", "_arrays")
    _status: dict[str, str] | None
    _arrays: Row | None

    @property
    def status(self) -> dict[str, str]:
        try:
            status = self._status
        except AttributeError:
            status = None
        if status is None:
            arrays = getattr(self, "_arrays", None)
            if arrays is not None:  # built on demand from the fetched arrays: NULL missing, empty expired
                status = {t: MISSING if a is None else EXPIRED if not a else PRESENT for t, a in zip(self, arrays)}
            else:  # no ttl and no defaults: a table is missing exactly when it is None
                status = {t: MISSING if v is None else PRESENT for t, v in self.items()}
            self._status = status
        return status


Features = FeatureResult


def result(values: dict[str, Any], status: dict[str, str] | None = None) -> FeatureResult:
    out = FeatureResult(values)
    out._status = status
    return out


class TableDecoder:
    """Turns one table's fetched values (arrays per part, or raw columns) into ``(status, values)``."""

    __slots__ = ("names", "order", "converters", "simple", "plain", "defaults", "has_defaults", "absent", "parse")

    def __init__(self, parts: tuple[Part, ...], asked: tuple[Feature, ...]):
        flat = [f for p in parts for f in p.features]
        self.names = tuple(f.name for f in asked)
        position = {f.name: i for i, f in enumerate(flat)}
        self.order = tuple(position[n] for n in self.names)
        array_type = {f.name: p.array_type for p in parts for f in p.features}
        # A rich table's row value, parsed with its embeddings decoded (records.py), whether the read
        # connection handed it over as bytes or psycopg parsed it.
        self.parse = record_parser(parts[0].features) if parts[0].array_type == RECORD else None
        self.converters = tuple(
            None if self.parse is not None and f.type.kind == "embedding" else converter(f, array_type[f.name])
            for f in asked
        )
        self.defaults = tuple(f.default for f in asked)
        self.has_defaults = any(d is not None for d in self.defaults)
        self.absent = dict(zip(self.names, self.defaults)) if self.has_defaults else None
        # plain: the values arrive in the order asked and need no conversion (only defaults, if any)
        self.plain = len(parts) == 1 and self.order == tuple(range(len(flat))) and not any(self.converters)
        self.simple = self.plain and not self.has_defaults and self.parse is None

    def not_present(self) -> TableValues:
        """The value of a missing or expired table: its defaults, or None."""
        return dict(self.absent) if self.absent is not None else None

    def values(self, flat: Sequence[Any]) -> dict[str, Any]:
        if self.simple or (self.plain and None not in flat):  # no NULL to default: one C-level zip
            return dict(zip(self.names, flat))
        out = {}
        for name, pos, conv, default in zip(self.names, self.order, self.converters, self.defaults):
            v = flat[pos]
            if v is None:
                v = default
            elif conv is not None:
                v = conv(v)
            out[name] = v
        return out

    def from_array(self, values: Sequence[Any] | None) -> tuple[str, TableValues]:
        """A single-part table's array: None (no row), empty (expired) or the values (a rich table's
        row value may come as bytes: parsed here)."""
        if values is None:
            return MISSING, self.not_present()
        if self.parse is not None:
            values = self.parse(values)
        if not values:
            return EXPIRED, self.not_present()
        return PRESENT, self.values(values)

    def from_parts(self, arrays: Sequence[Sequence[Any] | None]) -> tuple[str, TableValues]:
        first = arrays[0]
        if first is None:
            return MISSING, self.not_present()
        if not first:
            return EXPIRED, self.not_present()
        return PRESENT, self.values([v for a in arrays for v in a])  # type: ignore[union-attr]

    def from_columns(self, present: bool, fresh: bool, columns: Sequence[Any]) -> tuple[str, TableValues]:
        """Raw columns (join, per-table strategies) with the row's presence and freshness flags."""
        if not present:
            return MISSING, self.not_present()
        if not fresh:
            return EXPIRED, self.not_present()
        return PRESENT, self.values(columns)


def array_row_decoder(
    names: Sequence[str],
    decoders: Sequence[TableDecoder],
    parts_per_table: Sequence[tuple[Part, ...]],
    lazy_status: bool,
) -> Callable[[Row], FeatureResult]:
    """Decoder of one row holding each table's arrays in order (single strategy and batch rows).

    ``lazy_status``: no ttl and no defaults, so the status follows from None-ness and is only
    built if asked for.
    """
    names = tuple(names)
    simple = all(d.simple for d in decoders) and all(len(p) == 1 for p in parts_per_table)
    if lazy_status and simple:
        # The common case (e.g. all-real tables, no ttl, no defaults), inlined: no call per table.
        layout = [(name, d.names) for name, d in zip(names, decoders)]

        def decode_simple(row: Row) -> FeatureResult:
            return FeatureResult(
                {name: None if v is None else dict(zip(fnames, v)) for (name, fnames), v in zip(layout, row)}
            )

        return decode_simple
    if simple:
        # A ttl but no defaults: an expired table (empty array) is None like a missing one, and the
        # status is built from the row only if asked for.
        layout = [(name, d.names) for name, d in zip(names, decoders)]

        def decode_ttl(row: Row) -> FeatureResult:
            out = FeatureResult({name: dict(zip(fnames, v)) if v else None for (name, fnames), v in zip(layout, row)})
            out._arrays = row
            return out

        return decode_ttl
    spans = []
    pos = 0
    for parts in parts_per_table:
        spans.append((pos, pos + len(parts)))
        pos += len(parts)
    layout2 = [
        (name, d.from_array if b - a == 1 else d.from_parts, a, b) for name, d, (a, b) in zip(names, decoders, spans)
    ]

    def decode_row(row: Row) -> FeatureResult:
        values: dict[str, Any] = {}
        status: dict[str, str] = {}
        for name, dec, a, b in layout2:
            status[name], values[name] = dec(row[a] if b - a == 1 else row[a:b])
        return result(values, status)

    return decode_row
