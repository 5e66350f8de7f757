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
from typing import Any

import pandas as pd
import psycopg
import pyarrow as pa
import pytest

from pgfeatures import FeatureStore
from pgfeatures.definitions import Registry
from pgfeatures.errors import FeatureValueError, LoadInputError
from pgfeatures.load import load
from pgfeatures.schema import apply_schema

FEATURES = {
    "r": "real",
    "ts": "timestamp",
    "lr": "list<real>",
    "e": {"type": "embedding", "dim": 2},
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
