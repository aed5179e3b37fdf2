"""Faults: a restarted or killed server, an exhausted pool, fork, a held lock.

The restart test uses a PostgreSQL of its own (``fault_server``), so the
server the other tests share is never taken down.
"""

import json
import os
import threading
import time

import psycopg2
import psycopg2.extensions
import pytest
import webtest
from pyramid.config import Configurator
from pyramid.response import Response
from pyramid.view import exception_view_config
from served import Client, Served

from pyramid_pgstore import PGStore, StoreUnavailable, get_store
from pytest_pgstore.localdb import LocalPostgres


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory):
    """A throwaway PostgreSQL of this module's own, which a test may stop and start."""
    try:
        server = LocalPostgres(
            tmp_path_factory.mktemp("faults") / "pg", settings={"fsync": "off"}, log=lambda m: None
        )
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    server.start()
    yield server
    server.stop()


@exception_view_config(StoreUnavailable)
def unavailable(exc, request):
    return Response(f"unavailable: {exc}", status=503)


def incr(request):
    session = request.session
    session["n"] = session.get("n", 0) + 1
    return {"n": session["n"]}


def read(request):
    return {"n": request.session.get("n", 0)}


def make_app(settings):
    with Configurator(settings=settings) as config:
        config.include("pyramid_pgstore")
        config.add_route("incr", "/incr")
        config.add_route("read", "/read")
        config.add_view(incr, route_name="incr", renderer="json")
        config.add_view(read, route_name="read", renderer="json")
        config.scan(__name__)
    return config.make_wsgi_app()


def test_a_restart_while_serving_fails_fast_then_recovers_and_loses_nothing(fault_server):
    settings = {
        "pgstore.dsn": fault_server.dsn(),
        "pgstore.secret": "r" * 48,
        "pgstore.table": "restart_sessions",
        "pgstore.pool_timeout": "2",
    }
    served = Served(make_app(settings))
    clients = [Client(served.url) for _ in range(6)]
    acked = {}  # client -> the last counter value the server confirmed
    stop = threading.Event()

    def browse(client):
        while not stop.is_set():
            status, n = client.get("/incr")
            if status == 200:
                acked[client] = n
            time.sleep(0.01)

    threads = [threading.Thread(target=browse, args=(client,)) for client in clients]
    try:
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        outage_start = time.monotonic()
        fault_server.stop()
        time.sleep(2.0)
        fault_server.start()
        outage_end = time.monotonic()
        time.sleep(2.0)
        stop.set()
        for thread in threads:
            thread.join(30)
        entries = [entry for client in clients for entry in client.log]
        statuses = {status for _, _, status, _ in entries}
        assert statuses <= {200, 503}, statuses  # a clear 503, never a 500
        assert 503 in statuses  # the outage was seen
        assert max(seconds for _, seconds, _, _ in entries) < 2 + 1  # none hung past pool_timeout
        failed = [started for started, _, status, _ in entries if status == 503]
        assert min(failed) >= outage_start - 0.5 and max(failed) <= outage_end + 0.5
        for client in clients:  # no app restart: the last requests all succeeded
            assert [status for _, _, status, _ in client.log[-5:]] == [200] * 5
            status, n = client.get("/read")  # every acknowledged write is still there
            assert status == 200 and n >= acked[client]
    finally:
        stop.set()
        served.close()


def test_a_backend_killed_between_requests_is_invisible_to_the_user(pgstore_settings, pgstore_dsn):
    app = webtest.TestApp(make_app(pgstore_settings))
    assert app.get("/incr").json == {"n": 1}
    conn = psycopg2.connect(pgstore_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = 'pyramid_pgstore' AND datname = current_database()"
        )
        assert cur.fetchone()[0] >= 1
    conn.close()
    assert app.get("/incr").json == {"n": 2}


def hold_table_lock(dsn, seconds):
    """Lock the session table from another connection for ``seconds``."""
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute("LOCK TABLE http_sessions IN ACCESS EXCLUSIVE MODE")
    timer = threading.Timer(seconds, lambda: (conn.rollback(), conn.close()))
    timer.start()
    return timer


