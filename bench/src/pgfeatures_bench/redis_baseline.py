"""The Redis baseline: the demo's features as Redis hashes, read in one round-trip.

Layout, the fastest we know for this shape: one hash per entity
(``pgfeatures:bench:<schema>:`` + the 32-byte key), one field per table
holding the table's features packed as little-endian float32, so reading k
tables of one entity is one ``HMGET`` (and a batch is one pipeline of them:
one round-trip), and decoding is one ``struct.unpack`` per table. A table
where the entity has no row has no field and decodes to None, as in
pgfeatures. Only the entities the benchmark reads are written, with a TTL,
so a shared Redis is not filled for good.

Redis is optional: ``probe`` says why it cannot be used (no URL, refused,
timeout) and the benchmark then skips its rows.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import redis
from redis.typing import EncodableT, FieldT

from pgfeatures.definitions import Registry
from pgfeatures.demo import entity_key, table_data

# What the readers return: plain dicts (comparable with a FeatureResult, which is one), not FeatureResults.
Features = dict[str, dict[str, Any] | None]

KEY_PREFIX = b"pgfeatures:bench:"
TTL_S = 24 * 3600


def redis_target(url: str) -> tuple[str, int]:
    """The (host, port) a ``redis://`` URL points at."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"not a Redis URL: {url!r} (expected redis://host:port/db)")
    return parts.hostname or "127.0.0.1", parts.port or 6379


def via(url: str, address: tuple[str, int]) -> str:
    """``url`` rewritten to connect to ``address`` (a proxy) instead; credentials and db kept."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@" if userinfo else ""
    return urlunsplit(parts._replace(netloc=f"{netloc}{address[0]}:{address[1]}"))


def connect(url: str, timeout: float = 2.0) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def probe(url: str | None, timeout: float = 2.0) -> str | None:
    """None when Redis at ``url`` answers PING, else why not (what to pass instead)."""
    if not url:
        return "no --redis-url given"
    try:
        redis_target(url)
        client = connect(url, timeout)
        try:
            client.ping()
        finally:
            client.close()
    except (ValueError, redis.RedisError, OSError) as exc:
        return f"Redis at {url} is not usable: {exc}"
    return None


def server_version(client: redis.Redis) -> str:
    info: dict[str, Any] = cast(Any, client.info("server"))  # redis 7.4's stubs type it as maybe-awaitable
    return str(info.get("redis_version", "?"))


class RedisFeatures:
    """The demo registry's features in Redis: ``load`` them, then read with ``reader`` / ``batch_reader``."""

    def __init__(self, client: redis.Redis, registry: Registry):
        self.client = client
        self.registry = registry
        self.prefix = KEY_PREFIX + registry.schema.encode() + b":"

    def load(self, entities: Sequence[int], n_entities: int, seed: int = 0) -> int:
        """Write the given demo entities (ids), exactly as ``demo.load_demo`` generates them. Returns keys written."""
        ids = np.asarray(sorted(set(entities)), dtype=np.int64)
        fields: list[dict[FieldT, EncodableT]] = [{} for _ in ids]
        for ti, table in enumerate(self.registry.tables.values()):
            data = table_data(ti, n_entities, len(table.features), seed)
            pos = np.minimum(np.searchsorted(data.entities, ids), len(data.entities) - 1)
            present = data.entities[pos] == ids
            packed = data.values[pos].astype("<f4")
            name = table.name.encode()
            for at in np.flatnonzero(present):
                fields[at][name] = packed[at].tobytes()
        pipe = self.client.pipeline(transaction=False)
        for i, entity in enumerate(ids):
            key: Any = self.prefix + entity_key(int(entity))  # bytes keys: valid, though redis 7.4's stubs say str
            pipe.delete(key)
            if fields[i]:
                pipe.hset(key, mapping=fields[i])
                pipe.expire(key, TTL_S)
            if i % 500 == 499:
                pipe.execute()
        pipe.execute()
        return len(ids)

    def _decoder(self, tables: Sequence[str]) -> tuple[list[bytes], Callable[[list[bytes | None]], Features]]:
        resolved = self.registry.resolve(tables)
        fields = [t.name.encode() for t in resolved]
        layout = [(t.name, t.feature_names, struct.Struct(f"<{len(t.features)}f").unpack) for t in resolved]

        def decode(values: list[bytes | None]) -> Features:
            return {
                name: dict(zip(names, unpack(v))) if v is not None else None
                for (name, names, unpack), v in zip(layout, values)
            }

        return fields, decode

    def reader(self, tables: Sequence[str]) -> Callable[[bytes], Features]:
        """One key, one HMGET, one round-trip."""
        fields, decode = self._decoder(tables)
        hmget: Any = self.client.hmget  # bytes keys: valid, though redis 7.4's stubs say str
        prefix = self.prefix

        def read(key: bytes) -> Features:
            # bytes, not str: the client does not decode responses
            return decode(cast("list[bytes | None]", hmget(prefix + key, fields)))

        return read

    def batch_reader(self, tables: Sequence[str]) -> Callable[[Sequence[bytes]], list[Features]]:
        """Many keys: one pipeline of HMGETs, one round-trip."""
        fields, decode = self._decoder(tables)
        prefix = self.prefix

        def read_batch(keys: Sequence[bytes]) -> list[Features]:
            pipe: Any = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.hmget(prefix + key, fields)
            return [decode(values) for values in pipe.execute()]

        return read_batch
