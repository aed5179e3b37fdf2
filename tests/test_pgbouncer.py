"""The store and the session through PgBouncer in transaction pooling mode.

Everything here goes through the plugin's PgBouncer (``pool_mode =
transaction``, two server connections shared by every client connection), so
each transaction may run on a different server connection than the last.
After every test, each server connection is inspected for state a client
left on it, which transaction pooling leaks to other clients or loses: a
prepared statement (SQL ``PREPARE`` or the protocol's), a session advisory
lock, a ``LISTEN``, an open cursor, a temporary table, a setting changed
with ``SET`` outside a transaction. The first test shows the inspection finds
each of them. Skipped when pgbouncer is not installed.
"""

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import pytest
import webtest
from db import sql
from psycopg2.extensions import make_dsn, parse_dsn
from psycopg2.pool import ThreadedConnectionPool
from pyramid.config import Configurator

from pyramid_pgstore import PGStore, StoreUnavailable, get_store
from pytest_pgstore.pgbouncer import POOL_SIZE, TRACKED_PARAMETERS, PgBouncer, find_pgbouncer
from pytest_pgstore.plugin import _run_as


def console(bouncer_dsn, command):
    """Rows of a PgBouncer admin console command, as dicts."""
    conn = psycopg2.connect(make_dsn(bouncer_dsn, dbname="pgbouncer"))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(command)
            names = [column.name for column in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    finally:
        conn.close()


def _dbname(dsn):
    return parse_dsn(dsn)["dbname"]


@contextmanager
def every_server_connection(bouncer_dsn):
    """A cursor on each of PgBouncer's server connections to the database.

    Each of POOL_SIZE client connections opens a transaction, which pins a
    server connection to it until the end of the block; the last one waits
    until every other client's transaction is over.
    """
    conns = [psycopg2.connect(bouncer_dsn) for _ in range(POOL_SIZE)]
    try:
        cursors = [conn.cursor() for conn in conns]
        for cur in cursors:
            cur.execute("SELECT pg_backend_pid()")  # psycopg2 sends BEGIN first
        assert len({cur.fetchone()[0] for cur in cursors}) == POOL_SIZE
        yield cursors
        for conn in conns:
            conn.commit()
    finally:
        for conn in conns:
            conn.close()


LEFT_ON_THE_CONNECTION = """
SELECT
  ARRAY(SELECT name FROM pg_prepared_statements ORDER BY name),
  ARRAY(SELECT objid::text FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),
  ARRAY(SELECT pg_listening_channels()),
  ARRAY(SELECT name FROM pg_cursors),
  ARRAY(SELECT relname::text FROM pg_class WHERE relnamespace = pg_my_temp_schema()),
  ARRAY(SELECT lower(name) FROM pg_settings WHERE source = 'session' AND NOT lower(name) = ANY(%s))
"""
KINDS = ("prepared statements", "advisory locks", "listening", "cursors", "temporary tables", "settings")


def session_state(bouncer_dsn, reset=False):
    """What each server connection holds beyond one transaction: {kind: names}.
    With ``reset``, it is then cleared, so that one test's leak does not fail
    the next ones."""
    found = {}
    with every_server_connection(bouncer_dsn) as cursors:
        for cur in cursors:
            cur.execute(LEFT_ON_THE_CONNECTION, (sorted(TRACKED_PARAMETERS),))
            for kind, names in zip(KINDS, cur.fetchone(), strict=True):
                if names:
                    found.setdefault(kind, []).extend(names)
            if reset:
                cur.execute("DEALLOCATE ALL; CLOSE ALL; RESET ALL; UNLISTEN *; DISCARD TEMP")
                cur.execute("SELECT pg_advisory_unlock_all()")
    return found


@pytest.fixture(autouse=True)
def nothing_left_on_server_connections(pgstore_pgbouncer_dsn):
    yield
    assert session_state(pgstore_pgbouncer_dsn, reset=True) == {}


# -- the check itself ----------------------------------------------------------------


def test_the_check_finds_session_state_a_client_leaves_on_a_server_connection(pgstore_pgbouncer_dsn):
    conn = psycopg2.connect(pgstore_pgbouncer_dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SET work_mem = '8MB'")
            cur.execute("PREPARE leaked AS SELECT 1")
            cur.execute("SELECT pg_advisory_lock(4242)")
            cur.execute("LISTEN leaked")
            cur.execute("CREATE TEMPORARY TABLE leaked (n int)")
        found = session_state(pgstore_pgbouncer_dsn, reset=True)
    finally:
        conn.close()
    assert found == {
        "settings": ["work_mem"],
        "prepared statements": ["leaked"],
        "advisory locks": ["4242"],
        "listening": ["leaked"],
        "temporary tables": ["leaked"],
    }
    assert session_state(pgstore_pgbouncer_dsn) == {}


def test_client_connections_share_two_server_connections(pgstore_pgbouncer_dsn):
    config = {row["key"]: row["value"] for row in console(pgstore_pgbouncer_dsn, "SHOW CONFIG")}
    assert config["pool_mode"] == "transaction"
    assert config["default_pool_size"] == str(POOL_SIZE)


@pytest.mark.skipif(os.geteuid() != 0, reason="pgbouncer runs as another user only under root")
def test_under_root_pgbouncer_runs_as_an_unprivileged_user(pgstore_pgbouncer_dsn, tmp_path_factory):
    ours = str(tmp_path_factory.getbasetemp())
    owners = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
            if argv[0].endswith(b"pgbouncer") and argv[1].decode().startswith(ours):
                owners.append(cmdline.parent.stat().st_uid)
        except (OSError, IndexError):
            continue  # a process that ended meanwhile
    assert owners
    assert 0 not in owners


# -- the store ------------------------------------------------------------------------


def test_save_load_touch_and_delete_through_pgbouncer(pgstore_pgbouncer_store, pgstore_clock):
    store = pgstore_pgbouncer_store
    store.save("id-1", {"user": "ann"}, 60)
    assert store.load("id-1").data == {"user": "ann"}
    store.save("id-1", {"user": "ann", "n": 2}, 60)
    assert store.load("id-1").data == {"user": "ann", "n": 2}
    pgstore_clock.advance(50)
    assert store.touch("id-1", 60) is True
    pgstore_clock.advance(50)
    assert store.load("id-1").data == {"user": "ann", "n": 2}
    assert store.delete("id-1") is True
    assert store.load("id-1") is None
    assert store.touch("id-1", 60) is False
    assert store.delete("id-1") is False


def test_delete_expired_runs_its_batches_through_pgbouncer(
    pgstore_pgbouncer_store, pgstore_clock, pgstore_dsn
):
    store = pgstore_pgbouncer_store
    for i in range(25):
        store.save(f"short-{i}", {"i": i}, 10)
    store.save("long", {"i": 0}, 1000)
    pgstore_clock.advance(11)
    assert store.delete_expired(batch_size=10) == 25
    assert sql(pgstore_dsn, "SELECT count(*) FROM http_sessions") == [(1,)]


def test_the_cleanup_thread_works_through_pgbouncer(pgstore_pgbouncer_store, pgstore_clock, pgstore_dsn):
    pgstore_pgbouncer_store.save("id-1", {"n": 1}, 10)
    pgstore_clock.advance(11)
    handle = pgstore_pgbouncer_store.cleanup(0.02)
    deadline = time.monotonic() + 10
    while sql(pgstore_dsn, "SELECT count(*) FROM http_sessions") != [(0,)] and time.monotonic() < deadline:
        time.sleep(0.02)
    handle.stop()
    assert sql(pgstore_dsn, "SELECT count(*) FROM http_sessions") == [(0,)]


def test_stores_starting_together_create_the_table_through_pgbouncer(pgstore_pgbouncer_dsn, pgstore_dsn):
    table = "created_through_pgbouncer"
    sql(pgstore_dsn, f"DROP TABLE IF EXISTS {table}")
    errors = []

    def open_store(i):
        try:
            with PGStore(pgstore_pgbouncer_dsn, table=table) as store:
                store.save(f"id-{i}", {"n": i}, 60)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        assert errors == []
        assert sql(pgstore_dsn, f"SELECT count(*) FROM {table}") == [(4,)]
    finally:
        sql(pgstore_dsn, f"DROP TABLE IF EXISTS {table}")


def test_a_borrowed_pool_works_through_pgbouncer(pgstore_pgbouncer_dsn, pgstore_dsn):
    pool = ThreadedConnectionPool(1, 4, pgstore_pgbouncer_dsn)
    try:
        with PGStore.from_pool(pool) as store:
            store.save("id-1", {"n": 1}, 60)
            assert store.load("id-1").data == {"n": 1}
        conn = pool.getconn()
        assert conn.autocommit is False
        pool.putconn(conn)
    finally:
        pool.closeall()


def test_eight_threads_on_eight_client_connections_share_two_server_connections(
    pgstore_pgbouncer_dsn, pgstore_dsn
):
    """A lock on the table holds every statement, so each thread needs a
    client connection of its own; PgBouncer queues them for its two server
    connections. Then each thread goes on with a mix of every statement."""
    with PGStore(pgstore_pgbouncer_dsn, pool_max=8) as store:
        lock = psycopg2.connect(pgstore_dsn)
        with lock.cursor() as cur:
            cur.execute("LOCK TABLE http_sessions IN ACCESS EXCLUSIVE MODE")
        errors = []
        holding = threading.Barrier(9)

        def work(i):
            try:
                holding.wait(10)
                store.save(f"t{i}", {"n": 0}, 60)
                for n in range(1, 31):
                    assert store.load(f"t{i}").data == {"n": n - 1}
                    store.save(f"t{i}", {"n": n}, 60)
                    assert store.touch(f"t{i}", 60) is True
                store.save(f"gone-{i}", {}, 60)
                assert store.delete(f"gone-{i}") is True
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        holding.wait(10)
        # Wait until every thread is blocked on a client connection of its own.
        database = _dbname(pgstore_pgbouncer_dsn)
        deadline = time.monotonic() + 8
        while True:
            clients = [
                row for row in console(pgstore_pgbouncer_dsn, "SHOW CLIENTS") if row["database"] == database
            ]
            servers = [
                row for row in console(pgstore_pgbouncer_dsn, "SHOW SERVERS") if row["database"] == database
            ]
            if len(clients) >= 8 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        lock.rollback()
        lock.close()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert all(store.load(f"t{i}").data == {"n": 30} for i in range(8))
        assert store.stats()["connections_opened"] >= 8
    assert len(clients) >= 8
    assert len(servers) <= POOL_SIZE


def test_a_statement_timeout_cancels_a_blocked_statement_through_pgbouncer(
    pgstore_pgbouncer_dsn, pgstore_dsn
):
    """pgstore.statement_timeout must reach the server through PgBouncer,
    which refuses startup parameters it cannot track (libpq ``options``)
    and, when told to ignore them, drops them silently."""
    with PGStore(pgstore_pgbouncer_dsn, statement_timeout=0.3) as store:
        store.save("id-1", {"n": 1}, 60)
        lock = psycopg2.connect(pgstore_dsn)
        try:
            with lock.cursor() as cur:
                cur.execute("LOCK TABLE http_sessions IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="cancel"):
                store.load("id-1")
            assert time.monotonic() - started < 3
        finally:
            lock.rollback()
            lock.close()
        assert store.load("id-1").data == {"n": 1}


@pytest.fixture
def one_server_connection_dsn(request, pgstore_server, pgstore_dsn, tmp_path):
    """The database through a PgBouncer of its own with a single server
    connection: a client that needs a second one while it holds the first
    waits 2 s, then gets an error."""
    bouncer = PgBouncer(
        find_pgbouncer(),
        pgstore_server.admin_dsn,
        tmp_path,
        run_as=_run_as(request.config),
        pool_size=1,
        query_wait_timeout=2,
    )
    bouncer.start()
    yield bouncer.dsn(_dbname(pgstore_server.dsn))
    bouncer.stop()


def test_every_store_operation_needs_one_server_connection_at_a_time(
    one_server_connection_dsn, pgstore_clock, pgstore_dsn
):
    """A store that keeps a transaction open on one connection while it runs
    statements on another needs two server connections at once: with one,
    the second statement waits for the first transaction to end, which it
    never does, until PgBouncer gives up (query_wait_timeout). What requests
    do never needs more than one. (A cleanup pass does: it holds its lock on
    one connection while batches run on another, so PgBouncer needs
    default_pool_size >= 2, as documented; its default is 20.)"""
    sql(pgstore_dsn, "DROP TABLE IF EXISTS one_server_connection")
    try:
        with PGStore(one_server_connection_dsn, table="one_server_connection", pool_timeout=5) as store:
            store.save("id-1", {"n": 1}, 10)
            assert store.load("id-1").data == {"n": 1}
            assert store.touch("id-1", 10) is True
            store.save("id-2", {"n": 2}, 10)
            assert store.delete("id-2") is True
            pgstore_clock.advance(11)
            assert store.delete_expired() == 1
    finally:
        sql(pgstore_dsn, "DROP TABLE IF EXISTS one_server_connection")


# -- the session ------------------------------------------------------------------


def login(request):
    request.session.invalidate()
    request.session["user"] = request.params["user"]
    return {"user": request.session["user"]}


def write(request):
    request.session.update(request.GET.items())
    return dict(request.session)


def read(request):
    return dict(request.session)


def incr(request):
    request.session["n"] = request.session.get("n", 0) + 1
    return {"n": request.session["n"]}


def logout(request):
    request.session.invalidate()
    return {}


@pytest.fixture
def router(pgstore_pgbouncer_settings):
    settings = {**pgstore_pgbouncer_settings, "pgstore.timeout": "600", "pgstore.pool_max": "6"}
    with Configurator(settings=settings) as config:
        config.include("pyramid_pgstore")
        for view in (login, write, read, incr, logout):
            config.add_route(view.__name__, f"/{view.__name__}")
            config.add_view(view, route_name=view.__name__, renderer="json")
    return config.make_wsgi_app()


def test_login_write_read_and_logout_through_pgbouncer(router, pgstore_dsn):
    app = webtest.TestApp(router)
    assert app.get("/login", {"user": "ann"}).json == {"user": "ann"}
    assert app.get("/write", {"colour": "blue"}).json == {"user": "ann", "colour": "blue"}
    assert app.get("/read").json == {"user": "ann", "colour": "blue"}
    assert webtest.TestApp(router).get("/read").json == {}
    app.get("/logout")
    assert app.get("/read").json == {}
    # An ended session stays a moment as a row without data (see session.py).
    assert sql(pgstore_dsn, "SELECT count(*) FROM http_sessions WHERE data <> ''") == [(0,)]


def test_reads_and_writes_cost_the_same_round_trips_through_pgbouncer(router):
    app = webtest.TestApp(router)
    store = get_store(router.registry)
    app.get("/incr")
    before = store.stats()["queries"]
    app.get("/read")
    assert store.stats()["queries"] - before == 1
    app.get("/incr")
    assert store.stats()["queries"] - before == 3


def test_an_idle_session_expires_through_pgbouncer(router, pgstore_clock):
    app = webtest.TestApp(router)
    app.get("/login", {"user": "ann"})
    pgstore_clock.advance(601)
    assert app.get("/read").json == {}


def test_eight_browsers_in_threads_each_count_their_own_visits(router):
    errors = []

    def browse():
        try:
            app = webtest.TestApp(router)
            for n in range(1, 21):
                assert app.get("/incr").json == {"n": n}
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=browse) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
