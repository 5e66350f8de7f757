"""Names pgfeatures keeps for itself, and names it derives (pure).

Everything pgfeatures creates besides the feature tables starts with ``_pgf_`` (serving tables,
their triggers, functions and guard views, staging and swap tables, read functions), so a table,
feature, service or entity of that name is refused at definition time: it could be taken for an
internal object, or collide with one. So are the few plain names internal tables use for columns
that sit beside the user's: a feature named ``seq`` (the loader's staging table numbers its rows
``seq``) and, for an entity read by a materialized service, a key column named like a serving
row's arrays (``r``, ``d``, ``i``, ``ts``).

Derived names never exceed PostgreSQL's 63 bytes (it would truncate them silently, and the name
pgfeatures looks for would not be the one it made): ``derived`` shortens the readable part and
keeps them apart with a hash.
"""

from __future__ import annotations

import hashlib

from ..errors import DefinitionError

RESERVED_PREFIX = "_pgf_"
STAGE_COLUMNS = frozenset({"seq"})
MAX_IDENTIFIER = 63  # bytes


def check_not_reserved(kind: str, name: str) -> str:
    """``name`` unless it starts with the internal prefix; else DefinitionError naming the rule."""
    if name.startswith(RESERVED_PREFIX):
        raise DefinitionError(
            f"invalid {kind} name {name!r}: names starting with {RESERVED_PREFIX!r} are reserved for "
            "pgfeatures' own objects (serving tables, triggers, staging tables)"
        )
    return name


def derived(base: str, suffix: str) -> str:
    """``base + suffix``, or when that exceeds 63 bytes, ``base`` shortened plus a hash of the whole
    before ``suffix``: never truncated by PostgreSQL, and two long bases stay apart."""
    name = base + suffix
    if len(name.encode()) <= MAX_IDENTIFIER:
        return name
    digest = "_" + hashlib.sha256(name.encode()).hexdigest()[:8]
    room = MAX_IDENTIFIER - len(suffix.encode()) - len(digest)
    return base.encode()[:room].decode(errors="ignore") + digest + suffix
