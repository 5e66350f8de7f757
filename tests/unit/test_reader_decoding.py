"""Decoding (reader/decode.py, compile.py, materialized.py, vector.py): every strategy's decoder, the
batch's, the serving rows' and the vectors' give the same values, defaults and status for the same
stored rows.

The rows are built here as PostgreSQL returns them for each statement (compile.py and
materialized.py document the shapes: a missing row is NULL, an expired one an empty array or a false
freshness flag; arrays carry floats, int8 arrays ints, event time int8 epoch microseconds). The
integration tier (test_read_strategies.py, test_serving_model.py, test_materialize.py) checks the same
agreement against PostgreSQL itself; here it runs in milliseconds, over every combination.
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest

from pgfeatures.definitions import Entity, FeatureService, FeatureTable, Registry, from_micros
from pgfeatures.definitions.layout import EntityLayout
from pgfeatures.reader import (
    EXPIRED,
    MISSING,
    PRESENT,
    FeatureResult,
    Reader,
    Selection,
    compile_batch_reader,
    compile_reader,
    select,
    select_service,
    transport,
)
from pgfeatures.reader.compile import Strategy
from pgfeatures.reader.decode import TableDecoder
from pgfeatures.reader.materialized import compile_materialized_batch_reader, compile_materialized_reader
from pgfeatures.reader.transport import RAW
from pgfeatures.reader.vector import vector_batch_reader, vector_of, vector_reader

USER = Entity("user", "bigint", "uid")
MERCHANT = Entity("merchant", "text")
NOW = 1_777_636_800_000_000  # the statement's now(), epoch microseconds
SECOND = 1_000_000
HOUR = 3600 * SECOND

TABLES = [
    # mixed types in one float8[] (converted back to int/bool), defaults, a ttl
    FeatureTable.of(
        "user_stats",
        {"clicks": {"type": "integer", "default": 0}, "ctr": "real", "new": "boolean"},
        entity=USER,
        ttl=3600,
    ),
    # all real: the simple path (no ttl, no defaults)
    FeatureTable.of("user_emb", {"e0": "real", "e1": "real"}, entity=USER),
    # bigint beside a double: two arrays
    FeatureTable.of(
        "merchant_risk", {"n": "bigint", "rate": {"type": "double precision", "default": 0.5}}, entity=MERCHANT
    ),
]
REG = Registry.of(
    TABLES,
    schema="s",
    services=[
        FeatureService("mixed", ("merchant_risk.rate", "user_stats.*", "merchant_risk.n"), materialize=True),
        FeatureService("emb", ("user_emb.*",), materialize=True, ttl=60),
        # no ttl, every value a plain real: the serving read's simplest decoders (one slice, stamps' None-ness)
        FeatureService("emb_plain", ("user_emb.*",), materialize=True),
        FeatureService("emb_reordered", ("user_emb.e1", "user_emb.e0", "user_stats.ctr"), materialize=True),
    ],
)
# What each table may hold for a key: its values and its age in microseconds (a row exactly ttl old is
# still served, one microsecond older is not)
ROWS = {
    "user_stats": {
        "missing": None,
        "fresh": ({"clicks": 3, "ctr": 0.25, "new": True}, 60 * SECOND),
        "nulls": ({"clicks": None, "ctr": None, "new": False}, 60 * SECOND),  # NULL values take their defaults
        "at the limit": ({"clicks": 5, "ctr": 0.75, "new": True}, HOUR),
        "expired": ({"clicks": 9, "ctr": 0.5, "new": False}, HOUR + 1),
    },
    "user_emb": {
        "missing": None,
        "fresh": ({"e0": 1.5, "e1": -2.0}, 30 * SECOND),
        "at the limit": ({"e0": 2.5, "e1": 4.0}, 60 * SECOND),  # the service emb's ttl
        "old": ({"e0": 0.5, "e1": 0.0}, 60 * SECOND + 1),
    },
    "merchant_risk": {
        "missing": None,
        "fresh": ({"n": 2**60 + 1, "rate": 0.125}, 5 * SECOND),  # beyond 2**53: exact only in an int8
        "null_rate": ({"n": 7, "rate": None}, 5 * SECOND),
    },
}


def stored(table: str, case: str) -> tuple[dict[str, Any], int] | None:
    """(values with updated_at, stamp) of a table's row for a case, None when there is none."""
    row = ROWS[table][case]
    if row is None:
        return None
    values, age = row
    stamp = NOW - age
    return {**values, "updated_at": stamp}, stamp


def fresh(sel: Selection, i: int, stamp: int) -> bool:
    ttl = sel.ttls[i]
    return ttl is None or stamp >= NOW - ttl * 1_000_000


