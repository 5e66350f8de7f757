"""The managed-PostgreSQL test harness (``pgfeatures_bench.harness.clusters``), against real processes.

Private clusters with password (scram-sha-256) logins, a streaming replica
made with pg_basebackup, Debian's PgBouncer in session and transaction modes,
and the faults the store must survive: restart, kill -9 of the postmaster, a
crashed backend, terminated connections, password rotation, replica stop and
start. The PgBouncer tests skip only when /usr/sbin/pgbouncer is absent.

Two tests document PgBouncer 1.18's transaction mode, like
tests/test_pipeline_pitfall.py does for pipelines: named prepared statements
(psycopg ``prepare_threshold=0``) and session settings do not follow the
client; ``prepare_threshold=None`` works.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgfeatures.connections import connect, unavailable
from pgfeatures.errors import AuthenticationError, DatabaseUnavailableError
from pgfeatures_bench.harness.clusters import Cluster, ClusterError, PgBouncer, Replica, process_stats
from pgfeatures_bench.harness.pgbouncer import find_pgbouncer
from pgfeatures_bench.harness.procs import pid_alive, reap_orphans, wait_for

pytestmark = pytest.mark.cluster

needs_pgbouncer = pytest.mark.skipif(
    find_pgbouncer() is None,
    reason="PgBouncer is not installed (/usr/sbin/pgbouncer: apt-get install pgbouncer, as .ci/run does)",
)

RECOVERY_BOUND = 2.0  # seconds after the database is back (the bound); PgBouncer's default server_login_retry (15 s) exceeds it


@pytest.fixture(scope="module")
def primary() -> Iterator[Cluster]:
    """Shared by the tests that leave it as they found it (running, same passwords)."""
    with Cluster(replication=True, name="shared") as cluster:
        cluster.create_role("app", "app-password")
        cluster.execute("CREATE TABLE public.items (id int PRIMARY KEY, label text)")
        cluster.execute("GRANT ALL ON public.items TO app")
        yield cluster


@pytest.fixture(scope="module")
def replica(primary: Cluster) -> Iterator[Replica]:
    with primary.replica(slot=True) as standby:
        yield standby


@pytest.fixture()
def cluster() -> Iterator[Cluster]:
    """A cluster of the test's own, for faults."""
    with Cluster(name="faults") as c:
        c.create_role("app", "app-password")
        yield c


def one(dsn: str, query: str = "SELECT current_user", **kwargs: object) -> object:
    kwargs.setdefault("connect_timeout", 5)
    with psycopg.connect(dsn, autocommit=True, **kwargs) as conn:  # type: ignore[arg-type]
        return conn.execute(query).fetchone()[0]  # type: ignore[index]


def one_after_kill(dsn: str, attempts: int = 3) -> object:
    """``one(dsn)`` through a pooler whose server connections were just terminated: each attempt may meet
    one of them (AdminShutdown), which the pooler then drops; a login that fails is not retried."""
    for attempt in range(attempts):
        try:
            return one(dsn)
        except psycopg.errors.AdminShutdown:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def first_success(dsn: str, within: float) -> float:
    """Seconds until a new connection through ``dsn`` runs a query; fails the test after ``within``."""
    t0 = time.monotonic()
    while True:
        try:
            one(dsn, "SELECT 1", connect_timeout=2)
            return time.monotonic() - t0
        except psycopg.Error as exc:
            assert time.monotonic() - t0 < within, f"still failing {within:g}s after the database came back: {exc}"
            time.sleep(0.02)


# -- password logins ------------------------------------------------------------------------------


def test_password_login_and_wrong_password_is_an_authentication_error(primary: Cluster) -> None:
    assert one(primary.dsn("app")) == "app"
    with pytest.raises(AuthenticationError, match="refused the credentials"):
        connect(primary.dsn("app", "wrong"), connect_timeout=5)
    with pytest.raises(psycopg.OperationalError) as raised:
        psycopg.connect(primary.dsn("app", "wrong"), connect_timeout=5)
    assert isinstance(unavailable(primary.dsn("app", "wrong"), raised.value), AuthenticationError)
    with pytest.raises(AuthenticationError):  # the superuser has no password: only the unix socket admits it
        connect(primary.dsn("postgres", "anything"), connect_timeout=5)
    # with password logins PostgreSQL reports a missing role as a failed password: it stays a refused login
    with pytest.raises(AuthenticationError, match="password authentication failed"):
        connect(primary.dsn("nobody_here", "anything"), connect_timeout=5)
    assert one(primary.admin_dsn()) == "postgres"


