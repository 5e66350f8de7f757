"""Live updates planned in pure code (write.py): rows grouped by the columns they set, merged per key
(newest wins within a batch), checked before any I/O, and the future-skew guard's verdict."""

from __future__ import annotations

import datetime as dt

import pytest

from pgfeatures.definitions import Entity, FeatureTable, Registry
from pgfeatures.errors import EventTimeInFutureError, FeatureValueError, KeyFormatError, UnknownFeatureError
from pgfeatures.write import UpdateCount, future_error, plan_updates

USER = Entity("user", "bigint", "uid")
REG = Registry.of([FeatureTable.of("t", {"a": "integer", "b": "real", "c": "boolean"}, entity=USER)], schema="s")
T0 = dt.datetime(2026, 5, 1, 12, tzinfo=dt.UTC)


def test_rows_setting_the_same_columns_share_one_statement_keys_in_order():
    plans = plan_updates(REG, "t", [(3, {"a": 1}), (1, {"a": 2}), (2, {"b": 0.5, "a": 3}), ("4", {"a": 4})])
    assert [(p.features, params) for p, params in plans] == [
        (REG.table("t").select(["a"]), ([1, 3, 4], [2, 1, 4])),  # key order: the order a load locks rows in
        (REG.table("t").select(["a", "b"]), ([2], [3], [0.5])),  # columns in table order, whatever was given
    ]
    upsert = plans[0][0]
    assert not upsert.newest_wins and not upsert.guarded
    text = upsert.statement.decode()
    assert text.startswith('INSERT INTO "s"."t" AS t ("uid", "a") SELECT * FROM unnest($1::int8[], $2::integer[])')
    assert 'ON CONFLICT ("uid") DO UPDATE SET "a" = EXCLUDED."a", "updated_at" = EXCLUDED."updated_at"' in text


def test_a_key_given_twice_merges_later_values_over_earlier_ones():
    (plan,) = plan_updates(REG, "t", [(1, {"a": 1, "b": 0.5}), (1, {"a": 2})])
    assert plan[1] == ([1], [2], [0.5])


def test_with_event_times_the_newest_occurrence_wins_whatever_the_order_given():
    later, earlier = T0 + dt.timedelta(seconds=1), T0
    (plan,) = plan_updates(REG, "t", [(1, {"a": 2, "updated_at": later}), (1, {"a": 1, "updated_at": earlier})])
    upsert, params = plan
    assert upsert.newest_wins and upsert.guarded
    assert params[:3] == ([1], [2], [later]) and params[3] == later and params[4] == dt.timedelta(seconds=300)
    assert b'WHERE t."updated_at" <= EXCLUDED."updated_at"' in upsert.statement
    (overwrite,) = plan_updates(REG, "t", [(1, {"a": 2, "updated_at": later})], overwrite_newer=True)
    assert not overwrite[0].newest_wins and overwrite[0].guarded
    (unbounded,) = plan_updates(REG, "t", [(1, {"a": 2, "updated_at": later})], max_future_skew=None)
    assert not unbounded[0].guarded and len(unbounded[1]) == 3


@pytest.mark.parametrize(
    "rows, kw, error, message",
    [
        ([(1, {"z": 1})], {}, UnknownFeatureError, "z"),
        ([("x", {"a": 1})], {}, KeyFormatError, "user key must be an integer"),
        ([(1, {"a": 1.5})], {}, FeatureValueError, r"t\.a \(integer\): 1\.5 is not an integer \(key 1\)"),
        ([(1, {"b": float("nan")})], {}, FeatureValueError, "NaN"),
        ([(1, {"updated_at": None})], {}, FeatureValueError, "cannot be NULL"),
        ([(1, {})], {}, FeatureValueError, "no values given for key 1"),
        ([(1, [("a", 1)])], {}, FeatureValueError, "must be a mapping"),
        ([(1, {"a": 1})], {"nan": "zero"}, FeatureValueError, "invalid nan='zero'; valid: reject, null"),
        ([(1, {"a": 1})], {"inf": "clip"}, FeatureValueError, "invalid inf='clip'; valid: reject, keep"),
        ([(1, {"a": 1})], {"max_future_skew": -1}, FeatureValueError, "max_future_skew must be a number"),
    ],
)
def test_bad_rows_are_refused_before_any_io(rows, kw, error, message):
    with pytest.raises(error, match=message):
        plan_updates(REG, "t", rows, **kw)


def test_nan_may_be_written_as_null_when_asked():
    (plan,) = plan_updates(REG, "t", {1: {"b": float("nan")}}, nan="null")
    assert plan[1] == ([1], [None])


def test_the_guard_verdict_names_the_first_row_too_far_ahead():
    ahead = T0 + dt.timedelta(hours=1)
    plans = plan_updates(REG, "t", [(1, {"a": 1, "updated_at": T0}), (2, {"a": 2, "updated_at": ahead})])
    assert future_error(plans, now=ahead) is None  # written: within the skew of the server's clock
    err = future_error(plans, now=T0)
    assert isinstance(err, EventTimeInFutureError)
    assert str(err).startswith("t.updated_at: 2026-05-01T13:00:00Z (key 2) is in the future: 3,600.000s ahead")
    assert future_error(plan_updates(REG, "t", [(1, {"a": 1})]), now=T0) is None  # unguarded


def test_the_count_of_a_write_carries_what_was_skipped():
    count = UpdateCount(3, skipped=2)
    assert count == 3 and count.skipped == 2 and count.keys == 5 and repr(count) == "UpdateCount(3, skipped=2)"
