"""A server that stops taking writes: fenced (read-only), or waiting for a
synchronous standby that is gone. One throwaway server of this module's own,
so that making it read-only troubles no other test."""

import random
import threading
import time

import psycopg2
import psycopg2.extensions
import pytest

from pyramid_pgstore import PGStore, StoreUnavailable
from pytest_pgstore.localdb import LocalPostgres


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    try:
        base = tmp_path_factory.mktemp("readonly") / "pg"
        local = LocalPostgres(base, settings={"fsync": "off"}, log=lambda message: None)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    local.start()
    yield local
    local.stop()


def admin(server, statement):
    conn = psycopg2.connect(server.dsn())
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


def set_system(server, name, value):
    """ALTER SYSTEM and reload, as failover tools do to fence an old primary."""
    value = "DEFAULT" if value is None else f"'{value}'"
    admin(server, f"ALTER SYSTEM SET {name} = {value}")
    admin(server, "SELECT pg_reload_conf()")
    time.sleep(0.2)  # the backends read the new configuration at their next command


@pytest.fixture
def store(server):
    with PGStore(server.dsn(), table="fenced_sessions", failover_timeout=1, pool_max=4) as store:
        store.save("id-1", {"n": 1}, 600)
        yield store
    set_system(server, "default_transaction_read_only", None)
    set_system(server, "synchronous_standby_names", None)


def test_a_fenced_server_fails_every_statement_with_store_unavailable_not_a_driver_error(server, store):
    assert store.load("id-1").data == {"n": 1}  # a pooled connection, made before the fence
    set_system(server, "default_transaction_read_only", "on")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="read-only"):
        store.save("id-1", {"n": 2}, 600)
    assert 0.9 < time.monotonic() - started < 3  # it waited failover_timeout for a writable one
    # A read is refused too: a fenced old primary no longer sees the new primary's writes.
    with pytest.raises(StoreUnavailable, match="read-only"):
        store.load("id-1")
    assert store.stats()["discarded"] >= 2  # each read-only connection was thrown away


def test_once_the_server_takes_writes_again_the_store_does_with_no_restart(server, store):
    set_system(server, "default_transaction_read_only", "on")
    with pytest.raises(StoreUnavailable):
        store.save("id-1", {"n": 2}, 600)
    set_system(server, "default_transaction_read_only", None)
    store.save("id-1", {"n": 3}, 600)
    assert store.load("id-1").data == {"n": 3}


def test_a_commit_waiting_for_a_standby_that_is_gone_fails_after_commit_timeout(server):
    """A promoted server that kept synchronous_standby_names: every commit
    waits for a standby, and statement_timeout does not end the wait."""
    with PGStore(server.dsn(), table="waiting_sessions", commit_timeout=1, statement_timeout=0.2) as store:
        store.save("id-1", {"n": 1}, 600)
        set_system(server, "synchronous_standby_names", "nobody_here")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="not confirmed by a synchronous standby"):
            store.save("id-1", {"n": 2}, 600)
        assert 0.9 < time.monotonic() - started < 2.5
        set_system(server, "synchronous_standby_names", None)
        # Not acknowledged, but committed on the server: what a reader now sees.
        assert store.load("id-1").data == {"n": 2}


class SlowCancel(psycopg2.extensions.connection):
    """A cancel request that takes 20 ms to reach the server, as it does
    when the server is far away (libpq opens a connection just for it)."""

    def cancel(self):
        time.sleep(0.02)
        return super().cancel()


def test_a_cancel_past_commit_timeout_never_reaches_the_connections_next_statement(server):
    """The watchdog fires while the statement is finishing on its own: the
    connection goes back to the pool only once the cancel is done, and is
    then discarded, so the next statement on the pool is never canceled."""
    from pyramid_pgstore.executor import nothing

    rng = random.Random(7)
    with PGStore(server.dsn(), table="cancel_sessions", pool_max=1, commit_timeout=0.1) as store:
        store._checkout._connect_kwargs["connection_factory"] = SlowCancel
        canceled = finished = 0
        for _ in range(40):
            try:  # ends around the time the watchdog looks (every 0.1 s past its deadline)
                store._executor.run("SELECT pg_sleep(%(s)s)", {"s": rng.uniform(0.1, 0.2)}, nothing)
                finished += 1
            except StoreUnavailable:
                canceled += 1
            store._executor.run("SELECT pg_sleep(0.02)", {}, nothing)  # must never be canceled
        assert canceled and finished  # both sides of the race were run


def test_schema_upgrades_and_scans_are_not_bound_by_commit_timeout(server):
    """commit_timeout bounds a request's writes, not an upgrade waiting for
    another process's lock, nor a count over a big table."""
    admin(server, "DROP TABLE IF EXISTS slow_sessions")
    admin(
        server,
        "CREATE TABLE slow_sessions (key text PRIMARY KEY, data text NOT NULL, created_on timestamptz"
        " NOT NULL, modified_on timestamptz NOT NULL, expires_on timestamptz NOT NULL)",
    )
    holder = psycopg2.connect(server.dsn())
    with holder.cursor() as cur:  # another process upgrading: the schema lock, held for 1 s
        cur.execute("""SELECT pg_advisory_lock(hashtext('"slow_sessions"'))""")
    threading.Timer(1.0, holder.close).start()
    started = time.monotonic()
    with PGStore(server.dsn(), table="slow_sessions", commit_timeout=0.3) as store:
        assert time.monotonic() - started > 0.9  # it waited for the lock, past commit_timeout
        assert store.table_state().comment == "pyramid_pgstore schema 3"
        blocker = psycopg2.connect(server.dsn())
        with blocker.cursor() as cur:  # a scan that must wait 1 s
            cur.execute("LOCK TABLE slow_sessions IN ACCESS EXCLUSIVE MODE")
        threading.Timer(1.0, blocker.close).start()
        assert store.count_expired() == 0
