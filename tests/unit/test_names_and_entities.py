"""Reserved and derived names (definitions/names.py), and entities with their keys
(definitions/entities.py): what each key type accepts, as the parameter the database gets."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from psycopg.types.numeric import Int8

from pgfeatures.definitions import DEFAULT_ENTITY, Entity, FeatureService, FeatureTable, hash_key, parse_hash_key
from pgfeatures.definitions.names import MAX_IDENTIFIER, check_not_reserved, derived
from pgfeatures.errors import DefinitionError, KeyFormatError

# -- names ------------------------------------------------------------------------------------------


def test_internal_prefix_is_refused_for_every_kind_of_name():
    assert check_not_reserved("table", "pgf_x") == "pgf_x"
    with pytest.raises(DefinitionError, match="invalid table name '_pgf_x': names starting with '_pgf_' are reserved"):
        check_not_reserved("table", "_pgf_x")
    for build in (
        lambda: FeatureTable.of("_pgf_t", {"x": "real"}),
        lambda: FeatureTable.of("t", {"_pgf_x": "real"}),
        lambda: Entity("_pgf_user"),
        lambda: Entity("user", column="_pgf_id"),
        lambda: FeatureService("_pgf_s", ("t.*",)),
    ):
        with pytest.raises(DefinitionError, match="reserved"):
            build()


def test_a_feature_named_like_the_loaders_staging_column_is_refused():
    with pytest.raises(DefinitionError, match="staging table uses a column of that name"):
        FeatureTable.of("t", {"seq": "integer"})


def test_derived_names_fit_63_bytes_and_stay_apart():
    assert derived("user_stats", "_covering") == "user_stats_covering"
    long_a, long_b = "a" * 60 + "x", "a" * 60 + "y"
    a, b = derived(long_a, "_updated_at"), derived(long_b, "_updated_at")
    assert len(a.encode()) <= MAX_IDENTIFIER and len(b.encode()) <= MAX_IDENTIFIER
    assert a != b and a.endswith("_updated_at") and b.endswith("_updated_at")
    assert derived(long_a, "_updated_at") == a  # deterministic: the name is found again


def test_a_derived_name_never_splits_a_multibyte_character():
    base = "é" * 40  # 80 bytes
    name = derived(base, "_covering")
    assert len(name.encode()) <= MAX_IDENTIFIER
    name.encode().decode()  # valid UTF-8
    assert name.startswith("é") and name.endswith("_covering")


# -- entities and keys ------------------------------------------------------------------------------


def test_the_default_entity_is_todays_layout():
    assert DEFAULT_ENTITY.name == "entity" and DEFAULT_ENTITY.column == "hashkey"
    assert (DEFAULT_ENTITY.column_type, DEFAULT_ENTITY.live_type, DEFAULT_ENTITY.cast) == ("bytea", "bytea", "bytea")
    assert Entity("user").column == "user_id"


def test_bytea32_keys_are_32_bytes_or_64_hex_characters():
    raw = bytes(range(32))
    assert DEFAULT_ENTITY.parse(raw) == raw
    assert DEFAULT_ENTITY.parse(raw.hex()) == raw
    assert DEFAULT_ENTITY.parse(raw.hex().upper()) == raw
    assert DEFAULT_ENTITY.parse(bytearray(raw)) == raw
    with pytest.raises(KeyFormatError, match="entity key must be 32 bytes, got 31 bytes"):
        DEFAULT_ENTITY.parse(raw[:31])
    with pytest.raises(KeyFormatError, match="64 hex characters, got 3"):
        DEFAULT_ENTITY.parse("abc")
    with pytest.raises(KeyFormatError, match="non-hex characters"):
        DEFAULT_ENTITY.parse("zz" * 32)
    with pytest.raises(KeyFormatError, match="non-hex"):  # fromhex would skip the spaces and decode short
        DEFAULT_ENTITY.parse("ab " * 21 + "a")
    with pytest.raises(KeyFormatError, match="got int"):
        parse_hash_key(5)


def test_bigint_keys_are_integers_or_their_decimal_text_as_int8():
    user = Entity("user", "bigint")
    for key in (42, "42", " +42 ", "0042"):
        parsed = user.parse(key)
        assert parsed == 42 and isinstance(parsed, Int8)
    assert user.parse(str(2**63 - 1)) == 2**63 - 1 and user.parse(-(2**63)) == -(2**63)
    with pytest.raises(KeyFormatError, match=r"user key 9223372036854775808 is out of range for bigint"):
        user.parse(2**63)
    with pytest.raises(KeyFormatError, match="out of range for bigint"):
        user.parse("9" * 30)
    for bad in ("1_000", "0x10", "٣", "+-5", "4.0", "", True):
        with pytest.raises(KeyFormatError, match="user key must be an integer"):
            user.parse(bad)
    with pytest.raises(KeyFormatError, match="got float"):
        user.parse(4.0)


def test_a_huge_integer_key_is_refused_without_printing_it():
    with pytest.raises(KeyFormatError, match=r"user key an integer of about 30,10\d digits is out of range for bigint"):
        Entity("user", "bigint").parse(10**30_102)


def test_text_keys_are_bounded_and_valid_unicode():
    device = Entity("device", "text", max_length=4)
    assert device.parse("ab") == "ab" and device.parse(12) == "12"
    with pytest.raises(KeyFormatError, match="a string of 1 to 4 characters, got 5 characters"):
        device.parse("abcde")
    with pytest.raises(KeyFormatError, match="got 0 characters"):
        device.parse("")
    with pytest.raises(KeyFormatError, match="must not contain NUL"):
        device.parse("a\x00")
    with pytest.raises(KeyFormatError, match="no UTF-8 form"):
        device.parse("a\udc80")


def test_uuid_keys_take_what_postgresql_takes():
    card = Entity("card", "uuid")
    u = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    for key in (
        u,
        str(u),
        str(u).upper(),
        u.hex,
        "{" + str(u) + "}",
        "urn:uuid:" + str(u),
        "a0eebc999c0b4ef8-bb6d6bb9bd380a11",
        u.bytes,
    ):
        assert card.parse(key) == u, key
    for bad in ("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1", "0x" + u.hex[2:] + "00", " " + str(u), u.bytes[:15], 7):
        with pytest.raises(KeyFormatError, match="card key must be a UUID"):
            card.parse(bad)


def test_hashed_entities_hash_natural_ids_as_the_loader_does():
    merchant = Entity("merchant", hash="sha256")
    assert merchant.parse("m-1") == hashlib.sha256(b"m-1").digest()
    assert merchant.parse(42) == hashlib.sha256(b"42").digest() == hash_key(42)
    assert merchant.parse(b"\x00\x01") == hashlib.sha256(b"\x00\x01").digest()
    with pytest.raises(KeyFormatError, match="merchant key: a natural id must not be empty"):
        merchant.parse("")
    with pytest.raises(KeyFormatError, match="merchant key: a natural id must be a string, an integer or bytes"):
        merchant.parse(True)
    with pytest.raises(KeyFormatError, match="merchant key: .*got float"):
        merchant.parse(1.5)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Entity("user", "int"), "unknown key type 'int' \\(valid: bytea32, bigint, text, uuid\\)"),
        (lambda: Entity("user", hash="md5"), "unknown hash 'md5' \\(valid: sha256\\)"),
        (lambda: Entity("user", "bigint", hash="sha256"), 'stores 32-byte keys \\(key = "bytea32"\\), not bigint'),
        (lambda: Entity("user", "text", max_length=0), "max_length must be an integer from 1 to 10000"),
        (lambda: Entity("user", "text", max_length=True), "max_length must be an integer"),
        (lambda: Entity.from_dict("user", {"kind": "bigint"}), "unknown key\\(s\\) kind \\(valid: key, column"),
        (lambda: Entity.from_dict("user", "bigint"), "needs a table of settings"),
    ],
)
def test_bad_entities_say_what_is_valid(build, message):
    with pytest.raises(DefinitionError, match=message):
        build()


@pytest.mark.parametrize(
    "entity",
    [
        Entity("user", "bigint", "uid"),
        Entity("device", "text", max_length=64),
        Entity("m", hash="sha256"),
        DEFAULT_ENTITY,
    ],
)
def test_an_entity_round_trips_through_its_toml_form(entity):
    assert Entity.from_dict(entity.name, entity.to_dict()) == entity
