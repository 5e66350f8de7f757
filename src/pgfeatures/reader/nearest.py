"""Nearest neighbours of an embedding feature: a request checked, compiled into one statement, decoded (pure).

``store.nearest(table, feature, query, k)`` asks for the ``k`` rows of ``table`` whose embedding
``feature`` is nearest ``query`` by the feature's metric, with some of their features. It is one
statement, one round-trip, prepared once per request shape (table, feature, features, the shape of
``where``, the search, what the database has: ``VectorFacts``):

- **HNSW** (the feature declares ``index = "hnsw"`` and the database has such an index on the column,
  with the metric's operator class): ``ORDER BY col <op> $1 LIMIT $2`` through the index. The request's
  ``ef_search`` (else the feature's declared ``ef_search``, else ``DEFAULT_EF_SEARCH``; at least ``k``) and, with pgvector 0.8 or later,
  ``hnsw.iterative_scan = strict_order`` (so rows dropped by the ttl or ``where`` are made up for) are
  set by ``set_config(..., true)`` in a one-row subquery the search is LATERAL-joined to: they are set
  before the index scan starts, for this statement's transaction only (reads run in autocommit).
- **exact** (no usable index, ``exact=True``, or an embedding stored as ``real[]``): every row's
  distance computed in SQL, the ``k`` smallest kept. It is refused (``ExactSearchRefusedError``) when
  the table has more than ``exact_limit`` rows: the same statement counts at most ``exact_limit + 1``
  rows first and the scan runs only under that bound (a one-time filter). Distances come from pgvector's
  operators where the extension is installed (a ``real[]`` column cast to ``vector``), else from SQL
  arithmetic over ``unnest`` (float8).

``distance`` is what pgvector's operator returns, smaller is nearer: ``l2`` the Euclidean distance
(``<->``), ``cosine`` one minus the cosine similarity (``<=>``), ``ip`` the *negative* inner product
(``<#>``). A row past the table's ttl is not a neighbour (its embedding is not served, as none of an
expired row's values is), nor is a row whose embedding is NULL (or, for cosine, all zeros: it has no
direction). A neighbour's features are decoded as ``get_features`` decodes them (NULL takes the
feature's default).

``where`` is ``{feature: value}``, equality on features of the same table, ANDed: a value (``=``), a
list (``= ANY``), or None (``IS NULL``). Values are checked by the feature's type and sent as
parameters; only the names (checked against the definitions) reach the SQL text, as identifiers.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from ..definitions import UPDATED_AT, Feature, FeatureTable, Registry, check_value
from ..definitions.types import EMBEDDING
from ..errors import ExactSearchRefusedError, FeatureValueError, NearestError
from .compile import fresh_sql
from .decode import TableDecoder
from .transport import RAW, Part, column_sql

HNSW = "hnsw"
EXACT = "exact"
MAX_K = 1000
MAX_EF_SEARCH = 1000  # pgvector's bound on hnsw.ef_search
# The hnsw.ef_search of a search that sets none (nor its feature): pgvector's default, 40, found 0.85 of the
# true 10 nearest among 1,000,000 clustered 128-dim vectors, 300 found 0.958 (p50 3.5 ms against 2.2 ms:
# docs/benchmarks.md, "Nearest neighbours"). A feature may declare its own (ef_search = 40 for pgvector's).
DEFAULT_EF_SEARCH = 300
DEFAULT_METRIC = "l2"  # pgvector's, for an embedding declared without one
DEFAULT_EXACT_LIMIT = 50_000
OPERATORS = {"l2": "<->", "cosine": "<=>", "ip": "<#>"}
OPCLASSES = {"l2": "_l2_ops", "cosine": "_cosine_ops", "ip": "_ip_ops"}
ALL = "*"

Row = tuple[Any, ...]


# -- what the database has ------------------------------------------------------------------------

FACTS_QUERY = b"""
SELECT format_type(a.atttypid, a.atttypmod),
  (SELECT extversion FROM pg_extension WHERE extname = 'vector'),
  EXISTS (SELECT FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam
          JOIN pg_opclass oc ON oc.oid = i.indclass[0]
          WHERE i.indrelid = a.attrelid AND i.indnatts = 1 AND i.indkey[0] = a.attnum AND am.amname = 'hnsw'
            AND oc.opcname = ANY($3::text[]) AND i.indisvalid AND i.indpred IS NULL)
