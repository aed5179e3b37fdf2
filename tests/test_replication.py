"""The plugin's primary and streaming replica (``pgstore_replica_pair``), and
each of its controls, on real servers: replication, synchronous commits, a
crash and a promotion, a fence, a switchover, the old primary rejoining.

What the assertions pin down is what an app sees during a failover: the
error classes and messages of psycopg2 and libpq, when the server reports a
changed ``default_transaction_read_only`` or ``in_hot_standby``, what a
synchronous commit waits for and what ends that wait.
"""

import os
import threading
import time
from contextlib import closing

import psycopg2
import psycopg2.errors
import pytest

from pytest_pgstore.localdb import find_pg_ctl
from pytest_pgstore.localpair import wait_until

NOT_REPLICATED = (
    "DETAIL:  The transaction has already committed locally, but might not have been replicated to the"
    " standby.\n"
)
SYNC_CANCELLED = "WARNING:  canceling wait for synchronous replication due to user request\n" + NOT_REPLICATED
SYNC_TERMINATED = (
    "WARNING:  canceling the wait for synchronous replication and terminating connection due to"
    " administrator command\n" + NOT_REPLICATED
)
CONNECTION_LOST = "server closed the connection unexpectedly"


@pytest.fixture
def connect():
    """``connect(dsn, autocommit=True)``: a psycopg2 connection, closed after the test."""
    opened = []

    def connect(dsn, autocommit=True):
        conn = psycopg2.connect(dsn, connect_timeout=5)
        conn.autocommit = autocommit
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()


def execute(conn, sql, params=None):
    """The rows of ``sql`` on ``conn`` (None for a statement without)."""
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else None


def run(dsn, sql, params=None):
    """``execute`` on a new autocommit connection to ``dsn``."""
    with closing(psycopg2.connect(dsn, connect_timeout=5)) as conn:
        conn.autocommit = True
        return execute(conn, sql, params)


def on(pair, node):
    """The DSN of the pair's database on ``node``."""
    return node.dsn(pair.dbname)


def make_table(pair):
    run(pair.primary_dsn, "CREATE TABLE notes (id int PRIMARY KEY)")


def insert(dsn, *ids):
    run(dsn, "INSERT INTO notes SELECT unnest(%s::int[])", (list(ids),))


def ids(dsn):
    return [row[0] for row in run(dsn, "SELECT id FROM notes ORDER BY id")]


def port(conn):
    return execute(conn, "SELECT inet_server_port()")[0][0]


def wait_event(node, conn):
    """What the backend of ``conn`` waits for, as ``pg_stat_activity`` shows it."""
    sql = "SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = %s"
    return node.query(sql, (conn.get_backend_pid(),))[0]


class Background(threading.Thread):
    """``call()`` in a thread; ``result()`` waits for it and returns or raises what it did."""

    def __init__(self, call):
        super().__init__(daemon=True)
        self.call, self.value, self.error = call, None, None
        self.start()

    def run(self):
        try:
            self.value = self.call()
        except Exception as exc:  # handed to result()
            self.error = exc

    def result(self, timeout=10):
        self.join(timeout)
        assert not self.is_alive(), "still waiting"
        if self.error is not None:
            raise self.error
        return self.value


def test_writes_on_the_primary_are_read_on_the_replica_which_refuses_writes(pgstore_replica_pair, connect):
    pair = pgstore_replica_pair
    node1, node2 = pair.nodes
    assert (pair.primary, pair.replica) == (node1, node2)
    make_table(pair)
    insert(pair.primary_dsn, 1, 2)
    lsn = pair.current_lsn()
    pair.wait_for_replay()
    assert pair.replayed(lsn)
    assert ids(pair.replica_dsn) == [1, 2]

    replica = connect(pair.replica_dsn)
    assert replica.info.parameter_status("in_hot_standby") == "on"
    assert execute(replica, "SELECT pg_is_in_recovery()") == [(True,)]
    with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction, match="cannot execute INSERT in a read-only"):
        execute(replica, "INSERT INTO notes VALUES (3)")
    # Made by pg_basebackup -R, streaming under its own name.
    conninfo = node2.value("SHOW primary_conninfo")
    assert f"port={node1.port}" in conninfo and "application_name=pgstore_node2" in conninfo
    assert (node2.data / "standby.signal").exists()
    states = node1.query("SELECT application_name, state, sync_state FROM pg_stat_replication")
    assert states == [("pgstore_node2", "streaming", "async")]
    # The multi-host DSN reaches the primary.
    primary = connect(pair.dsn)
    assert port(primary) == node1.port
    assert primary.info.parameter_status("in_hot_standby") == "off"
    if os.geteuid() == 0:
        assert all(os.stat(f"/proc/{node.pid}").st_uid != 0 for node in pair.nodes)


