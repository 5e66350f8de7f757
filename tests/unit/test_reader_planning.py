"""Planning a read (reader/selection.py, compile.py, transport.py, functions.py, cache.py): what a request
reads, the statements each strategy sends, how the features travel, and the cache of compiled readers."""

from __future__ import annotations

import pytest

from pgfeatures.definitions import Entity, FeatureService, FeatureTable, Registry
from pgfeatures.errors import DefinitionError, UnknownServiceError, UnknownStrategyError
from pgfeatures.reader import (
    BatchReader,
    Fetch,
    ReaderCache,
    Strategy,
    compile_batch_reader,
    compile_reader,
    request_shape,
    select,
    select_service,
    transport,
)
from pgfeatures.reader.functions import FUNCTION_PREFIX, read_function, registry_functions

USER = Entity("user", "bigint", "uid")
MERCHANT = Entity("merchant", hash="sha256", column="merchant_key")
REG = Registry.of(
    [
        FeatureTable.of("user_stats", {"clicks": "integer", "ctr": "real"}, entity=USER, ttl=3600),
        FeatureTable.of("merchant_risk", {"rate": "real", "n": "bigint"}, entity=MERCHANT),
        FeatureTable.of("flags", {"on": "boolean"}, entity=USER),
    ],
    schema="s",
    services=[
        FeatureService("fraud", ("merchant_risk.rate", "user_stats.*"), ttl=60),
        FeatureService("loose", ("user_stats.ctr",), ttl=7200),
    ],
)


# -- selection ----------------------------------------------------------------------------------------


def test_a_selection_knows_its_entities_ttls_and_which_tables_need_each_key():
    sel = select(REG, ["merchant_risk", "user_stats", "flags"])
    assert sel.tables == ("merchant_risk", "user_stats", "flags")
    assert sel.entities == (MERCHANT, USER)
    assert sel.ttls == (None, 3600, None) and sel.has_ttl and not sel.has_defaults
    assert sel.needs() == {"merchant": ["merchant_risk"], "user": ["user_stats", "flags"]}
    assert [sel.entity_index(t) for t, _ in sel.items] == [0, 1, 1]
    assert sel.n_features == 5
    assert sel.known == ("user", "merchant")  # every entity of the registry: keys for others are errors


def test_a_service_selection_takes_the_services_order_and_effective_ttls():
    sel = select_service(REG, "fraud")
    assert [(t.name, [f.name for f in fs]) for t, fs in sel.items] == [
        ("merchant_risk", ["rate"]),
        ("user_stats", ["clicks", "ctr"]),
    ]
    assert sel.ttls == (60, 60) and sel.service == "fraud"  # the service's 60 s: stricter than both
    assert select_service(REG, "loose").ttls == (3600,)  # the table's hour: stricter than the service's two
    subset = select_service(REG, "fraud", ["user_stats.ctr"])
    assert [(t.name, [f.name for f in fs]) for t, fs in subset.items] == [("user_stats", ["ctr"])]


@pytest.mark.parametrize(
    "features, message",
    [
        (["flags.on"], "service 'fraud' has no features of table 'flags' (its tables: merchant_risk, user_stats)"),
        (["merchant_risk.n"], "service 'fraud' does not serve merchant_risk.n"),
    ],
)
def test_a_service_subset_must_be_features_the_service_serves(features, message):
    with pytest.raises(DefinitionError) as err:
        select_service(REG, "fraud", features)
    assert message in str(err.value)


def test_selecting_features_of_a_table_not_requested_is_an_error():
    with pytest.raises(DefinitionError, match="features given for table\\(s\\) not requested: flags"):
        select(REG, ["user_stats"], ["flags.on"])
    with pytest.raises(UnknownServiceError):
        select_service(REG, "nope")


