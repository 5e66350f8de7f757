"""A value written by a live update and by a bulk load is stored the same, or refused by both for the
same reason (and a time finer than a microsecond is rounded as PostgreSQL rounds it).

The two write paths check and encode values separately (``definitions/types.check_value`` per value, and
``load/`` vectorized over Arrow columns), so each edge is written both ways here and read back: a real
that rounds to 0 in float32 (PostgreSQL refuses it as underflow), as a scalar, a list element and an
embedding element; a nanosecond timestamp from pandas or Arrow; an ISO 8601 string with more than six
fractional digits.
"""

from __future__ import annotations

import datetime as dt
from array import array
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pytest

from pgfeatures import FeatureStore
from pgfeatures.definitions import Registry
from pgfeatures.definitions.eventtime import parse_iso
from pgfeatures.errors import FeatureValueError, LoadInputError
from pgfeatures.load import load
from pgfeatures.schema import apply_schema

FEATURES = {
    "r": "real",
    "ts": "timestamp",
    "lr": "list<real>",
    "e": {"type": "embedding", "dim": 2},
    "h": {"type": "embedding", "dim": 2, "storage": "halfvec"},
}


@pytest.fixture()
def reg(conn: psycopg.Connection, schema: str) -> Registry:
    registry = Registry.from_dict(
        {
            "schema": schema,
            "entities": {"user": {"key": "bigint", "column": "user_id"}},
            "tables": {"t": {"entity": "user", "features": FEATURES}},
        }
    )
    apply_schema(conn, registry)
    return registry


def written_both_ways(conn: psycopg.Connection, reg: Registry, feature: str, value: Any, arrow: pa.Array) -> tuple:
    """(what a live update stored or the error it raised, the same for a load of ``arrow``)."""
    with FeatureStore(reg, conn.info.dsn) as store:
        try:
            store.update_features(1, "t", {feature: value})
            live: Any = store.get_features(1)["t"][feature]
        except FeatureValueError as exc:
            live = exc
        try:
            load(conn, reg, "t", pa.table({"user_id": [2], feature: arrow}), key_column="user_id", partial=True)
            loaded: Any = store.get_features(2)["t"][feature]
        except LoadInputError as exc:
            loaded = exc
    return live, loaded


@pytest.mark.parametrize(
    "feature, value, arrow",
    [
        ("r", 1e-46, pa.array([1e-46])),
        ("r", -1e-46, pa.array([-1e-46])),
        ("lr", [1.0, 1e-46], pa.array([[1.0, 1e-46]])),
        ("e", [1e-46, 1.0], pa.array([[1e-46, 1.0]])),
    ],
)
def test_a_real_that_rounds_to_zero_is_refused_by_both(
    conn: psycopg.Connection, reg: Registry, feature: str, value: Any, arrow: pa.Array
) -> None:
    live, loaded = written_both_ways(conn, reg, feature, value, arrow)
    assert isinstance(live, FeatureValueError) and "too small for real (rounds to 0" in str(live), live
    assert isinstance(loaded, LoadInputError) and "too small for real (rounds to 0" in str(loaded), loaded
    assert "nothing was loaded" in str(loaded)


def test_the_smallest_reals_that_do_not_round_to_zero_are_stored_by_both(
    conn: psycopg.Connection, reg: Registry
) -> None:
    tiny = 2.0**-149  # the smallest subnormal float32; 2**-150 (a tie) rounds to 0
    for feature, value in (("r", tiny), ("lr", [tiny]), ("e", [tiny, 1.0])):
        live, loaded = written_both_ways(conn, reg, feature, value, pa.array([value]))
        assert live == loaded and not isinstance(live, Exception), (live, loaded)


NANOS = [500, 1_500, 2_500, 900, 999_999_500, -500, -1_500]  # past 2026-01-01T00:00:00Z: ties both ways, and before it


@pytest.mark.parametrize("nanos", NANOS)
def test_a_nanosecond_time_is_rounded_as_postgresql_rounds_it_by_both(
    conn: psycopg.Connection, reg: Registry, nanos: int
) -> None:
    base = pd.Timestamp("2026-01-01T00:00:00Z")
    stamp = base + pd.Timedelta(nanoseconds=nanos)
    text = stamp.isoformat()  # nine fractional digits
    expected = conn.execute("SELECT %s::timestamptz", [text]).fetchone()[0]  # type: ignore[index]
    arrow = pa.array([stamp.value], pa.timestamp("ns", tz="UTC"))
    assert written_both_ways(conn, reg, "ts", stamp, arrow) == (expected, expected)
    assert written_both_ways(conn, reg, "ts", text, pa.array([text])) == (expected, expected)