def test_a_synchronous_commit_is_on_the_replica_when_it_returns(pgstore_replica_pair_factory, connect):
    pair = pgstore_replica_pair_factory(synchronous=True)
    assert pair.primary.query("SELECT sync_state FROM pg_stat_replication") == [("sync",)]
    make_table(pair)
    primary, replica = connect(pair.primary_dsn), connect(pair.replica_dsn)
    # remote_apply: readable on the replica as soon as the commit returns.
    execute(primary, "SET synchronous_commit = remote_apply")
    for n in range(1, 21):
        execute(primary, "INSERT INTO notes VALUES (%s)", (n,))
        assert execute(replica, "SELECT count(*) FROM notes") == [(n,)]
    # on (the pair's setting): flushed on the replica, maybe not replayed yet;
    # with replay paused, the commit returns all the same, and is not readable there...
    execute(replica, "SELECT pg_wal_replay_pause()")
    paused = "SELECT pg_get_wal_replay_pause_state() = 'paused'"
    wait_until(lambda: execute(replica, paused)[0][0], 10, "the pause")
    execute(primary, "SET synchronous_commit = on")
    execute(primary, "INSERT INTO notes VALUES (100)")
    assert execute(replica, "SELECT count(*) FROM notes WHERE id = 100") == [(0,)]
    assert pair.lag() > 0
    # ...but it is durable there: promoted after a crash, the replica replays it.
    pair.kill_primary()
    pair.promote()
    assert ids(pair.primary_dsn) == [*range(1, 21), 100]


def test_a_synchronous_commit_waits_for_a_stopped_replica_until_cancelled(
    pgstore_replica_pair_factory, connect
):
    pair = pgstore_replica_pair_factory(synchronous=True)
    make_table(pair)
    pair.replica.stop()
    writer = connect(pair.primary_dsn, autocommit=False)
    execute(writer, "SET statement_timeout = '200ms'")
    writer.commit()
    execute(writer, "INSERT INTO notes VALUES (1)")
    commit = Background(writer.commit)
    wait_until(lambda: wait_event(pair.primary, writer) == ("IPC", "SyncRep"), 10, "the commit to wait")
    time.sleep(0.6)  # three statement timeouts: the timer is off during a commit
    assert commit.is_alive()
    assert ids(pair.primary_dsn) == []  # committed, but seen by no one while it waits
    # pg_cancel_backend: a warning, and the commit returns as a success.
    assert pair.primary.value("SELECT pg_cancel_backend(%s)", (writer.get_backend_pid(),))
    assert commit.result() is None
    assert writer.notices == [SYNC_CANCELLED]
    assert ids(pair.primary_dsn) == [1]
    # pg_terminate_backend: the warning, the connection lost; committed all the same.
    other = connect(pair.primary_dsn)
    insert_two = Background(lambda: execute(other, "INSERT INTO notes VALUES (2)"))
    wait_until(lambda: wait_event(pair.primary, other) == ("IPC", "SyncRep"), 10, "the insert to wait")
    assert pair.primary.value("SELECT pg_terminate_backend(%s)", (other.get_backend_pid(),))
    with pytest.raises(psycopg2.OperationalError, match=CONNECTION_LOST) as lost:
        insert_two.result()
    assert type(lost.value) is psycopg2.OperationalError and lost.value.pgcode is None
    assert other.notices == [SYNC_TERMINATED]
    assert ids(pair.primary_dsn) == [1, 2]
    # Back, the replica catches up with both.
    pair.replica.start()
    pair.wait_for_replay()
    assert ids(pair.replica_dsn) == [1, 2]


