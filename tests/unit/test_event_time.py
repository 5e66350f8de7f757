"""Event time as callers give it (definitions/eventtime.py): one meaning per form, refused when the zone
or the unit is not known, exact to the microsecond."""

from __future__ import annotations

import datetime as dt

import pytest

from pgfeatures.definitions import from_micros, parse_event_time, rfc3339, to_micros
from pgfeatures.definitions.eventtime import MAX_MICROS, MIN_MICROS, check_unit
from pgfeatures.errors import FeatureValueError

UTC = dt.UTC
NOON = dt.datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    [
        NOON,
        NOON.astimezone(dt.timezone(dt.timedelta(hours=2))),
        "2026-05-01T12:00:00Z",
        "2026-05-01T12:00:00z",
        "2026-05-01T14:00:00+02:00",
        "2026-05-01T14:00:00+0200",
        "2026-05-01T07:00:00-05",
        " 2026-05-01T12:00:00Z ",
        1_777_636_800,
        1_777_636_800.0,
    ],
)
def test_every_form_means_the_same_instant_in_utc(value):
    parsed = parse_event_time("t.updated_at", value)
    assert parsed == NOON and parsed.tzinfo == UTC


@pytest.mark.parametrize(
    "unit, number", [("s", 1_777_636_800), ("ms", 1_777_636_800_000), ("us", 1_777_636_800_000_000)]
)
def test_a_declared_unit_scales_an_epoch_number(unit, number):
    assert parse_event_time("t.updated_at", number, unit) == NOON


def test_fractions_of_a_second_are_kept_to_the_microsecond():
    assert parse_event_time("w", 1.25) == dt.datetime(1970, 1, 1, 0, 0, 1, 250000, tzinfo=UTC)
    assert parse_event_time("w", "2026-05-01T12:00:00.000001Z") == NOON + dt.timedelta(microseconds=1)
    big = 1_777_636_800_123_457  # an int stays exact: no float rounding
    assert to_micros(parse_event_time("w", big, "us")) == big


@pytest.mark.parametrize(
    "value, why",
    [
        (dt.datetime(2026, 5, 1, 12), "has no time zone: pass an aware datetime"),
        ("2026-05-01T12:00:00", "has no time zone: write it as ISO 8601 with a zone"),
        ("2026-05-01", "has no time zone"),
        ("yesterday Z", "is not an ISO 8601 time"),
        ("2026-13-01T00:00:00Z", "is not an ISO 8601 time"),
        (True, "is not an event time"),
        (None, "is not an event time"),
        (b"2026", "is not an event time"),
        (float("nan"), "is not a finite number"),
        (float("inf"), "is not a finite number"),
        (1e300, "is out of range as epoch s (years 1 to 9999)"),
        (-(10**20), "is out of range as epoch s"),
    ],
)
def test_what_is_refused_names_the_column_and_why(value, why):
    with pytest.raises(FeatureValueError) as err:
        parse_event_time("t.updated_at", value)
    assert str(err.value).startswith(f"t.updated_at (event time): {value!r} ") and why in str(err.value)


def test_the_range_is_pythons_datetime_range_and_its_ends_are_accepted():
    assert from_micros(MIN_MICROS) == dt.datetime(1, 1, 1, tzinfo=UTC)
    assert from_micros(MAX_MICROS) == dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert parse_event_time("w", MAX_MICROS, "us") == from_micros(MAX_MICROS)
    with pytest.raises(FeatureValueError, match="out of range as epoch us"):
        parse_event_time("w", MAX_MICROS + 1, "us")


@pytest.mark.parametrize("micros", [0, 1, -1, 1_777_636_800_000_001, MIN_MICROS, MAX_MICROS])
def test_micros_round_trip_exactly(micros):
    assert to_micros(from_micros(micros)) == micros


def test_rfc3339_prints_utc_with_z_and_a_fraction_only_when_there_is_one():
    assert rfc3339(NOON) == "2026-05-01T12:00:00Z"
    assert rfc3339(NOON + dt.timedelta(milliseconds=250)) == "2026-05-01T12:00:00.250000Z"
    assert rfc3339(NOON.astimezone(dt.timezone(dt.timedelta(hours=-3)))) == "2026-05-01T12:00:00Z"
    assert parse_event_time("w", rfc3339(NOON)) == NOON


def test_units_are_checked_by_name():
    assert check_unit("ms") == "ms"
    with pytest.raises(ValueError, match="unknown event time unit 'ns'; valid: s, ms, us"):
        check_unit("ns")
