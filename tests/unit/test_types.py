"""Feature types, value checks, identifiers and durations (definitions/types.py): what a column takes,
and the error when it does not."""

from __future__ import annotations

import math
import struct

import pytest

from pgfeatures.definitions import (
    FLOAT32_MAX,
    FLOAT32_OVERFLOW,
    INT_RANGE,
    check_identifier,
    check_value,
    feature_type,
    format_duration,
    nonfinite_json,
    parse_duration,
)
from pgfeatures.definitions.types import FLOAT32_ZERO, TYPES
from pgfeatures.errors import DefinitionError, FeatureValueError


@pytest.mark.parametrize(
    "name, canonical",
    [
        ("float4", "real"),
        ("REAL", "real"),
        ("float", "double precision"),
        ("double", "double precision"),
        ("  Double   Precision ", "double precision"),
        ("int2", "smallint"),
        ("int", "integer"),
        ("int4", "integer"),
        ("int8", "bigint"),
        ("bool", "boolean"),
    ],
)
def test_aliases_resolve_to_the_canonical_type(name, canonical):
    assert feature_type(name) is TYPES[canonical]


def test_only_real_and_bigint_differ_in_how_they_travel():
    # what rides in a float8[] without loss: everything but bigint (beyond 2**53)
    assert {t.name for t in TYPES.values() if not t.exact_in_float8} == {"bigint"}


@pytest.mark.parametrize("kind", ["smallint", "integer", "bigint"])
def test_integer_ranges_are_the_columns_own(kind):
    lo, hi = INT_RANGE[kind]
    t = TYPES[kind]
    assert check_value("t.x", t, lo) == lo and check_value("t.x", t, hi) == hi
    for outside in (lo - 1, hi + 1):
        with pytest.raises(FeatureValueError, match=rf"t\.x \({kind}\): {outside} is out of range \({lo}\.\.{hi}\)"):
            check_value("t.x", t, outside)


def test_an_integral_float_is_an_integer_and_a_fraction_is_not():
    t = TYPES["integer"]
    assert check_value("t.x", t, 3.0) == 3 and type(check_value("t.x", t, 3.0)) is int
    with pytest.raises(FeatureValueError, match="is not an integer"):
        check_value("t.x", t, 3.5)


@pytest.mark.parametrize("value", [True, "1", b"1", [1]])
def test_a_number_column_refuses_what_is_not_a_number(value):
    with pytest.raises(FeatureValueError, match="is not a number"):
        check_value("t.x", TYPES["real"], value)


def test_booleans_take_only_booleans():
    t = TYPES["boolean"]
    assert check_value("t.b", t, True) is True and check_value("t.b", t, None) is None
    for value in (1, 0, "true", 1.0):
        with pytest.raises(FeatureValueError, match="is not a boolean"):
            check_value("t.b", t, value)


def test_real_takes_what_rounds_to_a_finite_float32_and_names_the_bound():
    t = TYPES["real"]
    assert check_value("t.r", t, FLOAT32_MAX) == FLOAT32_MAX
    assert check_value("t.r", t, 3.4028235e38) == 3.4028235e38  # what the server prints for FLOAT32_MAX
    just_below = math.nextafter(FLOAT32_OVERFLOW, 0.0)
    assert struct.unpack("f", struct.pack("f", just_below))[0] == FLOAT32_MAX  # rounds down: accepted
    assert check_value("t.r", t, -just_below) == -just_below
    with pytest.raises(FeatureValueError, match=r"out of range for real \(at most ±3.4028235e\+38\)"):
        check_value("t.r", t, FLOAT32_OVERFLOW)
    assert check_value("t.d", TYPES["double precision"], FLOAT32_OVERFLOW) == FLOAT32_OVERFLOW


def test_real_refuses_what_would_underflow_to_zero_but_takes_zero():
    t = TYPES["real"]
    assert check_value("t.r", t, 0.0) == 0.0
    assert check_value("t.r", t, FLOAT32_ZERO * 2) == FLOAT32_ZERO * 2  # the smallest subnormal
    with pytest.raises(FeatureValueError, match="too small for real"):
        check_value("t.r", t, FLOAT32_ZERO)


def test_nan_and_infinity_follow_their_policies():
    t = TYPES["double precision"]
    with pytest.raises(FeatureValueError, match="NaN, which this store rejects"):
        check_value("t.d", t, float("nan"))
    assert check_value("t.d", t, float("nan"), nan="null") is None
    with pytest.raises(FeatureValueError, match="infinite, which this store refuses by default"):
        check_value("t.d", t, float("inf"))
    assert check_value("t.d", t, float("-inf"), inf="keep") == float("-inf")
    # NaN in an integer column is refused whatever the inf policy
    with pytest.raises(FeatureValueError, match="NaN"):
        check_value("t.i", TYPES["integer"], float("nan"), inf="keep")


@pytest.mark.parametrize("text", ["Infinity", "-Infinity", "NaN"])
def test_the_json_form_of_a_non_finite_value_is_explained_when_written_back(text):
    with pytest.raises(FeatureValueError, match="how JSON answers carry a stored non-finite value"):
        check_value("t.d", TYPES["double precision"], text)
    assert nonfinite_json(float(text.replace("Infinity", "inf"))) == text


@pytest.mark.parametrize("name", ["a", "_x", "user_stats", "t" * 63, "a1"])
def test_valid_identifiers(name):
    assert check_identifier("table", name) == name


@pytest.mark.parametrize("name", ["", "1a", "A", "user-stats", "t" * 64, "é", None, 3])
def test_invalid_identifiers_say_what_is_valid(name):
    with pytest.raises(DefinitionError, match="invalid table name .*lowercase letters, digits and '_'"):
        check_identifier("table", name)


@pytest.mark.parametrize(
    "given, seconds",
    [
        (90, 90),
        ("90", 90),
        ("90s", 90),
        ("30m", 1800),
        ("12h", 43200),
        ("7d", 604800),
        ("2w", 1209600),
        (" 3 h ", 10800),
    ],
)
def test_durations(given, seconds):
    assert parse_duration(given, "ttl") == seconds


@pytest.mark.parametrize("given", ["", "7y", "1.5h", "-1d", "d", True, "7 d s"])
def test_bad_durations_name_the_setting_and_the_forms(given):
    with pytest.raises(DefinitionError, match=r"^ttl: expected a duration such as \"7d\", \"12h\""):
        parse_duration(given, "ttl")


@pytest.mark.parametrize("given", [0, "0s", -5])
def test_a_duration_must_be_positive(given):
    with pytest.raises(DefinitionError, match="must be positive"):
        parse_duration(given, "ttl")


@pytest.mark.parametrize(
    "seconds, text", [(1, "1s"), (60, "1m"), (90, "90s"), (3600, "1h"), (86400, "1d"), (1209600, "2w")]
)
def test_format_duration_is_the_shortest_form_and_parses_back(seconds, text):
    assert format_duration(seconds) == text
    assert parse_duration(text, "ttl") == seconds
