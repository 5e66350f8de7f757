"""``pgfeatures doctor``: check, against the live database, what fast reads depend on.

Each check returns findings (one per feature table, or one for the server) with a status
(pass / warn / fail), the measured value, advice, and the SQL that fixes it when a statement is
safe to run as-is (VACUUM, ANALYZE, pg_prewarm, resetting a disabled autovacuum):
``Report.fixes``. Changes that need a decision (a column type, a server setting) are advice only.

Split in two, so that every verdict can be tested and explained from data:

- ``facts``: the SQL that gathers (catalog, statistics, a probe of the real statements, what a
  serving connection has prepared, fresh dead-row counts where the counters are doubted);
- ``materialized``: the facts of materialized services (state, triggers, and a sample of serving
  rows compared with a fresh table-by-table read of the same keys);
- ``checks``: pure functions of those facts (the checks, in order, are listed there);
- ``report``: ``Finding`` and ``Report``.

The cache and index-only verdicts come from a probe (see ``pgfeatures.warmup``): the store's batch
statement at random places of every table (or the hot keys), counted with the transaction's own
block counters, then under EXPLAIN (ANALYZE, BUFFERS) for real keys from the table's statistics,
with sequential and bitmap scans disabled so that a small table shows the plan its lookups get
once it is big. The cumulative ``pg_statio_*`` ratio is reported next to it but does not decide:
it survives restarts and is dominated by history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ..connections import connect, resolve_dsn
from ..definitions import Registry
from ..store import FeatureStore
from .checks import CHECKS, DEAD_WARN, evaluate
from .facts import (
    Column,
    DeadRows,
    Facts,
    Index,
    PreparedFacts,
    ServerFacts,
    TableFacts,
    gather,
    open_store_facts,
    prepared_facts,
    serving_registry,
)
from .materialized import DEFAULT_SAMPLE, Difference, RowDifference, ServiceFacts, materialized_facts
from .report import SERVER, Finding, Report, Status

__all__ = [
    "CHECKS",
    "DEFAULT_SAMPLE",
    "SERVER",
    "Column",
    "DeadRows",
    "Difference",
    "ServiceFacts",
    "Facts",
    "Finding",
    "Index",
    "PreparedFacts",
    "Report",
    "RowDifference",
    "ServerFacts",
    "Status",
    "TableFacts",
    "diagnose",
    "evaluate",
    "gather",
    "materialized_facts",
    "prepared_facts",
]


def diagnose(
    registry: Registry,
    dsn: str | None = None,
    *,
    hot_keys: Sequence[bytes] = (),
    store: FeatureStore | None = None,
    sample: int = DEFAULT_SAMPLE,
    full: bool = False,
) -> Report:
    """Run every check. ``store``: an open FeatureStore whose serving connections to inspect
    (default: a one-connection store opened on the usable tables); ``sample``: keys compared per
    entity of every built materialized service (see ``materialized``); ``full``: compare every
    serving row instead (one statement per serving table, reading every row of the tables). Raises
    DatabaseUnavailableError (AuthenticationError for a refused login) when the database cannot
    be reached."""
    dsn = (store.dsn or "") if store is not None else resolve_dsn(dsn)
    with connect(dsn, "pgfeatures-doctor", 10) as conn:
        facts = gather(conn, registry, hot_keys, recount_dead_above=DEAD_WARN)
        services = materialized_facts(registry, dsn, conn, sample=sample, full=full)
    if store is not None:
        prepared = prepared_facts(store)
    else:
        prepared = open_store_facts(serving_registry(registry, facts.tables), dsn)
    return evaluate(replace(facts, prepared=prepared, materialized=services))