def concurrent_gets(url, path, count):
    clients = [Client(url) for _ in range(count)]
    threads = [threading.Thread(target=client.get, args=(path,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return [client.log[0][2] for client in clients]


def test_four_times_more_requests_than_pool_max_all_succeed_by_waiting(pgstore_settings, pgstore_dsn):
    app = make_app({**pgstore_settings, "pgstore.pool_max": "2", "pgstore.pool_timeout": "20"})
    served = Served(app, threads=8)
    try:
        hold_table_lock(pgstore_dsn, 0.5)
        assert concurrent_gets(served.url, "/incr", 8) == [200] * 8
        assert get_store(app.registry).stats()["waits"] >= 1
    finally:
        served.close()


def test_with_a_tiny_pool_timeout_the_excess_fail_clearly_and_the_pool_recovers(
    pgstore_settings, pgstore_dsn
):
    app = make_app({**pgstore_settings, "pgstore.pool_max": "2", "pgstore.pool_timeout": "0.2"})
    served = Served(app, threads=8)
    try:
        timer = hold_table_lock(pgstore_dsn, 1.0)
        statuses = concurrent_gets(served.url, "/incr", 8)
        timer.join()
        assert statuses.count(503) >= 6  # two held the connections; the rest gave up
        assert set(statuses) <= {200, 503}
        assert concurrent_gets(served.url, "/incr", 8) == [200] * 8
    finally:
        served.close()


@pytest.mark.parametrize("prepare", ["false", "true"])
@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
def test_a_statement_timeout_turns_a_held_lock_into_a_clean_failure(
    pgstore_settings, pgstore_dsn, prepare, warm
):
    settings = {
        **pgstore_settings,
        "pgstore.statement_timeout": "0.3",
        "pgstore.prepare_statements": prepare,
        "pgstore.pool_max": "1",
    }
    app = webtest.TestApp(make_app(settings))
    app.get("/incr")
    if not warm:  # a new connection: with prepare, the PREPARE meets the lock
        get_store(app.app.registry)._checkout.release()
    timer = hold_table_lock(pgstore_dsn, 3.0)
    started = time.monotonic()
    response = app.get("/read", status=503)
    assert time.monotonic() - started < 2
    assert "canceled" in response.text
    timer.join()
    assert app.get("/read").json == {"n": 1}


def test_parent_and_forked_child_each_use_their_own_connections(pgstore_dsn):
    store = PGStore(pgstore_dsn)
    store.save("parent", {"who": "parent"}, 60)
    parent_backend = backend_pids(pgstore_dsn)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child, as a worker forked by gunicorn --preload
        try:
            store.save("child", {"who": "child"}, 60)
            result = {"parent": store.load("parent").data, "backends": sorted(backend_pids(pgstore_dsn))}
            os.write(write_end, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    child = json.loads(os.read(read_end, 65536))
    os.close(read_end)
    assert status == 0
    assert child["parent"] == {"who": "parent"}
    assert set(child["backends"]) - parent_backend  # the child opened its own
    assert store.load("child").data == {"who": "child"}  # the parent still works...
    assert store.stats()["discarded"] == 0  # ...on its own, untouched connection
    store.close()


def backend_pids(dsn):
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'pyramid_pgstore'"
                " AND datname = current_database()"
            )
            return {pid for (pid,) in cur.fetchall()}
    finally:
        conn.close()


def test_a_failed_final_write_after_a_redirect_reaches_the_exception_view(pgstore_settings, pgstore_dsn):
    """The view changes the session and raises HTTPFound (the usual login);
    the write then fails: the app's StoreUnavailable view answers, not a 500."""
    from pyramid.httpexceptions import HTTPFound

    def login(request):
        request.session["user"] = "ann"
        raise HTTPFound("/read")

    client = webtest.TestApp(make_app_with(pgstore_settings, login))
    client.get("/incr")  # the session is stored
    timer = hold_table_lock(pgstore_dsn, 3.0)
    response = client.get("/login", status=503)
    assert "unavailable" in response.text
    timer.join()
    assert client.get("/read").json == {"n": 1}  # the failed write changed nothing


def make_app_with(settings, login):
    with Configurator(settings={**settings, "pgstore.statement_timeout": "0.3"}) as config:
        config.include("pyramid_pgstore")
        config.add_route("incr", "/incr")
        config.add_route("read", "/read")
        config.add_route("login", "/login")
        config.add_view(incr, route_name="incr", renderer="json")
        config.add_view(read, route_name="read", renderer="json")
        config.add_view(login, route_name="login")
        config.add_exception_view(unavailable, StoreUnavailable)
    return config.make_wsgi_app()


class LosesOneReply(psycopg2.extensions.connection):
    """The first session write (an UPDATE of data) is committed by the
    server, then the connection drops before its reply arrives."""

    armed = False

    def cursor(self, *args, **kwargs):
        return super().cursor(*args, cursor_factory=_LosingCursor, **kwargs)


class _LosingCursor(psycopg2.extensions.cursor):
    def execute(self, sql, params=None):
        super().execute(sql, params)
        if LosesOneReply.armed and "UPDATE" in sql and "data = %(data)s" in sql:
            LosesOneReply.armed = False
            self.connection.close()
            raise psycopg2.OperationalError("server closed the connection unexpectedly")


def flash(request):
    request.session.flash(request.params["m"])
    return {}


def pop_flash(request):
    return {"messages": request.session.pop_flash()}


def test_a_write_whose_reply_is_lost_is_not_applied_twice(pgstore_settings):
    """The executor sends the write again on a new connection; the row holds
    it already, so the flash message it added is there once, not twice."""
    with Configurator(settings=pgstore_settings) as config:
        config.include("pyramid_pgstore")
        for view in (flash, pop_flash):
            config.add_route(view.__name__, "/" + view.__name__)
            config.add_view(view, route_name=view.__name__, renderer="json")
    app = webtest.TestApp(config.make_wsgi_app())
    store = get_store(app.app.registry)
    store._checkout._connect_kwargs["connection_factory"] = LosesOneReply  # before its first connection
    app.get("/flash?m=hello")  # the session exists: the next flash is an UPDATE
    LosesOneReply.armed = True
    app.get("/flash?m=saved")
    assert not LosesOneReply.armed  # the reply was lost, and the write sent again
    assert app.get("/pop_flash").json == {"messages": ["hello", "saved"]}