FROM pg_attribute a
WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped
"""
"""Parameters: the qualified table, the column, the operator classes of its metric. No row: no such
column. Else (its type, pgvector's version or NULL, whether a valid HNSW index of that metric covers it)."""


@dataclass(frozen=True)
class VectorFacts:
    """What the database has for one embedding column (``FACTS_QUERY``): the column's type as
    ``format_type`` prints it, pgvector's version (None: not installed), and whether a valid HNSW
    index with the metric's operator class covers the column. Found at a feature's first search."""

    column_type: str
    pgvector: str | None
    index: bool

    @property
    def storage(self) -> str:
        """``vector``, ``halfvec`` or ``array`` (``real[]``)."""
        for kind in ("halfvec", "vector"):
            if self.column_type.startswith(kind + "("):
                return kind
        return "array"

    @property
    def iterative(self) -> bool:
        """pgvector 0.8 or later: ``hnsw.iterative_scan`` exists."""
        if self.pgvector is None:
            return False
        try:
            major, minor = (int(p) for p in self.pgvector.split(".")[:2])
        except ValueError:
            return False
        return (major, minor) >= (0, 8)


def facts_params(schema: str, table: FeatureTable, feature: Feature) -> tuple[str, str, list[str]]:
    """The parameters of ``FACTS_QUERY`` for one embedding feature."""
    suffix = OPCLASSES[metric_of(feature)]
    qualified = sql.Identifier(schema, table.name).as_string(None)
    return qualified, feature.name, ["vector" + suffix, "halfvec" + suffix]


def facts_of(row: Row | None, schema: str, table: FeatureTable, feature: Feature) -> VectorFacts:
    """``FACTS_QUERY``'s row as VectorFacts. Raises SchemaDriftError when the column does not exist."""
    if row is None:
        from ..errors import SchemaDriftError

        raise SchemaDriftError(
            f"table {schema}.{table.name} has no column {feature.name}: run `pgfeatures init` (or `pgfeatures apply`)",
            {table.name: [f"column {feature.name} is missing"]},
        )
    return VectorFacts(row[0], row[1], bool(row[2]))


# -- the request ----------------------------------------------------------------------------------


def metric_of(feature: Feature) -> str:
    """The feature's declared metric, else ``l2``."""
    return feature.type.metric or DEFAULT_METRIC


@dataclass(frozen=True)
class NearestRequest:
    """One request, checked against the definitions (``check_request``): what to compile (``shape``)
    and what to bind (``query``, ``k``, ``ef_search``, ``values`` of ``where`` in ``where``'s order)."""

    table: FeatureTable
    feature: Feature
    features: tuple[Feature, ...]
    where: tuple[tuple[Feature, str], ...]  # (feature, "eq" | "in" | "null"), sorted by name
    values: tuple[Any, ...]
    query: list[float]
    k: int
    ef_search: int | None
    exact: bool

    @property
    def metric(self) -> str:
        return metric_of(self.feature)

    @property
    def shape(self) -> tuple[Any, ...]:
        """What the statement depends on, besides the database's facts: its cache key."""
        return (
            self.table.name,
            self.feature.name,
            tuple(f.name for f in self.features),
            tuple((f.name, op) for f, op in self.where),
            self.exact,
        )


def _integer(what: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int (any Integral: numpy's too, not a bool) within ``low..high``; else NearestError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= int(value) <= high:
        raise NearestError(f"{what} must be an integer from {low} to {high}, got {value!r}")
    return int(value)


def embedding_features(table: FeatureTable) -> list[str]:
    return [f.name for f in table.features if f.type.kind == EMBEDDING]


def check_request(
    registry: Registry,
    table: str,
    feature: str,
    query: Any,
    k: Any = 10,
    *,
    features: Sequence[str] | str | None = None,
    where: Mapping[str, Any] | None = None,
    ef_search: Any = None,
    exact: bool = False,
) -> NearestRequest:
    """A nearest-neighbour request checked before any I/O.

    ``features``: names of the table's features to return with each neighbour (``"*"``: all of them;
    None: none). Raises UnknownTableError / UnknownFeatureError naming the valid ones; NearestError
    for a feature that is not an embedding, ``k`` outside 1..1000, ``ef_search`` outside k..1000, a
    bad ``where``; FeatureValueError for a query the embedding could not hold (its dimension, a
    non-finite value; for cosine, all zeros), or a ``where`` value its feature could not hold.
    """
    t = registry.table(table)
    f = t.feature(feature)
    if f.type.kind != EMBEDDING:
        found = embedding_features(t)
        raise NearestError(
            f"{table}.{feature} is {f.type.spec}, not an embedding: nearest searches an embedding feature "
            f"(embeddings of {table}: {', '.join(found) or 'none'})"
        )
    k = _integer("k", k, 1, MAX_K)
    if ef_search is not None:
        ef_search = _integer("ef_search", ef_search, k, MAX_EF_SEARCH)
    else:  # the feature's declared default, else pgfeatures' (not pgvector's 40: see DEFAULT_EF_SEARCH); at least k
        ef_search = min(max(f.type.ef_search or DEFAULT_EF_SEARCH, k), MAX_EF_SEARCH)
    vector = check_value(f"query for {table}.{feature}", f.type, query)
    if vector is None:
        raise FeatureValueError(f"query for {table}.{feature} (embedding): a query vector is required, got None")
    if metric_of(f) == "cosine" and not any(vector):
        raise FeatureValueError(
            f"query for {table}.{feature} (embedding): an all-zero vector has no direction, so no cosine distance"
        )
    if features is None:
        returned: tuple[Feature, ...] = ()
    elif features == ALL:
        returned = t.features
    else:
        returned = t.select([features] if isinstance(features, str) else list(features)) if features else ()
    filters, values = _where(t, where or {})
    return NearestRequest(t, f, returned, filters, values, vector, k, ef_search, bool(exact))


def _where(table: FeatureTable, where: Mapping[str, Any]) -> tuple[tuple[tuple[Feature, str], ...], tuple[Any, ...]]:
    if not isinstance(where, Mapping):
        raise NearestError(f"where must be a mapping of feature to value, got {type(where).__name__}")
    filters: list[tuple[Feature, str]] = []
    values: list[Any] = []
    for name in sorted(where):
        feature = table.feature(name)  # UnknownFeatureError names the valid ones
        if feature.name == UPDATED_AT or feature.type.kind in ("list", EMBEDDING):
            comparable = [f.name for f in table.features if f.type.kind not in ("list", EMBEDDING)]
            raise NearestError(
                f"where: {table.name}.{name} cannot be filtered on (equality filters take scalar, string and "
                f"timestamp features: {', '.join(comparable) or 'none'})"
            )
        value = where[name]
        where_ = f"where {table.name}.{name}"
        if value is None:
            filters.append((feature, "null"))
            continue
        if isinstance(value, (list, tuple, set, frozenset)):
            if not value:
                raise NearestError(f"{where_}: an empty list matches no row")
            items = [check_value(where_, feature.type, v) for v in value]
            if any(v is None for v in items):
                raise NearestError(f"{where_}: a list of values may not hold null (NaN or None)")
            filters.append((feature, "in"))
            values.append(items)
            continue
        checked = check_value(where_, feature.type, value)
        if checked is None:  # NaN under nan="reject" raises; nothing else maps to None
            raise NearestError(f"{where_}: {value!r} matches no row")
        filters.append((feature, "eq"))
        values.append(checked)
    return tuple(filters), tuple(values)


# -- the statement --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Neighbour:
    """One neighbour: its key (as the entity's column holds it: bytes, int, str or UUID), its distance
    (smaller is nearer; see the module docstring) and the requested features of its row."""

    key: Any
    distance: float
    features: dict[str, Any]


@dataclass(frozen=True)
class Nearest:
    """The answer to ``nearest``: the neighbours, nearest first, and how they were found: ``search``
    (``"hnsw"`` or ``"exact"``), ``ef_search`` (the value in effect for an HNSW search, else None)."""

    table: str
    feature: str
    metric: str
    search: str
    ef_search: int | None
    neighbours: tuple[Neighbour, ...]

    @property
    def keys(self) -> list[Any]:
        return [n.key for n in self.neighbours]

    @property
    def distances(self) -> list[float]:
        return [n.distance for n in self.neighbours]

    def __iter__(self) -> Iterator[Neighbour]:
        return iter(self.neighbours)

    def __len__(self) -> int:
        return len(self.neighbours)

    def __getitem__(self, i: int) -> Neighbour:
        return self.neighbours[i]


@dataclass(frozen=True)
class NearestReader:
    """A compiled nearest-neighbour statement (``compile_nearest``): ``statement`` takes
    ``params(request)``; ``decode(rows)`` makes the answer (raising ExactSearchRefusedError past the
    limit)."""

    statement: bytes
    search: str
    table: str
    feature: str
    metric: str
    limit: int
    features: tuple[Feature, ...]
    decoder: TableDecoder

    @property
    def tables(self) -> tuple[str, ...]:
        return (self.table,)

    def params(self, request: NearestRequest) -> tuple[Any, ...]:
        """The statement's parameters: query, k, then ef_search (HNSW) or the exact limit, then ``where``'s values."""
        third = request.ef_search if self.search == HNSW else self.limit
        return (request.query, request.k, third, *request.values)

    def decode(self, rows: Sequence[Row]) -> Nearest:
        """The fetched rows as a Nearest. Raises ExactSearchRefusedError when the exact search's count passed the limit."""
        head = rows[0][0] if rows else None
        if self.search == EXACT and head is not None and head > self.limit:
            raise ExactSearchRefusedError(
                f"exact nearest-neighbour search refused: {self.table} has more than {self.limit:,} rows "
                f'(exact_limit); declare {self.feature} with index = "hnsw" (pgvector) and run `pgfeatures '
                "init`/`apply`, or raise the store's exact_limit"
            )
        values = self.decoder.values
        out = tuple(Neighbour(r[1], r[2], values(r[3:])) for r in rows if r[1] is not None)
        return Nearest(self.table, self.feature, self.metric, self.search, head if self.search == HNSW else None, out)


def search_of(request: NearestRequest, facts: VectorFacts) -> str:
    """``hnsw`` when the feature declares the index, the database has a usable one, and exact search was not asked for."""
    usable = request.feature.type.index == HNSW and facts.index and facts.storage != "array"
    return HNSW if usable and not request.exact else EXACT


def compile_nearest(
    schema: str, request: NearestRequest, facts: VectorFacts, exact_limit: int = DEFAULT_EXACT_LIMIT
) -> NearestReader:
    """The statement answering requests of ``request.shape`` on a database with ``facts``."""
    search = search_of(request, facts)
    table, feature = request.table, request.feature
    ident = sql.Identifier(schema, table.name)
    key = table.key_column
    cols = [column_sql(f, "t") for f in request.features]
    filters = _filters(request, "t", start=4)
    if table.ttl is not None:
        filters.insert(0, fresh_sql(table.ttl, "t"))
    filters.insert(0, sql.SQL("{} IS NOT NULL").format(sql.Identifier("t", feature.name)))
    if search == HNSW:
        statement = _hnsw_sql(ident, key, request, facts, cols, filters)
    else:
        statement = _exact_sql(ident, key, request, facts, cols, filters)
    decoder = TableDecoder((Part(RAW, request.features),), request.features)
    return NearestReader(
        statement.as_bytes(None),
        search,
        table.name,
        feature.name,
        request.metric,
        exact_limit,
        request.features,
        decoder,
    )


def _filters(request: NearestRequest, alias: str, start: int) -> list[sql.Composable]:
    out: list[sql.Composable] = []
    n = start
    for feature, op in request.where:
        col = sql.Identifier(alias, feature.name)
        if op == "null":
            out.append(sql.SQL("{} IS NULL").format(col))
            continue
        cast = _cast(feature)
        if op == "in":
            out.append(sql.SQL("{} = ANY(${}::{}[])").format(col, sql.SQL(str(n)), cast))
        else:
            out.append(sql.SQL("{} = ${}::{}").format(col, sql.SQL(str(n)), cast))
        n += 1
    return out


def _cast(feature: Feature) -> sql.Composable:
    """The type a ``where`` parameter is cast to (a string compares as text with its varchar column)."""
    if feature.type.kind == "string":
        return sql.SQL("text")
    return sql.SQL(feature.type.name)


def _vector_type(request: NearestRequest, facts: VectorFacts) -> str:
    kind = "halfvec" if facts.storage == "halfvec" else "vector"
    return f"{kind}({request.feature.type.dim})"


def _hnsw_sql(
    ident: sql.Identifier,
    key: str,
    request: NearestRequest,
    facts: VectorFacts,
    cols: list[sql.Composable],
    filters: list[sql.Composable],
) -> sql.Composed:
    vtype = sql.SQL(_vector_type(request, facts))
    distance = sql.SQL("{} {} $1::float4[]::{}").format(
        sql.Identifier("t", request.feature.name), sql.SQL(OPERATORS[request.metric]), vtype
    )
    settings = [
        sql.SQL(
            "set_config('hnsw.ef_search', coalesce($3::int4, greatest(coalesce(current_setting('hnsw.ef_search', "
            "true)::int4, 40), $2::int4))::text, true)::int4 AS ef"
        )
    ]
    gates = [sql.SQL("g.ef IS NOT NULL")]
    if facts.iterative:  # rows the ttl or where drop are made up for, in distance order
        settings.append(sql.SQL("set_config('hnsw.iterative_scan', 'strict_order', true) AS it"))
        gates.append(sql.SQL("g.it IS NOT NULL"))
    return sql.SQL(
        "SELECT g.ef, s.* FROM (SELECT {settings}) g LEFT JOIN LATERAL ("
        "SELECT t.{key}, {distance} AS d{cols} FROM {table} t WHERE {where} ORDER BY {distance} LIMIT $2::int8"
        ") s ON true"
    ).format(
        settings=sql.SQL(", ").join(settings),
        key=sql.Identifier(key),
        distance=distance,
        cols=sql.SQL("").join(sql.SQL(", {}").format(c) for c in cols),
        table=ident,
        # NaN sorts after every number in PostgreSQL: a distance pgvector could not compute (a zero vector
        # under cosine, a row written around pgfeatures' checks) is no neighbour, never ranked among them.
        where=sql.SQL(" AND ").join([*gates, *filters, sql.SQL("{} < 'NaN'::float8").format(distance)]),
    )


def _exact_distance(request: NearestRequest, facts: VectorFacts) -> sql.Composable:
    """The distance of row ``t`` to the query ``$1``: pgvector's operator where the extension is
    installed, else SQL arithmetic in float8 (a zero vector's cosine distance is NULL: no neighbour)."""
    col = sql.Identifier("t", request.feature.name)
    metric = request.metric
    if facts.pgvector is not None:
        vtype = sql.SQL(_vector_type(request, facts))
        left = sql.SQL("{}::{}").format(col, vtype) if facts.storage == "array" else col
        return sql.SQL("({} {} $1::float4[]::{})").format(left, sql.SQL(OPERATORS[metric]), vtype)
    aggregate = {
        "l2": "sqrt(sum((u.a - u.b) * (u.a - u.b)))",
        "ip": "-sum(u.a * u.b)",
        "cosine": "1 - sum(u.a * u.b) / nullif(sqrt(sum(u.a * u.a)) * sqrt(sum(u.b * u.b)), 0)",
    }[metric]
    return sql.SQL("(SELECT {} FROM unnest({}::float8[], $1::float4[]::float8[]) AS u(a, b))").format(
        sql.SQL(aggregate), col
    )


def _exact_sql(
    ident: sql.Identifier,
    key: str,
    request: NearestRequest,
    facts: VectorFacts,
    cols: list[sql.Composable],
    filters: list[sql.Composable],
) -> sql.Composed:
    # The count reads at most exact_limit + 1 rows; the scan runs only when it stayed within the limit
    # (``g.n <= $3``, a one-time filter). OFFSET 0 keeps the distances computed per row, never by an index,
    # and the neighbours' features read by one key lookup each (LATERAL), not for every row scanned.
    k = sql.Identifier(key)
    features: sql.Composable = sql.SQL("")
    if cols:
        features = sql.SQL(" CROSS JOIN LATERAL (SELECT {cols} FROM {table} t WHERE t.{k} = top.k OFFSET 0) f").format(
            cols=sql.SQL(", ").join(cols), table=ident, k=k
        )
    return sql.SQL(
        "SELECT g.n, s.* FROM (SELECT count(*) AS n FROM (SELECT FROM {table} LIMIT $3::int8 + 1) c) g "
        "LEFT JOIN LATERAL ("
        "SELECT top.k, top.d{more} FROM ("
        "SELECT a.k, a.d FROM (SELECT t.{k} AS k, {distance} AS d FROM {table} t WHERE g.n <= $3::int8 AND {where} "
        "OFFSET 0) a WHERE a.d <> 'NaN'::float8 ORDER BY a.d, a.k LIMIT $2::int8"
        ") top{features} ORDER BY top.d, top.k"
        ") s ON true"
    ).format(
        table=ident,
        k=k,
        more=sql.SQL(", f.*" if cols else ""),
        features=features,
        distance=_exact_distance(request, facts),
        where=sql.SQL(" AND ").join(filters),
    )
