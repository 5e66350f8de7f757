"""pooler="transaction": nothing is ever prepared on the server, reads equal the prepared path, and the
warm shapes go through server-side PL/pgSQL functions (planned once per backend)."""

from __future__ import annotations

import pytest

from groundtruth import build
from pgfeatures import FeatureStore
from pgfeatures.definitions import FeatureService, Registry
from pgfeatures.errors import ConfigError
from pgfeatures.reader import Strategy
from pgfeatures.reader.functions import FUNCTION_PREFIX, registry_functions


def _prepared(store: FeatureStore) -> int:
    with store.connection() as conn:
        return conn.execute("SELECT count(*) FROM pg_prepared_statements", prepare=False).fetchone()[0]


def test_transaction_mode_prepares_nothing_and_reads_the_same(conn, schema, dsn):
    truth = build(conn, schema, n_keys=40)
    registry = Registry.of(
        truth.registry.tables.values(), schema, services=[FeatureService("svc", ("tbl_0.*", "tbl_3.*"))]
    )
    keys = truth.keys[:20] + [truth.absent]
    with (
        FeatureStore(registry, dsn, pool_size=1, write_pool_size=0) as direct,
        FeatureStore(registry, dsn, pool_size=1, write_pool_size=0, pooler="transaction") as pooled,
    ):
        assert _prepared(direct) > 0
        for strategy in Strategy:
            for key in keys[:5]:
                assert pooled.get_features(key, strategy=strategy) == direct.get_features(key, strategy=strategy)
        assert pooled.get_features_batch(keys) == direct.get_features_batch(keys)
        assert pooled.get_service("svc", keys[0]) == direct.get_service("svc", keys[0])
        assert pooled.get_service_batch("svc", keys) == direct.get_service_batch("svc", keys)
        # a vector shares its statement (so its function) with the dict read: it must still decode as a vector
        vector = pooled.get_service("svc", keys[0], output="list")
        assert vector == direct.get_service("svc", keys[0], output="list")
        vectors = pooled.get_service_batch("svc", keys, output="list")
        assert vectors == direct.get_service_batch("svc", keys, output="list")
        assert pooled.get_features(keys[1], ["tbl_2"]) == direct.get_features(keys[1], ["tbl_2"])  # no function form
        assert _prepared(pooled) == 0
        # the warm shapes were read through their functions
        assert len(pooled._served.via_functions) == 4
    names = [f.name for f in registry_functions(registry)]
    found = conn.execute(
        "SELECT proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = %s AND proname LIKE %s",
        [schema, FUNCTION_PREFIX + "%"],
    ).fetchall()
    assert sorted(r[0] for r in found) == sorted(set(names))


def test_unknown_pooler_names_the_valid_ones(schema, dsn, conn):
    truth = build(conn, schema, n_keys=2)
    with pytest.raises(ConfigError, match="valid: session, transaction"):
        FeatureStore(truth.registry, dsn, pooler="statement")
