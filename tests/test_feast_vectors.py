"""Feast vector search on pgfeatures: a field declared ``vector_index=True`` is an indexed embedding, and
``FeatureStore.retrieve_online_documents_v2`` answers from ``store.nearest`` (one statement, HNSW, the view's
ttl applied). Real Feast, real PostgreSQL with pgvector; the neighbours checked against numpy.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import pytest
from psycopg import sql

feast = pytest.importorskip("feast", reason="the feast extra is not installed (pip install 'pgfeatures[feast]')")

from support import feast_repo  # noqa: E402
from support.feast_repo import DAY, HOUR, NOW  # noqa: E402
from test_feast import STORE  # noqa: E402

DIM = 8
N_DOCS = 60
RNG = np.random.default_rng(5)
VECTORS = RNG.normal(size=(N_DOCS, DIM)).astype(np.float32)
STALE = N_DOCS  # the last document's row is older than the view's ttl: never a neighbour


def write_docs(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    stamps = [NOW - HOUR] * (N_DOCS - 1) + [NOW - 3 * DAY]
    pd.DataFrame(
        {
            "doc_id": list(range(1, N_DOCS + 1)),
            "title": [f"doc {i}" for i in range(1, N_DOCS + 1)],
            "embedding": [v.tolist() for v in VECTORS],
            "event_timestamp": stamps,
        }
    ).to_parquet(root / "docs.parquet")


def objects(root: Path) -> dict[str, Any]:
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Array, Float32, Int64, String

    doc = Entity(name="doc", join_keys=["doc_id"], value_type=ValueType.INT64)
    source = FileSource(name="docs_source", path=str(root / "docs.parquet"), timestamp_field="event_timestamp")
    view = FeatureView(
        name="docs",
        entities=[doc],
        ttl=2 * DAY,
        source=source,
        schema=[
            Field(name="doc_id", dtype=Int64),
            Field(name="title", dtype=String),
            Field(
                name="embedding",
                dtype=Array(Float32),
                vector_index=True,
                vector_length=DIM,
                vector_search_metric="cosine",
            ),
        ],
    )
    return {"doc": doc, "docs": view}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, dsn: str) -> Any:
    root = tmp_path_factory.mktemp("feast_vectors")
    schema = f"feast_vec_{root.name[-8:].replace('-', '_')}".lower()
    write_docs(root)
    fs = feast_repo.make_store(root, "vectors", {"type": STORE, "dsn": dsn, "db_schema": schema}, objects(root))
    yield fs, schema
    asyncio.run(fs._get_provider().online_store.close())
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def cosine_nearest(query: np.ndarray, k: int) -> list[int]:
    live = VECTORS[: N_DOCS - 1].astype(np.float64)  # the stale row is not served
    sims = live @ query / (np.linalg.norm(live, axis=1) * np.linalg.norm(query))
    return [int(i) + 1 for i in np.argsort(-sims, kind="stable")[:k]]


def test_the_vector_field_is_an_indexed_embedding(dsn: str, store: Any) -> None:
    _, schema = store
    with psycopg.connect(dsn) as conn:
        column = conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass "
            "AND attname = 'embedding'",
            [f"{schema}.docs"],
        ).fetchone()
        indexes = [r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = %s", [schema])]
    assert column == (f"vector({DIM})",)
    assert any("hnsw" in d and "vector_cosine_ops" in d for d in indexes), indexes


@pytest.mark.parametrize("query_index", [0, 7, 31])
def test_retrieve_online_documents_v2_returns_the_nearest_documents(store: Any, query_index: int) -> None:
    fs, _ = store
    query = VECTORS[query_index].astype(np.float64) + 0.01
    k = 5
    answer = fs.retrieve_online_documents_v2(
        features=["docs:embedding", "docs:title"], query=query.tolist(), top_k=k
    ).to_dict()
    expected = cosine_nearest(query, k)
    # Feast lays a document answer out in entity key order (see retrieve_online_documents_v2): the ranking
    # is the distance column's.
    ranked = [answer["doc_id"][i] for i in np.argsort(answer["distance"], kind="stable")]
    assert ranked == expected  # HNSW on 59 rows at the default ef_search finds them all
    assert answer["doc_id"] == sorted(expected)
    for doc, title, vector, distance in zip(answer["doc_id"], answer["title"], answer["embedding"], answer["distance"]):
        stored = VECTORS[doc - 1].astype(np.float64)
        assert title == f"doc {doc}" and [np.float32(x).tolist() for x in vector] == VECTORS[doc - 1].tolist()
        cos = 1 - stored @ query / (np.linalg.norm(stored) * np.linalg.norm(query))
        assert abs(distance - cos) < 1e-5


def test_a_row_past_the_ttl_is_no_neighbour(store: Any) -> None:
    fs, _ = store
    stale = VECTORS[STALE - 1].astype(np.float64)
    answer = fs.retrieve_online_documents_v2(features=["docs:title"], query=stale.tolist(), top_k=3).to_dict()
    assert STALE not in answer["doc_id"] and len(answer["doc_id"]) == 3


def test_a_wrong_dimension_is_refused_naming_the_size(store: Any) -> None:
    fs, _ = store
    with pytest.raises(Exception, match=f"dim {DIM}"):
        fs.retrieve_online_documents_v2(features=["docs:title"], query=[1.0, 2.0], top_k=3)


def test_a_vector_field_of_integers_is_refused_at_apply(tmp_path: Path) -> None:
    from feast import Field
    from feast.types import Array, Int64

    from pgfeatures.errors import DefinitionError
    from pgfeatures.feast.mapping import feature_of

    field = Field(name="v", dtype=Array(Int64), vector_index=True, vector_length=4)
    with pytest.raises(DefinitionError, match="needs an Array"):
        feature_of("docs", "v", "INT64_LIST", field)
    metric = Field(name="v", dtype=Array(Int64), vector_index=True, vector_length=4, vector_search_metric="L1")
    with pytest.raises(DefinitionError, match="L1"):
        feature_of("docs", "v", "FLOAT_LIST", metric)


def test_get_online_features_answers_embeddings_as_lists_as_feast_does(store: Any) -> None:
    """The library reads an embedding as array('f'); Feast's answer holds lists, in to_dict and to_arrow."""
    fs, _ = store
    response = fs.get_online_features(features=["docs:embedding", "docs:title"], entity_rows=[{"doc_id": 1}])
    got = response.to_dict()["embedding"][0]
    assert type(got) is list and got == [float(np.float32(x)) for x in VECTORS[0]]
    assert response.to_arrow().column("embedding").to_pylist() == [got]
