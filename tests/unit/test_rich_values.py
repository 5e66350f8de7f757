"""What the rich types take and refuse, before any I/O (definitions/types.py), including the edges a hostile
review found: values that no read could return, or that pgvector could not rank."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from pgfeatures.definitions import EVENT_TIME, TYPES, feature_type
from pgfeatures.definitions.types import check_value
from pgfeatures.errors import FeatureValueError

EMBEDDING = feature_type("embedding", dim=3)
HALF = feature_type("embedding", dim=3, storage="halfvec")
STRING = feature_type("string", max_length=4)


@pytest.mark.parametrize(
    "type_, value, message",
    [
        (EMBEDDING, [1e20, -1e20, 1.0], "overflows float32"),
        (EMBEDDING, [1e-30, 0.0, 0.0], "underflows float32"),
        (HALF, [70000.0, 0.0, 1.0], "out of range for halfvec"),
        (STRING, "\ud800", "lone surrogate"),
        (feature_type("list<string>"), ["ok", "\udfff"], "lone surrogate"),
        (TYPES["real"], 10**400, "out of range for real"),
        (TYPES["double precision"], -(10**400), "out of range for double precision"),
        (EVENT_TIME, "9999-12-31T23:30:00-05:00", "outside years 1 to 9999 in UTC"),
        (EVENT_TIME, dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5))), "outside years 1 to 9999"),
    ],
)
def test_refused_naming_the_rule(type_, value, message) -> None:
    with pytest.raises(FeatureValueError, match=message):
        check_value("t.f", type_, value)


def test_a_timestamp_feature_is_not_called_the_event_time() -> None:
    with pytest.raises(FeatureValueError, match=r"t\.seen \(timestamp\): .* has no time zone"):
        check_value("t.seen", EVENT_TIME, "2026-01-01T00:00:00")
    with pytest.raises(FeatureValueError, match=r"t\.updated_at \(event time\)"):
        check_value("t.updated_at", EVENT_TIME, "2026-01-01T00:00:00")


def test_edges_that_hold() -> None:
    assert check_value("t.e", EMBEDDING, [0.0, 0.0, 0.0]) == [0.0, 0.0, 0.0]  # all zero: stored (no cosine rank)
    assert check_value("t.e", EMBEDDING, np.array([1, 2, 3], dtype=np.float32)) == [1.0, 2.0, 3.0]
    assert check_value("t.h", HALF, [65504.0, -65504.0, 0.5]) == [65504.0, -65504.0, 0.5]
    assert check_value("t.b", TYPES["boolean"], np.True_) is True  # numpy 2 names its bool type "bool"
    assert check_value("t.s", STRING, "\u00e9\u0301ab") == "\u00e9\u0301ab"  # 4 code points: at max_length
    with pytest.raises(FeatureValueError, match="longer than max_length 4 .*'abcde'$"):
        check_value("t.s", STRING, "abcde")  # shown whole, no "..." after a value that was not cut


def test_without_pgvector_init_says_how_to_install_it_or_what_to_declare() -> None:
    from pgfeatures.definitions import FeatureTable
    from pgfeatures.errors import ExtensionMissingError
    from pgfeatures.schema import check_vector, column_definitions

    indexed = FeatureTable.of("items", {"vec": {"type": "embedding", "dim": 3, "index": "hnsw"}})
    with pytest.raises(ExtensionMissingError, match='install pgvector .*storage = "array"'):
        check_vector(indexed, has_vector=False)
    plain = FeatureTable.of("items", {"vec": {"type": "embedding", "dim": 3}})
    check_vector(plain, has_vector=False)  # an auto embedding needs no extension: a real[] column
    assert column_definitions(plain, has_vector=False)["vec"].as_string(None) == '"vec" real[]'
    assert column_definitions(plain, has_vector=True)["vec"].as_string(None) == '"vec" vector(3)'