def travel(value: Any, array_type: str) -> Any:
    """A value as it arrives in an array of that type (or a raw column)."""
    if value is None or array_type in (RAW, "int8[]"):
        return value
    return float(value)  # float4[] / float8[]: booleans as 1.0/0.0, integers as floats


def expected(sel: Selection, cases: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    values: dict[str, Any] = {}
    status: dict[str, str] = {}
    for i, (table, features) in enumerate(sel.items):
        row = stored(table.name, cases[table.name])
        defaults = {f.name: f.default for f in features}
        if row is None or not fresh(sel, i, row[1]):
            status[table.name] = MISSING if row is None else EXPIRED
            values[table.name] = defaults if any(d is not None for d in defaults.values()) else None
            continue
        status[table.name] = PRESENT
        out = {}
        for f in features:
            v = row[0][f.name]
            out[f.name] = f.default if v is None else from_micros(v) if f.name == "updated_at" else v
        values[table.name] = out
    return values, status


# -- rows as PostgreSQL returns them, per statement form --------------------------------------------


def single_row(sel: Selection, cases: dict[str, str]) -> tuple[Any, ...]:
    """``single`` and each batch row: per table, per array: NULL (no row), '{}' (expired) or the values."""
    out: list[Any] = []
    for i, (table, features) in enumerate(sel.items):
        row = stored(table.name, cases[table.name])
        for part in transport(features):
            if row is None:
                out.append(None)
            elif not fresh(sel, i, row[1]):
                out.append([])
            else:
                out.append([travel(row[0][f.name], part.array_type) for f in part.features])
    return tuple(out)


def union_rows(sel: Selection, cases: dict[str, str]) -> list[tuple[Any, ...]]:
    """``union``: (part number, float array, [int8 array]) per array of a table that has a row;
    every float array of the statement has one type (float4[] only when all are)."""
    parts = [transport(fs) for _, fs in sel.items]
    has_int8 = any(p.array_type == "int8[]" for ps in parts for p in ps)
    floats = {p.array_type for ps in parts for p in ps if p.array_type != "int8[]"}
    common = "float4[]" if floats <= {"float4[]"} else "float8[]"
    rows: list[tuple[Any, ...]] = []
    number = 0
    for i, ((table, _), ps) in enumerate(zip(sel.items, parts)):
        row = stored(table.name, cases[table.name])
        for part in ps:
            if row is not None:
                kind = part.array_type if part.array_type == "int8[]" else common
                array = [travel(row[0][f.name], kind) for f in part.features] if fresh(sel, i, row[1]) else []
                if kind == "int8[]":
                    rows.append((number, None, array))
                else:
                    rows.append((number, array, None) if has_int8 else (number, array))
            number += 1
    return rows[::-1]  # UNION ALL promises no order


def join_row(sel: Selection, cases: dict[str, str]) -> tuple[Any, ...]:
    """``join``: per table (key found, fresh, raw columns...)."""
    out: list[Any] = []
    for i, (table, features) in enumerate(sel.items):
        row = stored(table.name, cases[table.name])
        if row is None:
            out += [False, None, *(None for _ in features)]
        else:
            out += [True, fresh(sel, i, row[1]), *(row[0][f.name] for f in features)]
    return tuple(out)


def per_table_rows(sel: Selection, cases: dict[str, str]) -> list[tuple[Any, ...] | None]:
    """``pipeline`` / ``sequential``: one fetchone per table: None, or (raw columns..., [fresh])."""
    out: list[tuple[Any, ...] | None] = []
    for i, (table, features) in enumerate(sel.items):
        row = stored(table.name, cases[table.name])
        if row is None:
            out.append(None)
        else:
            flag = (fresh(sel, i, row[1]),) if sel.ttls[i] is not None else ()
            out.append((*(row[0][f.name] for f in features), *flag))
    return out


def serving_row(sel: Selection, layouts: tuple[EntityLayout, ...], cases: dict[str, str]) -> tuple[Any, ...]:
    """A materialized read: (now, per entity its serving row's arrays then ts): all NULL when the key has
    no serving row (no table of the entity has a row for it)."""
    by_entity = {layout.entity.name: layout for layout in layouts}
    out: list[Any] = [NOW]
    for entity in sel.entities:
        layout = by_entity[entity.name]
        rows = {t.name: stored(t.name, cases.get(t.name, "missing")) for t in layout.tables}
        if all(r is None for r in rows.values()):
            out += [None] * (len(layout.groups) + 1)
            continue
        for group in layout.groups:
            array: list[Any] = [None] * layout.size(group)
            for slot in layout.slots:
                if slot.group == group and rows[slot.table] is not None:
                    array[slot.index] = travel(
                        rows[slot.table][0][slot.feature.name], "int8[]" if group == "i" else "float8[]"
                    )
            out.append(array)
        out.append([None if rows[t.name] is None else rows[t.name][1] for t in layout.tables])
    return tuple(out)


def combinations(sel: Selection) -> list[dict[str, str]]:
    names = [t.name for t, _ in sel.items]
    return [dict(zip(names, combo)) for combo in itertools.product(*(ROWS[n] for n in names))]


def check(result: FeatureResult, sel: Selection, cases: dict[str, str]) -> None:
    values, status = expected(sel, cases)
    assert dict(result) == values, cases
    assert result.status == status, cases
    for table, table_values in values.items():  # the types, not only the values: 3 is not 3.0, True is not 1.0
        if table_values is not None:
            assert {k: type(v) for k, v in result[table].items()} == {k: type(v) for k, v in table_values.items()}


SELECTIONS = {
    "every table": lambda: select(REG),
    "with updated_at": lambda: select(
        REG, None, {"user_stats": ["updated_at", "clicks"], "merchant_risk": ["n", "updated_at"]}
    ),
    "simple": lambda: select(REG, ["user_emb"]),
    "a subset, reordered": lambda: select(REG, None, {"user_stats": ["new", "ctr"]}),
    "a service": lambda: select_service(REG, "mixed"),
    "a service with a ttl": lambda: select_service(REG, "emb"),
}


@pytest.mark.parametrize("name", sorted(SELECTIONS))
@pytest.mark.parametrize("strategy", [s.value for s in Strategy])
def test_every_strategy_decodes_every_combination_alike(name, strategy):
    sel = SELECTIONS[name]()
    reader = compile_reader(sel, strategy)
    rows_of = {
        "single": single_row,
        "union": union_rows,
        "join": join_row,
        "pipeline": per_table_rows,
        "sequential": per_table_rows,
    }[strategy]
    for cases in combinations(sel):
        check(reader.decode(rows_of(sel, cases)), sel, cases)


@pytest.mark.parametrize("name", sorted(SELECTIONS))
def test_the_batch_decodes_a_row_per_key_in_order(name):
    sel = SELECTIONS[name]()
    all_cases = combinations(sel)
    results = compile_batch_reader(sel).decode([single_row(sel, c) for c in all_cases])
    assert len(results) == len(all_cases)
    for result, cases in zip(results, all_cases):
        check(result, sel, cases)


@pytest.mark.parametrize(
    "service, features",
    [
        ("mixed", None),
        ("mixed", ["user_stats.ctr", "merchant_risk.n"]),
        ("emb", None),
        ("emb_plain", None),
        ("emb_plain", ["user_emb.e1"]),
        ("emb_reordered", None),
    ],
)
def test_serving_rows_decode_as_the_flexible_read_does(service, features):
    sel = select_service(REG, service, features)
    layouts = REG.layouts(service)
    single = compile_materialized_reader(sel, layouts)
    batch = compile_materialized_batch_reader(sel, layouts)
    assert single.materialized and batch.materialized
    all_cases = combinations(sel)
    for cases in all_cases:
        check(single.decode(serving_row(sel, layouts, cases)), sel, cases)
    for result, cases in zip(batch.decode([serving_row(sel, layouts, c) for c in all_cases]), all_cases):
        check(result, sel, cases)


def test_a_status_is_built_lazily_from_the_row_when_nothing_needs_it_eagerly():
    sel = select(REG, ["user_emb"])  # no ttl, no defaults: the status follows from None-ness
    reader = compile_reader(sel)
    got = reader.decode(single_row(sel, {"user_emb": "missing"}))
    assert got == {"user_emb": None} and got.status == {"user_emb": MISSING}
    sel = select_service(REG, "emb")  # a ttl, no defaults: an expired table is None, its status says why
    got = compile_reader(sel).decode(single_row(sel, {"user_emb": "old"}))
    assert got == {"user_emb": None} and got.status == {"user_emb": EXPIRED}


def test_a_result_is_a_plain_dict_with_a_status():
    sel = select(REG, ["user_emb"])
    got = compile_reader(sel).decode(single_row(sel, {"user_emb": "fresh"}))
    assert isinstance(got, dict) and got == {"user_emb": {"e0": 1.5, "e1": -2.0}}
    assert repr(got) == repr({"user_emb": {"e0": 1.5, "e1": -2.0}})


def test_a_table_decoder_puts_features_back_in_the_order_asked():
    table = FeatureTable.of("t", {"a": "bigint", "b": "real", "c": "integer"})
    asked = table.select(["c", "a", "b"])
    parts = transport(asked)  # bigint beside a real: float8[] b; int8[] c, a
    assert [[f.name for f in p.features] for p in parts] == [["b"], ["c", "a"]]
    dec = TableDecoder(parts, asked)
    assert dec.from_parts([[0.5], [2, 7]]) == (PRESENT, {"c": 2, "a": 7, "b": 0.5})
    assert dec.from_parts([None, None]) == (MISSING, None)
    assert dec.from_parts([[], []]) == (EXPIRED, None)


# -- vectors ----------------------------------------------------------------------------------------


def test_a_vector_is_the_services_order_and_equals_the_dicts_values():
    sel = select_service(REG, "mixed")
    order = REG.service("mixed").order(REG)
    reader = vector_reader(compile_reader(sel), order)
    for cases in combinations(sel):
        vec = reader.decode(single_row(sel, cases))
        values, status = expected(sel, cases)
        assert vec.names == order and vec.status == status
        assert vec.values == [
            None if values[n.split(".")[0]] is None else values[n.split(".")[0]][n.split(".")[1]] for n in order
        ]


@pytest.mark.parametrize(
    ("service", "features"),
    [
        ("emb", None),  # a ttl: expired arrays are empty
        ("emb_plain", None),  # the vector is the arrays one after the other
        ("emb_plain", ["user_emb.e1"]),
        ("emb_reordered", None),  # picked position by position
        ("mixed", None),  # conversions and defaults: through the decoded result
    ],
)
def test_the_flexible_vector_equals_the_decoded_result(service, features):
    order = REG.service(service).order(REG)
    sel = select_service(REG, service, features)
    single = compile_reader(sel)
    batch = compile_batch_reader(sel)
    vectors, batch_vectors = vector_reader(single, order), vector_batch_reader(batch, order)
    cases = combinations(sel)
    rows = [single_row(sel, c) for c in cases]
    for row, from_batch in zip(rows, batch_vectors.decode(rows)):
        vec = vectors.decode(row)
        general = single.decode(row)
        assert vec.values == vector_of(general, vec.names) and vec.status == general.status
        assert from_batch == vec
    assert (single.vector_rows is None) == (service == "mixed")


@pytest.mark.parametrize(
    ("service", "features"),
    [
        ("emb", None),
        ("emb", ["user_emb.e1"]),  # a subset of the serving row: its slots, not the whole row
        ("emb", ["user_emb.e1", "user_emb.e0"]),
        ("emb_plain", None),
        ("emb_plain", ["user_emb.e1"]),
        ("emb_reordered", None),
        ("emb_reordered", ["user_emb.e0", "user_stats.ctr"]),
        ("mixed", None),  # two entities, two arrays each, conversions and defaults
        ("mixed", ["user_stats.new", "merchant_risk.rate"]),
        ("mixed", ["merchant_risk.n"]),
    ],
)
def test_the_materialized_vector_equals_the_general_path(service, features):
    # the vector is decoded straight from the serving row (slots picked, no dicts); a subset of the
    # service must give the subset's values in the service's order, defaults and status as the dicts
    order = REG.service(service).order(REG)
    sel = select_service(REG, service, features)
    layouts = REG.layouts(service)
    plain: Reader[FeatureResult] = compile_materialized_reader(sel, layouts)
    vectors = vector_reader(plain, order)
    batch = vector_batch_reader(compile_materialized_batch_reader(sel, layouts), order)
    rows = [serving_row(sel, layouts, c) for c in combinations(sel)]
    for row, from_batch in zip(rows, batch.decode(rows)):
        vec = vectors.decode(row)
        general = plain.decode(row)
        assert vec.values == vector_of(general, vec.names) and vec.status == general.status
        assert from_batch == vec


def test_vector_of_reads_none_for_a_table_that_is_not_present():
    result = FeatureResult({"a": None, "b": {"x": 1, "y": None}})
    assert vector_of(result, ("b.y", "a.z", "b.x")) == [None, None, 1]


def test_event_times_decode_as_aware_utc_datetimes():
    sel = select(REG, None, {"merchant_risk": ["updated_at"]})
    got = compile_reader(sel).decode(single_row(sel, {"merchant_risk": "fresh"}))
    stamp = got["merchant_risk"]["updated_at"]
    assert stamp == dt.datetime.fromtimestamp((NOW - 5 * SECOND) / 1e6, dt.UTC) and stamp.tzinfo == dt.UTC