def test_after_a_crash_and_a_promotion_the_dsn_reaches_the_new_primary(pgstore_replica_pair, connect):
    pair = pgstore_replica_pair
    old, new = pair.nodes
    make_table(pair)
    insert(pair.dsn, 1)
    pair.wait_for_replay()
    existing = connect(pair.dsn)
    assert port(existing) == old.port

    pair.kill_primary()
    with pytest.raises(psycopg2.OperationalError, match=CONNECTION_LOST) as lost:
        execute(existing, "SELECT 1")
    assert type(lost.value) is psycopg2.OperationalError and lost.value.pgcode is None
    assert existing.closed
    with pytest.raises(psycopg2.InterfaceError, match="connection already closed"):
        execute(existing, "SELECT 1")
    with pytest.raises(psycopg2.OperationalError, match="Connection refused"):
        connect(on(pair, old))
    with pytest.raises(psycopg2.OperationalError) as nowhere:  # the replica is read-only
        connect(pair.dsn)
    assert f"port {old.port} failed: Connection refused" in str(nowhere.value)
    assert f"port {new.port} failed: session is read-only" in str(nowhere.value)

    pair.promote()
    assert (pair.primary, pair.replica) == (new, old)
    assert pair.timings["promote"] < 10
    conn = connect(pair.dsn)
    assert port(conn) == new.port
    assert conn.info.parameter_status("in_hot_standby") == "off"
    execute(conn, "INSERT INTO notes VALUES (2)")
    assert ids(pair.dsn) == [1, 2]


def test_a_fenced_primary_refuses_writes_on_the_connections_it_keeps(pgstore_replica_pair, connect):
    pair = pgstore_replica_pair
    make_table(pair)
    pooled = connect(pair.primary_dsn, autocommit=False)
    execute(pooled, "SELECT 1")
    pooled.commit()
    in_transaction = connect(pair.primary_dsn, autocommit=False)
    execute(in_transaction, "SELECT 1")  # a transaction open across the fence
    assert pooled.info.parameter_status("default_transaction_read_only") == "off"

    pair.fence_primary()
    # The server reports the change with its next answer, not before.
    assert pooled.info.parameter_status("default_transaction_read_only") == "off"
    with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction) as refused:
        execute(pooled, "INSERT INTO notes VALUES (1)")
    assert refused.value.pgcode == "25006"
    assert str(refused.value) == "cannot execute INSERT in a read-only transaction\n"
    assert pooled.info.parameter_status("default_transaction_read_only") == "on"
    assert pooled.info.parameter_status("in_hot_standby") == "off"  # fenced, not a standby
    pooled.rollback()
    # A transaction open at the fence stays read-write; a client may still ask for one.
    execute(in_transaction, "INSERT INTO notes VALUES (2)")
    in_transaction.commit()
    asking = connect(pair.primary_dsn)
    for sql in ("BEGIN READ WRITE", "INSERT INTO notes VALUES (3)", "COMMIT"):
        execute(asking, sql)
    assert ids(pair.primary_dsn) == [2, 3]
    # No server takes writes now: the multi-host DSN finds none.
    with pytest.raises(psycopg2.OperationalError, match="session is read-only"):
        connect(pair.dsn)
    assert "default_transaction_read_only = 'on'" in (pair.primary.data / "postgresql.auto.conf").read_text()
    pair.wait_for_replay()  # the replica goes on replicating
    assert ids(pair.replica_dsn) == [2, 3]