def test_rotation_refuses_the_old_password_for_new_connections_only(primary: Cluster) -> None:
    primary.create_role("rotating", "first")
    with psycopg.connect(primary.dsn("rotating"), autocommit=True) as opened:
        primary.set_password("rotating", "second")
        with pytest.raises(AuthenticationError):
            connect(primary.dsn("rotating", "first"), connect_timeout=5)
        assert one(primary.dsn("rotating")) == "rotating"  # dsn() follows the rotation
        assert one(primary.dsn("rotating", "second")) == "rotating"
        assert opened.execute("SELECT 1").fetchone() == (1,)  # checked at login only


@needs_pgbouncer
def test_pgbouncer_tls_endpoint_refuses_plain_tcp(primary: Cluster) -> None:
    with PgBouncer(primary, pool_mode="transaction", tls=True) as bouncer:
        assert "sslmode=require" in bouncer.dsn("app")
        with psycopg.connect(bouncer.dsn("app"), connect_timeout=5) as conn:
            assert conn.pgconn.ssl_in_use
        with pytest.raises(DatabaseUnavailableError, match="SSL required"):
            connect(bouncer.dsn("app", sslmode="disable"), connect_timeout=5)


@needs_pgbouncer
def test_pgbouncer_ssl_required_is_an_authentication_error(primary: Cluster) -> None:
    with PgBouncer(primary, pool_mode="transaction", tls=True) as bouncer:
        with pytest.raises(AuthenticationError):
            connect(bouncer.dsn("app", sslmode="disable"), connect_timeout=5)


