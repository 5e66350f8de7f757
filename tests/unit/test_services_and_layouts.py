"""Feature services (their order, TTLs, resolution), the registry's TOML form and fingerprint, and the
serving-row layouts of materialized services (definitions/services.py, registry.py, layout.py)."""

from __future__ import annotations

import pytest

from pgfeatures.definitions import Entity, FeatureService, FeatureTable, Registry
from pgfeatures.definitions.layout import (
    LAYOUT_VERSION,
    MAX_IDENTIFIER,
    PREFIX,
    legacy_serving_table_name,
    serving_table_name,
)
from pgfeatures.errors import DefinitionError, UnknownServiceError

USER = Entity("user", "bigint", "uid")
MERCHANT = Entity("merchant", hash="sha256", column="merchant_key")


def tables(user_ttl: int | None = 3600) -> list[FeatureTable]:
    return [
        FeatureTable.of(
            "user_stats",
            {"clicks": {"type": "integer", "default": 0}, "ctr": "real", "big": "bigint", "ok": "boolean"},
            entity=USER,
            ttl=user_ttl,
        ),
        FeatureTable.of("merchant_risk", {"rate": {"type": "real", "default": 0.5}, "n": "smallint"}, entity=MERCHANT),
        FeatureTable.of("user_more", {"score": "double precision"}, entity=USER),
    ]


def registry(*services: FeatureService, user_ttl: int | None = 3600) -> Registry:
    return Registry.of(tables(user_ttl), schema="s", entities=[USER, MERCHANT], services=services)


# -- services -----------------------------------------------------------------------------------------


def test_a_services_order_is_its_features_as_listed_with_stars_expanded():
    svc = FeatureService("fraud", ("merchant_risk.rate", "user_stats.*", "merchant_risk.n"))
    reg = registry(svc)
    assert svc.order(reg) == (
        "merchant_risk.rate",
        "user_stats.clicks",
        "user_stats.ctr",
        "user_stats.big",
        "user_stats.ok",
        "merchant_risk.n",
    )
    # resolve groups by table, in order of first mention, features in the order listed
    assert [(t.name, [f.name for f in fs]) for t, fs in svc.resolve(reg)] == [
        ("merchant_risk", ["rate", "n"]),
        ("user_stats", ["clicks", "ctr", "big", "ok"]),
    ]