# -- transport ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "features, arrays",
    [
        ({"a": "real", "b": "real"}, [("float4[]", ["a", "b"])]),
        ({"a": "real", "b": "integer", "c": "boolean"}, [("float8[]", ["a", "b", "c"])]),
        ({"a": "bigint", "b": "integer"}, [("int8[]", ["a", "b"])]),
        ({"a": "bigint", "b": "real", "c": "smallint"}, [("float8[]", ["b"]), ("int8[]", ["a", "c"])]),
    ],
)
def test_features_travel_in_the_fewest_lossless_arrays(features, arrays):
    table = FeatureTable.of("t", features)
    parts = transport(table.features)
    assert [(p.array_type, [f.name for f in p.features]) for p in parts] == arrays


def test_event_time_never_travels_in_a_real_array():
    table = FeatureTable.of("t", {"a": "real"})
    parts = transport(table.select(["a", "updated_at"]))
    assert all(p.array_type != "float4[]" for p in parts if "updated_at" in [f.name for f in p.features])


# -- statements ---------------------------------------------------------------------------------------


def test_the_single_statement_is_one_subquery_per_array_with_ttl_decided_on_the_server():
    reader = compile_reader(select(REG, ["user_stats", "merchant_risk"]))
    assert reader.strategy is Strategy.SINGLE and reader.fetch is Fetch.ONE and len(reader.statements) == 1
    text = reader.statements[0].decode()
    assert text.startswith("SELECT (SELECT CASE WHEN \"updated_at\" >= now() - '3600 seconds'::interval THEN ARRAY[")
    assert 'ELSE \'{}\'::float8[] END FROM "s"."user_stats" WHERE "uid" = $1::int8)' in text
    # merchant_risk mixes bigint with real: two arrays, two lookups, both with the merchant's key ($2)
    assert text.count('FROM "s"."merchant_risk" WHERE "merchant_key" = $2::bytea') == 2
    assert "now()" not in text.split('"merchant_risk"')[1]  # no ttl, no clock


def test_the_batch_statement_zips_one_array_per_entity_in_input_order():
    reader = compile_batch_reader(select(REG, ["user_stats", "merchant_risk"]))
    text = reader.statement.decode()
    assert 'FROM unnest($1::int8[], $2::bytea[]) WITH ORDINALITY AS k("e0", "e1", i) ORDER BY k.i' in text
    assert 'WHERE "uid" = k."e0"' in text and 'WHERE "merchant_key" = k."e1"' in text


def test_per_table_strategies_send_one_statement_per_table_each_with_its_own_key():
    for strategy, fetch in ((Strategy.PIPELINE, Fetch.PIPELINE), (Strategy.SEQUENTIAL, Fetch.SEQUENTIAL)):
        reader = compile_reader(select(REG, ["merchant_risk", "user_stats", "flags"]), strategy)
        assert reader.fetch is fetch and len(reader.statements) == 3
        assert reader.param_index == (0, 1, 1)  # merchant, user, user
        assert all(b"$1::" in s and b"$2" not in s for s in reader.statements)


def test_union_and_join_are_one_statement_each():
    sel = select(REG, ["user_stats", "merchant_risk"])
    union = compile_reader(sel, "union")
    assert union.fetch is Fetch.ALL and union.statements[0].count(b" UNION ALL ") == 2  # three arrays
    join = compile_reader(sel, Strategy.JOIN)
    assert join.fetch is Fetch.ONE and join.statements[0].count(b"LEFT JOIN") == 2


def test_an_unknown_strategy_names_the_valid_ones():
    with pytest.raises(UnknownStrategyError, match="unknown strategy 'fast'; valid strategies: single, union, join"):
        compile_reader(select(REG), "fast")


# -- read functions (transaction-mode poolers) --------------------------------------------------------


