"""Request keys bound to statement parameters (reader/keys.py): one parameter per entity the request
reads, every key checked by its entity before any I/O, errors naming the entity, the position and
what is valid."""

from __future__ import annotations

import hashlib

import pytest

from pgfeatures.definitions import Entity, FeatureTable, Registry
from pgfeatures.definitions import entities as entities_module
from pgfeatures.errors import KeyFormatError, UnknownEntityError
from pgfeatures.reader import compile_batch_reader, compile_reader, parse_key, parse_keys, select

USER = Entity("user", "bigint", "uid")
MERCHANT = Entity("merchant", hash="sha256", column="merchant_key")
DEVICE = Entity("device", "text")
REG = Registry.of(
    [
        FeatureTable.of("user_stats", {"clicks": "integer"}, entity=USER),
        FeatureTable.of("user_more", {"score": "real"}, entity=USER),
        FeatureTable.of("merchant_risk", {"rate": "real"}, entity=MERCHANT),
        FeatureTable.of("devices", {"seen": "bigint"}, entity=DEVICE),
    ],
    schema="s",
)


def binder(*tables: str):
    return compile_reader(select(REG, list(tables))).binder


def sha(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def test_a_request_of_one_entity_takes_a_bare_key_or_a_mapping():
    one = binder("user_stats", "user_more").one
    assert one(42) == (42,) and one("42") == (42,)
    assert one({"user": 42}) == (42,)
    assert one({"user": 42, "merchant": "ignored: a known entity this request does not read"}) == (42,)


def test_a_request_of_several_entities_takes_one_key_each_in_the_readers_order():
    b = binder("merchant_risk", "user_stats", "user_more")
    assert b.names == ("merchant", "user")  # first appearance: one parameter each
    assert b.one({"user": "7", "merchant": "m-1"}) == (sha("m-1"), 7)


@pytest.mark.parametrize(
    "key, message",
    [
        (
            42,
            "this request reads entities merchant, user: pass one key per entity, e.g. {'merchant': ..., 'user': ...}",
        ),
        (
            {"user": 1},
            "no key for entity 'merchant', which table(s) merchant_risk need; the request has keys for: user",
        ),
        ({}, "the request has keys for: nothing"),
        ({"user": 1, "merch": "m"}, "unknown entity 'merch' in the keys; valid entities: user, merchant, device"),
        ({"user": "x", "merchant": "m"}, "user key must be an integer"),
        ({"user": 1, "merchant": ""}, "merchant key: a natural id must not be empty"),
    ],
)
def test_bad_keys_say_what_is_wrong_and_what_is_valid(key, message):
    with pytest.raises(KeyFormatError) as err:
        binder("merchant_risk", "user_stats").one(key)
    assert message in str(err.value)


def test_a_batch_is_one_array_per_entity_from_row_keys_or_columns():
    b = binder("user_stats", "merchant_risk")
    rows = [{"user": 1, "merchant": "a"}, {"merchant": "b", "user": "2"}]
    assert b.many(rows) == ([1, 2], [sha("a"), sha("b")])
    assert b.many({"user": [1, 2], "merchant": ["a", "b"]}) == ([1, 2], [sha("a"), sha("b")])
    assert b.many([]) == ([], [])
    single = binder("devices")
    assert single.many(["x", "y", "x"]) == (["x", "y", "x"],)  # duplicates repeat: one row per key asked


@pytest.mark.parametrize(
    "keys, message",
    [
        ("abc", "keys must be a sequence of keys, not a single key"),
        (b"abc", "keys must be a sequence of keys"),
        ([{"user": 1, "merchant": "a"}, {"user": "x", "merchant": "b"}], "keys[1]: user key must be an integer"),
        ({"user": [1, 2], "merchant": ["a"]}, "every entity needs the same number of keys, got user: 2, merchant: 1"),
        ({"user": [1, "no"], "merchant": ["a", "b"]}, "keys['user'][1]: user key must be an integer"),
        ({"user": "12", "merchant": ["a"]}, "keys['user'] must be a list of user keys"),
        ({"user": [1], "merchant": ["a"], "nobody": [1]}, "unknown entity 'nobody' in the keys"),
    ],
)
def test_bad_batches_name_the_position(keys, message):
    with pytest.raises(KeyFormatError) as err:
        binder("user_stats", "merchant_risk").many(keys)
    assert message in str(err.value)


def test_the_batch_reader_binds_as_the_single_reader_does():
    selection = select(REG, ["user_stats", "merchant_risk"])
    keys = [{"user": 5, "merchant": "m"}, {"user": 6, "merchant": "n"}]
    single = compile_reader(selection).binder
    batch = compile_batch_reader(selection).binder
    assert batch.many(keys) == tuple(list(column) for column in zip(*(single.one(k) for k in keys)))


def test_default_entity_keys_by_position():
    raw = bytes(range(32))
    assert parse_key(raw.hex()) == raw
    assert parse_keys([raw, raw.hex()]) == [raw, raw]
    with pytest.raises(KeyFormatError, match=r"keys\[1\]: hex key must be 64 hex characters"):
        parse_keys([raw, "ab"])
    with pytest.raises(KeyFormatError, match="not a single key"):
        parse_keys(raw.hex())


def test_bind_checks_every_entity_named_and_parses_each_key_once():
    # the wire rule (HTTP): an entity the request does not read is checked too, not ignored
    b = binder("merchant_risk")
    assert b.bind({"merchant": "m-1", "user": "7"}, REG.entities) == (sha("m-1"),)
    with pytest.raises(KeyFormatError, match=r"^key: user key must be an integer"):
        b.bind({"merchant": "m-1", "user": "x"}, REG.entities)
    with pytest.raises(UnknownEntityError, match="unknown entity: bogus; valid entities: device, merchant, user"):
        b.bind({"merchant": "m-1", "bogus": 1}, REG.entities)
    with pytest.raises(
        KeyFormatError, match=r"^keys\[3\]: no key for entity 'merchant', which table\(s\) merchant_risk"
    ):
        b.bind({"user": 7}, REG.entities, "keys[3]")
    with pytest.raises(KeyFormatError, match="must name at least one entity"):
        b.bind({}, REG.entities)
    hashed: list[object] = []
    original = entities_module.hash_key
    try:
        entities_module.hash_key = lambda key: hashed.append(key) or original(key)  # type: ignore[assignment]
        binder("merchant_risk", "user_stats").bind({"user": 7, "merchant": "m-1"}, REG.entities)
    finally:
        entities_module.hash_key = original
    assert hashed == ["m-1"]


def test_plain_says_whether_a_front_end_may_take_hex_keys_in_one_pass():
    assert not binder("merchant_risk").plain  # hashed
    assert not binder("user_stats").plain  # bigint
    assert compile_reader(select(Registry.of([FeatureTable.of("t", {"x": "real"})], schema="s"))).binder.plain