@pytest.mark.parametrize(
    "service_ttl, override, table_ttl, effective",
    [
        (None, False, 3600, 3600),  # the table's
        (None, False, None, None),  # none at all
        (60, False, 3600, 60),  # the stricter: the service's
        (7200, False, 3600, 3600),  # the stricter: the table's
        (7200, False, None, 7200),  # the service's where the table has none
        (7200, True, 3600, 7200),  # ttl_override: the service's, even when looser
    ],
)
def test_the_effective_ttl_is_the_stricter_unless_overridden(service_ttl, override, table_ttl, effective):
    svc = FeatureService("s", ("user_stats.ctr", "merchant_risk.rate"), ttl=service_ttl, ttl_override=override)
    reg = registry(svc, user_ttl=table_ttl)
    assert svc.table_ttls(reg)["user_stats"] == effective


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda: FeatureService("s", ()), DefinitionError, "features must be a non-empty list"),
        (lambda: FeatureService("s", "t.x"), DefinitionError, "features must be a non-empty list"),  # type: ignore[arg-type]
        (lambda: FeatureService("s", ("ctr",)), DefinitionError, "'ctr' must be written \"table.feature\""),
        (lambda: FeatureService("s", ("t.x",), ttl=0), DefinitionError, "ttl must be a positive number"),
        (lambda: FeatureService("s", ("t.x",), ttl_override=True), DefinitionError, "ttl_override = true needs a ttl"),
        # the registry names the service: which of them refers to what does not exist
        (
            lambda: registry(FeatureService("s", ("nope.x",))),
            DefinitionError,
            r"service 's': unknown feature table\(s\): nope; valid tables: merchant_risk, user_more, user_stats",
        ),
        (
            lambda: registry(FeatureService("s", ("user_stats.nope",))),
            DefinitionError,
            r"service 's': unknown feature\(s\) in table 'user_stats': nope; valid features: clicks, ctr, big, ok",
        ),
        (
            lambda: registry(FeatureService("s", ("user_stats.*", "user_stats.ctr"))),
            DefinitionError,
            "user_stats.ctr is listed twice",
        ),
    ],
)
def test_bad_services_are_refused_naming_what_is_wrong(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_an_unknown_service_names_the_valid_ones():
    reg = registry(FeatureService("fraud", ("user_stats.*",)), FeatureService("plain", ("merchant_risk.*",)))
    with pytest.raises(UnknownServiceError, match="nope.*fraud, plain"):
        reg.service("nope")


def test_a_materialized_service_cannot_read_an_entity_keyed_by_a_serving_column_name():
    keyed_r = Entity("dev", "text", "r")
    with pytest.raises(DefinitionError, match="keyed by column 'r', a name its serving rows use"):
        Registry.of(
            [FeatureTable.of("t", {"x": "real"}, entity=keyed_r)],
            services=[FeatureService("s", ("t.*",), materialize=True)],
        )
    Registry.of([FeatureTable.of("t", {"x": "real"}, entity=keyed_r)], services=[FeatureService("s", ("t.*",))])


# -- the registry's TOML form and fingerprint ----------------------------------------------------------


def test_the_toml_form_round_trips_with_entities_services_ttls_and_defaults():
    reg = registry(
        FeatureService(
            "fraud", ("user_stats.*", "merchant_risk.rate"), ttl=86400, materialize=True, version="3", description="v"
        ),
        FeatureService("strict", ("user_more.score",), ttl=60, ttl_override=True),
    )
    again = Registry.from_dict(reg.to_dict())
    assert again == reg
    assert again.fingerprint == reg.fingerprint
    assert reg.to_dict()["tables"]["user_stats"]["ttl"] == "1h"
    assert reg.to_dict()["services"]["fraud"]["ttl"] == "1d"


def test_the_fingerprint_follows_every_change_of_the_definitions():
    base = registry(FeatureService("fraud", ("user_stats.*",)))
    changes = [
        registry(FeatureService("fraud", ("user_stats.*",)), user_ttl=60),  # a ttl
        registry(FeatureService("fraud", ("user_stats.*",), version="2")),  # a version
        registry(FeatureService("fraud", ("user_stats.ctr",))),  # a service's features
        Registry.of(tables(), schema="other", entities=[USER, MERCHANT]),  # the schema
    ]
    prints = {base.fingerprint, *(r.fingerprint for r in changes)}
    assert len(prints) == 1 + len(changes)
    assert registry(FeatureService("fraud", ("user_stats.*",))).fingerprint == base.fingerprint  # and only change


# -- layouts of materialized services -------------------------------------------------------------------


def test_each_entity_gets_a_serving_table_with_every_feature_in_a_slot_of_its_array():
    svc = FeatureService("fraud", ("user_stats.*", "merchant_risk.*", "user_more.score"), materialize=True)
    reg = registry(svc)
    user, merchant = reg.layouts("fraud")
    assert (user.entity, merchant.entity) == (USER, MERCHANT)
    assert [t.name for t in user.tables] == ["user_stats", "user_more"]
    slots = [(s.table, s.feature.name, s.group, s.index) for s in user.slots]
    assert slots == [
        ("user_stats", "clicks", "d", 0),  # integer: exact in a double
        ("user_stats", "ctr", "r", 0),
        ("user_stats", "big", "i", 0),  # bigint: only exact in an int8
        ("user_stats", "ok", "d", 1),  # boolean
        ("user_more", "score", "d", 2),
    ]
    assert user.groups == ("r", "d", "i") and merchant.groups == ("r", "d")  # arrays always empty are left out
    assert (user.size("d"), user.size("r"), user.size("i")) == (3, 1, 1)
    assert user.ts_index("user_more") == 1 and merchant.ts_index("merchant_risk") == 0
    assert [s.feature.name for s in user.table_slots("user_more")] == ["score"]
    assert user.table_name == serving_table_name("fraud", "user", user.fingerprint)
    assert user.table_name.startswith(f"{PREFIX}fraud__user_") and user.table_name.endswith(user.fingerprint[:12])


def test_the_layout_fingerprint_covers_what_a_decoder_depends_on_and_nothing_else():
    def fp(*services: FeatureService, **kw) -> str:
        return registry(*services, **kw).layouts(services[0].name)[0].fingerprint

    base = fp(FeatureService("s", ("user_stats.ctr", "user_stats.clicks"), materialize=True))
    assert base == fp(FeatureService("s", ("user_stats.ctr", "user_stats.clicks"), materialize=True))
    # what the rows hold or where: another order, another feature, another service name
    assert base != fp(FeatureService("s", ("user_stats.clicks", "user_stats.ctr"), materialize=True))
    assert base != fp(FeatureService("s", ("user_stats.ctr",), materialize=True))
    assert base != fp(FeatureService("t", ("user_stats.ctr", "user_stats.clicks"), materialize=True))
    # what the decoder reads per request, not what the rows hold: a ttl or a version
    assert base == fp(FeatureService("s", ("user_stats.ctr", "user_stats.clicks"), materialize=True, ttl=5))
    assert base == fp(FeatureService("s", ("user_stats.ctr", "user_stats.clicks"), materialize=True), user_ttl=None)
    assert LAYOUT_VERSION >= 3  # rows of older formats are never read as this one's (see layout.py)


def test_serving_table_names_fit_63_bytes_and_services_joining_alike_stay_apart():
    long = "s" * 60
    name = serving_table_name(long, "user", "0123456789abcdef")
    assert len(name.encode()) <= MAX_IDENTIFIER and name.endswith("_0123456789ab")
    one = Registry.of(
        [FeatureTable.of("t", {"x": "real"}, entity=Entity("c"))],
        services=[FeatureService("a__b", ("t.*",), materialize=True)],
    ).layouts("a__b")[0]
    two = Registry.of(
        [FeatureTable.of("t", {"x": "real"}, entity=Entity("b__c"))],
        services=[FeatureService("a", ("t.*",), materialize=True)],
    ).layouts("a")[0]
    assert one.table_name != two.table_name  # both "a__b__c" before the fingerprint


def test_legacy_serving_table_names_are_the_old_rule():
    assert legacy_serving_table_name("fraud", "user") == "_pgf_svc_fraud__user"
    long = legacy_serving_table_name("f" * 60, "user")
    assert len(long) == 63 and long.startswith("_pgf_svc_ffff")
