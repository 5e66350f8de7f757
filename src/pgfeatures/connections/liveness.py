"""Whether an idle pooled connection is still there, without a round-trip.

A server that ends a connection while it sits idle in a pool (``pg_terminate_backend``, a
restart, a pooler restart, ``idle_session_timeout``) sends a FATAL message and closes the
socket. Nothing is read until the connection is used, so the next statement sent on it fails,
and for a write one cannot always tell from the failure whether the server ran it first. A
socket that has something to read while the connection is idle has been told something: a
non-blocking poll finds that before anything is sent (microseconds; psycopg_pool's
``check_connection`` costs a round-trip).
"""

from __future__ import annotations

import select

import psycopg
from psycopg import pq


def went_away(conn: psycopg.Connection | psycopg.AsyncConnection) -> bool:
    """True when idle ``conn`` is closed or has unread input (the server's FATAL and end of file,
    or anything else no idle connection should get): it must not be used, and using another is
    safe because nothing was sent on this one. Never blocks, never raises."""
    pgconn = conn.pgconn
    if pgconn.status != pq.ConnStatus.OK or pgconn.transaction_status != pq.TransactionStatus.IDLE:
        return True
    try:
        return _readable(pgconn.socket)
    except (OSError, psycopg.OperationalError):
        return True


def _readable(fd: int) -> bool:
    """Whether ``fd`` has input now. poll(), not select(): select() refuses descriptors past
    FD_SETSIZE (1024), which a busy server's connections reach."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)  # Windows: select() takes sockets of any number
    return bool(readable)
