"""Definitions: parsing, validation and the errors users see."""

from __future__ import annotations

import pytest

from pgfeatures.definitions import FeatureTable, Registry, demo_registry, feature_type
from pgfeatures.errors import DefinitionError, UnknownFeatureError, UnknownTableError
from pgfeatures.reader import select

TOML = """
schema = "fs"

[tables.user_stats]
covering_index = true
[tables.user_stats.features]
clicks_7d = "int"
ctr_7d = "float4"
is_new = "bool"

[tables.card]
features = { amount_avg = "double precision", txn_count = "bigint" }
"""


def test_toml_round_trip(tmp_path):
    path = tmp_path / "defs.toml"
    path.write_text(TOML)
    reg = Registry.from_toml(path)
    assert reg.schema == "fs"
    assert list(reg.tables) == ["user_stats", "card"]
    us = reg.table("user_stats")
    assert us.covering_index
    assert [(f.name, f.type.name) for f in us.features] == [
        ("clicks_7d", "integer"),
        ("ctr_7d", "real"),
        ("is_new", "boolean"),
    ]
    assert Registry.from_dict(reg.to_dict()) == reg


@pytest.mark.parametrize(
    "wide, hint",
    [
        ("jsonb", "one column per feature"),
        ("text", "declare string"),
        ("numeric", "real or double"),
        ("timestamp without time zone", "with time zone"),
    ],
)
def test_wide_types_are_rejected_with_a_reason(wide, hint):
    with pytest.raises(DefinitionError) as err:
        feature_type(wide)
    assert hint in str(err.value) and "valid:" in str(err.value)


def test_unknown_type_lists_valid_types():
    with pytest.raises(DefinitionError, match="valid: real, double precision, smallint, integer, bigint, boolean"):
        feature_type("float16")


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"tables": {}}, "no \\[tables"),
        ({"tables": {"t": {"features": {"hashkey": "real"}}}}, "reserved"),
        ({"tables": {"t": {"features": {"x": "jsonb"}}}}, "not allowed"),
        ({"tables": {"Bad-Name": {"features": {"x": "real"}}}}, "invalid table name"),
        ({"tables": {"t": {"features": {"x": "real"}, "colour": 1}}}, "unknown key"),
        ({"tables": {"t": {"features": {}}}}, "no features"),
        ({"tables": {"t": {"features": {"x": "real"}}}, "shema": "x"}, "unknown key"),
    ],
)
def test_bad_definitions(doc, message):
    with pytest.raises(DefinitionError, match=message):
        Registry.from_dict(doc)


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[tables.x\n")
    with pytest.raises(DefinitionError, match="broken.toml: invalid TOML"):
        Registry.from_toml(path)
    with pytest.raises(DefinitionError, match="not found"):
        Registry.from_toml(tmp_path / "missing.toml")


def test_unknown_table_names_valid_tables():
    reg = demo_registry(n_tables=3)
    with pytest.raises(UnknownTableError) as err:
        select(reg, ["t00", "nope"])
    assert "nope" in str(err.value) and "valid tables: t00, t01, t02" in str(err.value)


def test_unknown_feature_names_valid_features():
    reg = demo_registry(n_tables=2, n_features=3)
    with pytest.raises(UnknownFeatureError) as err:
        select(reg, ["t01"], {"t01": ["f0", "zz"]})
    assert "zz" in str(err.value) and "valid features: f0, f1, f2, updated_at" in str(err.value)
    with pytest.raises(UnknownFeatureError):
        select(reg, None, ["t00.f9"])
    with pytest.raises(DefinitionError, match="table.feature"):
        select(reg, None, ["f0"])


def test_selection_forms_agree():
    reg = demo_registry(n_tables=3, n_features=4)
    a = select(reg, ["t00", "t02"], {"t02": ["f1"]})
    b = select(reg, ["t00", "t02"], ["t02.f1"])
    assert a == b
    assert [(t.name, [f.name for f in fs]) for t, fs in a.items] == [("t00", ["f0", "f1", "f2", "f3"]), ("t02", ["f1"])]
    # features alone imply the tables
    assert select(reg, None, {"t01": ["f0"]}).tables == ("t01",)


def test_duplicate_tables_and_features_rejected():
    with pytest.raises(DefinitionError, match="duplicate"):
        Registry.of([FeatureTable.of("a", {"x": "real"}), FeatureTable.of("a", {"y": "real"})])
    with pytest.raises(DefinitionError, match="duplicate feature"):
        FeatureTable.of("a", [("x", "real"), ("x", "real")])