def test_tls_cluster_needs_a_build_with_openssl() -> None:
    from pgfeatures.embedded import server_binaries
    from pgfeatures_bench.harness.procs import run

    if "openssl" in run([str(server_binaries() / "pg_config"), "--configure"]).stdout:
        with Cluster(tls=True, name="tls") as c:
            c.create_role("app", "pw")
            assert one(c.dsn(), "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is True
            with pytest.raises(AuthenticationError):
                connect(c.dsn(sslmode="disable"), connect_timeout=5)
    else:
        with pytest.raises(ClusterError, match="no SSL support.*PgBouncer"):
            Cluster(tls=True, name="tls")


# -- connections and processes --------------------------------------------------------------------


def test_connections_terminate_and_process_stats(primary: Cluster) -> None:
    victims = [psycopg.connect(primary.dsn(application_name="victim"), autocommit=True) for _ in range(3)]
    try:
        assert primary.connections(application_name="victim") == 3
        assert primary.connections(user="app") >= 3
        assert primary.terminate(application_name="victim") == 3
        for conn in victims:
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        assert primary.connections(application_name="victim") == 0
    finally:
        for conn in victims:
            conn.close()
    stats = primary.stats()
    assert stats.pid == primary.pid() and stats.rss_bytes > 0 and stats.open_fds > 0 and stats.threads >= 1
    with pytest.raises(ProcessLookupError):
        process_stats(2**22 + 1)  # above the kernel's pid_max: no such process


def test_kill9_then_start_recovers_committed_data(cluster: Cluster) -> None:
    cluster.execute("CREATE TABLE t (v int)")
    cluster.execute("INSERT INTO t VALUES (42)")
    survivor = psycopg.connect(cluster.dsn(), autocommit=True)
    pid = cluster.pid()
    cluster.kill9()
    assert not cluster.is_running() and pid is not None and not pid_alive(pid)
    with pytest.raises(psycopg.OperationalError):
        survivor.execute("SELECT 1")
    survivor.close()
    cluster.start()
    assert cluster.execute("SELECT v FROM t") == [(42,)]
    assert "automatic recovery in progress" in cluster.logfile.read_text()  # crash recovery, not a clean start


def test_crashed_backend_resets_every_connection_and_the_server_recovers(cluster: Cluster) -> None:
    bystander = psycopg.connect(cluster.dsn(), autocommit=True)
    cluster.crash_backend()
    with pytest.raises(psycopg.OperationalError):
        bystander.execute("SELECT 1")  # the postmaster ended it too: shared memory may be corrupt
    bystander.close()
    assert one(cluster.dsn()) == "app"
    assert "terminated by signal 9" in cluster.logfile.read_text()


def test_a_killed_owner_leaves_nothing_running() -> None:
    script = (
        "import os; from pgfeatures_bench.harness.clusters import Cluster, PgBouncer; c = Cluster(name='orphan');"
        " c.create_role('app', 'pw'); pids = [c.pid()]; dirs = [c.base]\n"
        "if PgBouncer.available(): b = PgBouncer(c); pids.append(b.pid); dirs.append(b.base)\n"
        "print(*pids, flush=True); print(*dirs, flush=True); os._exit(0)"
    )  # no atexit, as if killed
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    pid_line, dir_line = child.stdout.splitlines()
    pids, dirs = [int(p) for p in pid_line.split()], [Path(d) for d in dir_line.split()]
    assert all(pid_alive(p) for p in pids) and all(d.exists() for d in dirs)
    assert set(dirs) <= set(reap_orphans())
    assert not any(pid_alive(p) for p in pids) and not any(d.exists() for d in dirs)


def test_errors_name_the_failure_and_include_the_log() -> None:
    with pytest.raises(ClusterError, match=r"postgres\.log|invalid value|unrecognized"):
        Cluster(settings={"shared_buffers": "lots"}, name="broken")
    with pytest.raises(ClusterError, match="replication=True"):
        with Cluster(name="norepl", start=False) as c:
            c.replica()


# -- replica --------------------------------------------------------------------------------------


def test_replica_streams_rows_written_on_the_primary(primary: Cluster, replica: Replica) -> None:
    primary.execute("INSERT INTO public.items VALUES (1, 'one')")
    replica.wait_caught_up(timeout=30)
    assert one(replica.dsn("app"), "SELECT label FROM public.items WHERE id = 1") == "one"
    assert replica.lag_seconds() == 0.0
    assert one(replica.dsn("app"), "SELECT pg_is_in_recovery()") is True
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        one(replica.dsn("app"), "INSERT INTO public.items VALUES (2, 'two') RETURNING id")


def test_stopped_replica_catches_up_through_its_slot(primary: Cluster, replica: Replica) -> None:
    replica.stop()
    with pytest.raises(psycopg.OperationalError):
        one(replica.dsn("app"), connect_timeout=2)
    primary.execute("INSERT INTO public.items VALUES (3, 'while the replica was down')")
    replica.start()
    replica.wait_caught_up(timeout=30)
    assert one(replica.dsn("app"), "SELECT label FROM public.items WHERE id = 3") == "while the replica was down"
    assert primary.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", [replica.slot]) == [(True,)]


# -- PgBouncer ------------------------------------------------------------------------------------


@needs_pgbouncer
@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_pgbouncer_passes_queries_and_refuses_a_wrong_password(primary: Cluster, mode: str) -> None:
    with PgBouncer(primary, pool_mode=mode) as bouncer:
        assert one(bouncer.dsn("app"), "SELECT current_user || ' ' || inet_server_port()") == f"app {primary.port}"
        with pytest.raises(AuthenticationError):
            connect(bouncer.dsn("app", "wrong"), connect_timeout=5)
        pools = {p["user"]: p for p in bouncer.pools()}
        assert pools["app"]["pool_mode"] == mode
        clients = [psycopg.connect(bouncer.dsn("app"), autocommit=True) for _ in range(4)]
        with_clients = bouncer.stats().open_fds
        for c in clients:
            c.close()
        # one socket per client, all in the one PgBouncer process, released when the client leaves
        wait_for(lambda: bouncer.stats().open_fds <= with_clients - 4, 5, "PgBouncer to close 4 client sockets")


@needs_pgbouncer
def test_pgbouncer_auth_query_follows_a_rotation_without_reload(primary: Cluster) -> None:
    primary.create_role("rotq", "old")
    with PgBouncer(primary, pool_mode="transaction", auth="query") as bouncer:
        with psycopg.connect(bouncer.dsn("rotq"), autocommit=True) as opened:
            primary.set_password("rotq", "new")
            with pytest.raises(AuthenticationError):
                connect(bouncer.dsn("rotq", "old"), connect_timeout=5)
            assert one(bouncer.dsn("rotq", "new")) == "rotq"
            primary.terminate(user="rotq")  # PgBouncer must log into the server again, with the new keys
            # PgBouncer notices a server connection was terminated only when it next uses it: the first
            # client after the kill may get that connection's AdminShutdown (every client retries that).
            assert one_after_kill(bouncer.dsn("rotq", "new")) == "rotq"
            assert opened.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.timing  # RECOVERY_BOUND
@needs_pgbouncer
def test_pgbouncer_auth_file_follows_a_rotation_after_rewrite_and_reload(primary: Cluster) -> None:
    primary.create_role("rotf", "old")
    with PgBouncer(primary, pool_mode="transaction", auth="file") as bouncer:
        assert one(bouncer.dsn("rotf")) == "rotf"
        primary.set_password("rotf", "new")
        with pytest.raises(AuthenticationError):  # PgBouncer's auth_file still has the old one
            connect(bouncer.dsn("rotf", "new"), connect_timeout=5)
        bouncer.set_password("rotf", "new")  # rewrite + RELOAD
        primary.terminate(user="rotf")
        first_success(bouncer.dsn("rotf", "new"), within=RECOVERY_BOUND)
        with pytest.raises(AuthenticationError):
            connect(bouncer.dsn("rotf", "old"), connect_timeout=5)


@pytest.mark.timing  # RECOVERY_BOUND
@needs_pgbouncer
@pytest.mark.parametrize("mode", ["session", "transaction"])
@pytest.mark.parametrize("fault", ["restart", "kill9"])
def test_pgbouncer_recovers_promptly_after_the_database_comes_back(
    cluster: Cluster, mode: str, fault: str, record_property: pytest.RecordProperty
) -> None:
    with PgBouncer(cluster, pool_mode=mode) as bouncer:
        held = psycopg.connect(bouncer.dsn(), autocommit=True, prepare_threshold=None)
        held.execute("SELECT 1")  # in session mode, this links it to a server connection
        cluster.stop() if fault == "restart" else cluster.kill9()
        # A client arrives while the database is down: PgBouncer's server login fails, and it
        # waits server_login_retry before trying again (15 s by default, which fails this test).
        with pytest.raises(psycopg.OperationalError):
            one(bouncer.dsn(), "SELECT 1", connect_timeout=1)
        cluster.start()
        took = first_success(bouncer.dsn(), within=RECOVERY_BOUND)
        record_property("recovery_s", round(took, 3))
        print(f"\n{mode} mode, {fault}: new connections through PgBouncer work {took:.2f}s after the database is back")
        if mode == "transaction":  # the client connection outlives its server connection
            assert held.execute("SELECT 1").fetchone() == (1,)
        else:
            with pytest.raises(psycopg.OperationalError):
                held.execute("SELECT 1")
        held.close()


@pytest.fixture(scope="module")
def one_server_connection(primary: Cluster) -> Iterator[PgBouncer]:
    """Transaction mode with a pool of one server connection: every client shares it, as under load."""
    if find_pgbouncer() is None:
        pytest.skip("PgBouncer is not installed (apt-get install pgbouncer)")
    with PgBouncer(primary, pool_mode="transaction", settings={"default_pool_size": 1}) as bouncer:
        yield bouncer


def terminate_app_and_settle(bouncer: PgBouncer, primary: Cluster, timeout: float = 5) -> None:
    """Terminate app's server connections and wait until PgBouncer has seen them end.

    A client statement that reaches PgBouncer before it has read the backend's FATAL is sent on
    the dying server connection: the client gets AdminShutdown and, in transaction mode, is
    closed with it. That race is PgBouncer's, not what these tests are about.
    """
    primary.terminate(user="app")
    deadline = time.monotonic() + timeout
    while any(
        p["user"] == "app" and p["sv_active"] + p["sv_idle"] + p["sv_used"] + p["sv_tested"] for p in bouncer.pools()
    ):
        assert time.monotonic() < deadline, f"PgBouncer still holds app's server connections: {bouncer.pools()}"
        time.sleep(0.02)


def test_transaction_mode_breaks_named_prepared_statements(one_server_connection: PgBouncer, primary: Cluster) -> None:
    dsn = one_server_connection.dsn("app")
    with (
        psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as a,
        psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as b,
    ):
        assert a.execute("SELECT 1").fetchone() == (1,)  # Parse "_pg3_0" on the one server connection
        with pytest.raises(
            psycopg.errors.DuplicatePreparedStatement, match='prepared statement "_pg3_0" already exists'
        ):
            b.execute("SELECT 2")  # b's own first statement is also "_pg3_0"
    terminate_app_and_settle(one_server_connection, primary)  # a fresh server connection: no "_pg3_0" on it
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as c:
        assert c.execute("SELECT 3").fetchone() == (3,)
        terminate_app_and_settle(
            one_server_connection, primary
        )  # the server connection is replaced, and "_pg3_0" with it
        for _ in range(3):  # psycopg still believes it is prepared: the connection never heals
            with pytest.raises(psycopg.errors.InvalidSqlStatementName, match='"_pg3_0" does not exist'):
                c.execute("SELECT 3")


def test_transaction_mode_breaks_psycopg_default_threshold_too(
    one_server_connection: PgBouncer, primary: Cluster
) -> None:
    terminate_app_and_settle(one_server_connection, primary)
    with psycopg.connect(one_server_connection.dsn("app"), autocommit=True) as conn:  # prepare_threshold=5
        for i in range(6):  # the fifth execution of the same statement prepares it
            assert conn.execute("SELECT %s::int", [i]).fetchone() == (i,)
        terminate_app_and_settle(
            one_server_connection, primary
        )  # a restart, server_lifetime or a lost backend would do the same
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            conn.execute("SELECT %s::int", [6])


def test_transaction_mode_works_with_unnamed_statements(one_server_connection: PgBouncer, primary: Cluster) -> None:
    dsn = one_server_connection.dsn("app")
    with (
        psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as a,
        psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as b,
    ):
        for i in range(10):  # past psycopg's default threshold (5), where it would prepare
            assert a.execute("SELECT %s::int", [i]).fetchone() == (i,)
            assert b.execute("SELECT %s::int + 100", [i]).fetchone() == (i + 100,)
        terminate_app_and_settle(one_server_connection, primary)
        for conn, query, want in ((a, "SELECT %s::int", 7), (b, "SELECT %s::int + 100", 107)):
            for _ in range(3):  # on the new server connection every statement works (named ones fail for good)
                assert conn.execute(query, [7]).fetchone() == (want,)


def test_transaction_mode_session_settings_follow_the_server_connection(one_server_connection: PgBouncer) -> None:
    dsn = one_server_connection.dsn("app")
    with (
        psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as a,
        psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as b,
    ):
        a.execute("SET plan_cache_mode = force_generic_plan")  # a session setting, e.g. the store's read setup
        assert b.execute("SHOW plan_cache_mode").fetchone() == ("force_generic_plan",)  # another client has it
        b.execute("RESET plan_cache_mode")
        assert a.execute("SHOW plan_cache_mode").fetchone() == ("auto",)  # and the first one lost it


def test_unavailable_classifies_a_down_pgbouncer_as_unavailable_not_auth(primary: Cluster) -> None:
    if find_pgbouncer() is None:
        pytest.skip("PgBouncer is not installed (apt-get install pgbouncer)")
    bouncer = PgBouncer(primary, start=False)
    with bouncer:
        with pytest.raises(DatabaseUnavailableError) as raised:
            connect(bouncer.dsn("app"), connect_timeout=2)
        assert not isinstance(raised.value, AuthenticationError)
        bouncer.start()
        assert one(bouncer.dsn("app")) == "app"
        assert bouncer.restart() > 0 and one(bouncer.dsn("app")) == "app"