def test_only_single_statement_readers_have_a_function_form_named_by_their_statement():
    sel = select(REG, ["user_stats", "merchant_risk"])
    single = read_function(compile_reader(sel))
    batch = read_function(compile_batch_reader(sel))
    assert single is not None and batch is not None
    assert single.name.startswith(FUNCTION_PREFIX) and len(single.name) <= 63 and single.name != batch.name
    assert single.call == f'SELECT * FROM "s"."{single.name}"($1::int8, $2::bytea)'.encode()
    assert batch.call == f'SELECT * FROM "s"."{batch.name}"($1::int8[], $2::bytea[])'.encode()
    create = single.create.as_string(None)
    assert "LANGUAGE plpgsql STABLE" in create and "force_generic_plan" in create
    for strategy in ("union", "join", "pipeline", "sequential"):
        assert read_function(compile_reader(sel, strategy)) is None
    assert read_function(compile_reader(select(REG, ["flags"]))).name != single.name  # another statement


def test_the_registry_functions_are_the_full_read_and_every_services():
    names = {f.name for f in registry_functions(REG)}
    assert len(names) == 2 + 2 * len(REG.services)  # single and batch, for the whole and for each service


# -- the cache of compiled readers --------------------------------------------------------------------


def test_request_shapes_are_hashable_and_equal_for_equal_requests():
    assert request_shape(["a", "b"], {"a": ["x"]}) == request_shape(("a", "b"), {"a": ("x",)})
    assert request_shape(None, ["a.x"]) != request_shape(None, ["a.y"])
    hash(request_shape(["a"], {"a": ["x", "y"]}))


def test_the_cache_reuses_a_reader_per_shape_and_strategy():
    cache = ReaderCache(REG)
    one = cache.reader(["user_stats"], None, "single")
    assert cache.reader(("user_stats",), None, Strategy.SINGLE) is one
    assert cache.reader(["user_stats"], None, "union") is not one
    assert isinstance(cache.batch_reader(["user_stats"], None), BatchReader)
    assert cache.service_reader("fraud", None, "single") is cache.service_reader("fraud", None, "single")
    assert len(cache) == 4


def test_the_cache_is_bounded_in_prepared_statements_and_evicts_the_least_recently_used():
    cache = ReaderCache(REG, max_statements=6)
    a = cache.reader(None, None, "pipeline")  # three statements
    b = cache.reader(["flags"], None, "single")  # one
    cache.reader(None, None, "pipeline")  # a used again: b is now the oldest
    c = cache.reader(["user_stats", "flags"], None, "sequential")  # two: 6 in all, still fits
    assert cache.statements == 6 and len(cache) == 3
    cache.reader(["merchant_risk"], None, "single")  # one more: b goes
    assert cache.statements == 6
    assert cache.reader(None, None, "pipeline") is a and cache.reader(["user_stats", "flags"], None, "sequential") is c
    assert cache.reader(["flags"], None, "single") is not b  # compiled again


def test_a_materialized_readers_flexible_twin_is_compiled_ahead(monkeypatch):
    """When its serving rows go (a definition switch), a materialized reader falls back to the flexible
    read; that first read already waits for the switch, so the twin must not be compiled then."""
    import pgfeatures.reader.cache as cache_module

    registry = Registry.of(
        REG.tables.values(), schema="s", services=[FeatureService("m", ("user_stats.*", "flags.on"), materialize=True)]
    )
    cache = ReaderCache(registry)
    cache.materialized = {"m": tuple(registry.layouts("m"))}
    reader = cache.service_reader("m", None, "single")
    batch = cache.service_batch_reader("m", None)
    assert reader.fallback is not None and batch.fallback is not None

    def refuse(*args, **kwargs):
        raise AssertionError("compiled at fallback time")

    monkeypatch.setattr(cache_module, "compile_reader", refuse)
    monkeypatch.setattr(cache_module, "compile_batch_reader", refuse)
    assert cache.demote("m")
    flexible = reader.fallback()
    assert flexible.fallback is None and cache.service_reader("m", None, "single") is flexible
    assert cache.service_batch_reader("m", None) is batch.fallback()