def test_a_fraction_rounded_up_carries_into_the_next_second_and_day(conn: psycopg.Connection, reg: Registry) -> None:
    text = "2025-12-31T23:59:59.9999996Z"
    expected = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert conn.execute("SELECT %s::timestamptz", [text]).fetchone()[0] == expected  # type: ignore[index]
    assert written_both_ways(conn, reg, "ts", text, pa.array([text])) == (expected, expected)


@pytest.mark.parametrize("value", [1 + 2**-24, 1 + 3 * 2**-24, -(1 + 2**-24), 3.4028235e38 * (1 - 2**-26)])
def test_a_float_between_two_reals_is_rounded_alike_in_a_list_an_embedding_and_alone(
    conn: psycopg.Connection, reg: Registry, value: float
) -> None:
    """float64 to float32, ties to even, as PostgreSQL casts a double to real: not through the decimal text
    (which rounds a float64 halfway between two reals the other way when its shortest repr falls past it)."""
    rounded = float(np.float32(value))
    assert written_both_ways(conn, reg, "r", value, pa.array([value])) == (rounded, rounded)
    assert written_both_ways(conn, reg, "lr", [value], pa.array([[value]])) == ([rounded], [rounded])
    if abs(value) < 1e19:  # else its squared norm overflows float32: refused by both (another test)
        both = written_both_ways(conn, reg, "e", [value, 1.0], pa.array([[value, 1.0]]))
        assert both[0] == both[1] == array("f", [rounded, 1.0]), both


@pytest.mark.parametrize(
    "value, stored", [(65510.0, 65504.0), (65519.9, 65504.0), (1 + 2**-11, 1.0), (1 + 3 * 2**-11, 1 + 2**-9)]
)
def test_a_halfvec_element_is_rounded_alike_and_refused_alike(
    conn: psycopg.Connection, reg: Registry, value: float, stored: float
) -> None:
    assert written_both_ways(conn, reg, "h", [value, 1.0], pa.array([[value, 1.0]])) == (
        array("f", [stored, 1.0]),
        array("f", [stored, 1.0]),
    )


def test_a_halfvec_element_that_rounds_past_the_largest_half_is_refused_by_both(
    conn: psycopg.Connection, reg: Registry
) -> None:
    live, loaded = written_both_ways(conn, reg, "h", [65520.0, 1.0], pa.array([[65520.0, 1.0]]))
    assert isinstance(live, FeatureValueError) and "out of range for halfvec" in str(live), live
    assert isinstance(loaded, LoadInputError) and "out of range for halfvec" in str(loaded), loaded


def test_an_embeddings_norm_is_judged_on_the_float32_values_stored_by_both(
    conn: psycopg.Connection, reg: Registry
) -> None:
    """Squared in float32's values, as pgvector computes: 1.0842021714757625e-19 is stored as 2**-63, whose
    square is the smallest normal float32 (rankable), though the float64 value's square is below it."""
    value = [1.0842021714757625e-19, 0.0]
    assert float(np.float32(value[0])) == 2.0**-63
    both = written_both_ways(conn, reg, "e", value, pa.array([value]))
    assert both[0] == both[1] == array("f", [2.0**-63, 0.0]), both


@pytest.mark.parametrize(
    "text",
    ["20260101T000000.0000015Z", "2026-01-01T00:00:00,0000015Z", "2026-01-01T00:00:00.0000015+05:30"],
)
def test_a_long_fraction_is_rounded_in_every_iso_form_by_both(
    conn: psycopg.Connection, reg: Registry, text: str
) -> None:
    expected = parse_iso(text.replace(",", "."))
    assert expected.microsecond == 2  # 1.5 µs, a tie: to even
    assert written_both_ways(conn, reg, "ts", text, pa.array([text])) == (expected, expected)


def test_a_time_past_year_9999_once_rounded_is_refused_alike(conn: psycopg.Connection, reg: Registry) -> None:
    text = "9999-12-31T23:59:59.9999995Z"
    live, loaded = written_both_ways(conn, reg, "ts", text, pa.array([text]))
    assert isinstance(live, FeatureValueError) and "outside years 1 to 9999" in str(live), live
    assert isinstance(loaded, LoadInputError) and "outside years 1 to 9999" in str(loaded), loaded


def test_a_local_time_the_zone_has_twice_or_never_is_refused_in_every_form(
    conn: psycopg.Connection, reg: Registry
) -> None:
    """2026-11-01T01:30 happens twice in New York, 2026-03-08T02:30 never: which instant is meant is not known,
    whether the column is Arrow timestamps or strings (the strings' row-by-row path took the first reading)."""
    for text in ("2026-11-01T01:30:00", "2026-11-01T01:30:00.0000005", "2026-03-08T02:30:00"):
        with pytest.raises(LoadInputError, match="America/New_York"):
            load(conn, reg, "t", pa.table({"user_id": [2], "ts": [text]}), key_column="user_id", partial=True,
                 event_time_zone="America/New_York")  # fmt: skip