def test_a_switchover_swaps_the_roles_and_loses_nothing(pgstore_replica_pair_factory, connect):
    pair = pgstore_replica_pair_factory(synchronous=True)
    node1, node2 = pair.nodes
    make_table(pair)
    insert(pair.dsn, *range(1, 101))
    writer = connect(pair.primary_dsn, autocommit=False)
    execute(writer, "INSERT INTO notes VALUES (1000)")  # open across the switchover
    on_replica = connect(pair.replica_dsn)
    assert on_replica.info.parameter_status("in_hot_standby") == "on"

    pair.switchover()
    assert (pair.primary, pair.replica) == (node2, node1)
    assert ids(on(pair, node2)) == list(range(1, 101))
    assert port(connect(pair.dsn)) == node2.port
    assert pair.timings["switchover"] < 10
    # The open transaction was ended, its connection with it (libpq does not show the
    # server's FATAL 57P01, "terminating connection due to administrator command").
    with pytest.raises(psycopg2.OperationalError, match=f"{CONNECTION_LOST}|terminating connection"):
        writer.commit()
    # A connection to the promoted replica learns of it with its next answer, and may write.
    assert on_replica.info.parameter_status("in_hot_standby") == "on"
    execute(on_replica, "SELECT 1")
    assert on_replica.info.parameter_status("in_hot_standby") == "off"
    execute(on_replica, "INSERT INTO notes VALUES (101)")
    # The old primary is up and fenced; the new one waits for no standby until the rejoin.
    assert node1.running and node1.value("SHOW default_transaction_read_only") == "on"
    assert node2.value("SHOW synchronous_standby_names") == ""

    assert pair.rejoin_old_primary_as_replica() == "pg_rewind", pair.rewind_error
    states = node2.query("SELECT application_name, state, sync_state FROM pg_stat_replication")
    assert states == [("pgstore_node1", "streaming", "sync")]
    insert(pair.dsn, 102)
    pair.wait_for_replay()
    assert ids(on(pair, node1)) == list(range(1, 103))
    # And back: the first node is the primary again, unfenced.
    pair.switchover(rejoin=True)
    assert (pair.primary, pair.replica) == (node1, node2)
    assert node1.writable() and not node2.writable()
    insert(pair.dsn, 103)
    pair.wait_for_replay()
    assert ids(on(pair, node2)) == list(range(1, 104))


def test_an_asynchronous_failover_loses_what_the_replica_missed(pgstore_replica_pair):
    pair = pgstore_replica_pair
    node1, node2 = pair.nodes
    make_table(pair)
    insert(pair.dsn, 1)
    pair.wait_for_replay()
    node2.stop()  # the replica falls behind...
    insert(pair.dsn, 2)  # ...and nobody waits for it
    pair.kill_primary()
    node2.start()
    pair.promote()
    assert ids(pair.dsn) == [1]  # 2 was committed, and is lost
    insert(pair.dsn, 3)
    # The rejoin rewinds the old primary past 2, onto the new timeline.
    assert pair.rejoin_old_primary_as_replica() == "pg_rewind", pair.rewind_error
    pair.wait_for_replay()
    assert ids(on(pair, node1)) == [1, 3]
    assert node1.value("SELECT pg_is_in_recovery()") is True
    assert pair.timings["rejoin"] < 30


def test_a_rejoin_takes_a_new_base_backup_when_pg_rewind_fails(pgstore_replica_pair):
    pair = pgstore_replica_pair
    make_table(pair)
    insert(pair.dsn, 1)
    pair.wait_for_replay()
    pair.kill_primary()
    pair.promote()
    insert(pair.dsn, 2)
    (pair.replica.data / "global" / "pg_control").unlink()
    assert pair.rejoin_old_primary_as_replica() == "pg_basebackup"
    assert "pg_control" in pair.rewind_error
    pair.wait_for_replay()
    assert ids(pair.replica_dsn) == [1, 2]


def test_the_fixture_is_skipped_without_pg_basebackup(pytester, tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    real = os.path.dirname(find_pg_ctl())
    for program in ("pg_ctl", "initdb", "postgres"):
        (bindir / program).symlink_to(os.path.join(real, program))
    pytester.makepyfile(test_pair="def test_pair(pgstore_replica_pair):\n    raise AssertionError('ran')\n")
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-rs", "--pgstore-pg-bindir", str(bindir)
    )
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*needs pg_basebackup, which is not in*apt-get install postgresql-client*"])


def _alive(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            return "\nState:\tZ" not in status.read()
    except FileNotFoundError:
        return False


def test_the_servers_are_stopped_after_a_failing_test(pytester):
    pytester.makepyfile(
        test_pair="""
import pathlib

def test_pair(pgstore_replica_pair_factory):
    pair = pgstore_replica_pair_factory()
    pathlib.Path("pids").write_text(" ".join(str(node.pid) for node in pair.nodes))
    raise AssertionError("a failing test")
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    pids = (pytester.path / "pids").read_text().split()
    assert len(pids) == 2
    assert not any(_alive(pid) for pid in pids)
