"""pytest_pgstore as a downstream app's test suite sees it (pytester)."""

import os

import psycopg2
import pytest

from pytest_pgstore.pgbouncer import find_pgbouncer

DOWNSTREAM_TESTS = """
import webtest
from pyramid.config import Configurator
from pyramid.response import Response


def make_app(settings):
    def login(request):
        request.session.invalidate()
        request.session["user"] = request.params["user"]
        return Response("ok")

    def whoami(request):
        return Response(request.session.get("user", "nobody"))

    def logout(request):
        request.session.invalidate()
        return Response("bye")

    with Configurator(settings={**settings, "pgstore.timeout": "600"}) as config:
        config.include("pyramid_pgstore")
        config.add_route("login", "/login")
        config.add_route("whoami", "/whoami")
        config.add_route("logout", "/logout")
        config.add_view(login, route_name="login")
        config.add_view(whoami, route_name="whoami")
        config.add_view(logout, route_name="logout")
    return webtest.TestApp(config.make_wsgi_app())


def test_login_then_logout(pgstore_settings):
    app = make_app(pgstore_settings)
    app.get("/login", {"user": "ann"})
    assert app.get("/whoami").text == "ann"
    app.get("/logout")
    assert app.get("/whoami").text == "nobody"


def test_login_expires(pgstore_settings, pgstore_clock):
    app = make_app(pgstore_settings)
    app.get("/login", {"user": "ann"})
    pgstore_clock.advance(601)
    assert app.get("/whoami").text == "nobody"


def test_every_test_starts_empty(pgstore_store, pgstore_dsn):
    with psycopg2.connect(pgstore_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM http_sessions")
        assert cur.fetchone() == (0,)
    pgstore_store.save("leftover", {"n": 1}, 60)


def test_every_test_starts_empty_again(pgstore_store, pgstore_dsn):
    test_every_test_starts_empty(pgstore_store, pgstore_dsn)


def test_the_clock_is_back_to_real_time(pgstore_clock):
    assert pgstore_clock.offset == 0
"""


def _downstream(pytester):
    pytester.makepyfile(test_downstream="import psycopg2\n" + DOWNSTREAM_TESTS)


def test_a_downstream_suite_uses_the_fixtures(pytester):
    _downstream(pytester)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)


def test_a_downstream_suite_under_xdist(pytester):
    _downstream(pytester)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)


OUTLIVING_CONFTEST = """
import os
from pathlib import Path


def pytest_sessionfinish(session):
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        (Path(__file__).parent / f"finished-{worker}").write_text("")
"""

OUTLIVING_TESTS = """
import os, time
from pathlib import Path

import psycopg2

HERE = Path(__file__).parent


def wait_for(condition, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_first_worker_starts_the_server_and_ends(pgstore_dsn):
    (HERE / "starter").write_text(os.environ["PYTEST_XDIST_WORKER"])


def test_second_worker_still_has_it_after_the_first_ends(request):
    wait_for((HERE / "starter").exists, "the first worker to start the server")
    dsn = request.getfixturevalue("pgstore_dsn")
    first = (HERE / "starter").read_text()
    wait_for((HERE / f"finished-{first}").exists, "the first worker's session to end")
    time.sleep(1)  # what a worker drops at its session's end is gone by now
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    conn.close()
"""


def test_the_shared_server_outlives_the_session_of_the_worker_that_started_it(pytester):
    """Under xdist the first worker that asks starts the run's server; a
    worker still testing after that one's session has ended keeps it (a
    server owned by the starting worker's fixtures would be stopped, or
    killed by mirakuru, there)."""
    pytester.makeconftest(OUTLIVING_CONFTEST)
    pytester.makepyfile(test_outliving=OUTLIVING_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=2)


def test_options_are_listed_in_help(pytester):
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(
        ["*--pgstore-dsn*", "*--pgstore-pg-bindir*", "*--pgstore-run-as*", "*--pgstore-pgbouncer*"]
    )


def test_an_existing_server_is_used_when_given_by_ini(pytester, pgstore_server):
    """--pgstore-dsn / pgstore_dsn: no server is started; a database of the
    run's own is created on the given one, and dropped afterwards."""

    def test_databases():
        with psycopg2.connect(pgstore_server.admin_dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname LIKE 'pgstore_test_%%'")
            found = {name for (name,) in cur.fetchall()}
        conn.close()
        return found

    _downstream(pytester)
    pytester.makeini(f"[pytest]\npgstore_dsn = {pgstore_server.admin_dsn}\n")
    before = test_databases()  # this run's own (one per xdist worker)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=5)
    assert test_databases() == before  # the downstream run dropped both of its own


def test_a_suite_that_does_not_use_the_fixtures_starts_no_server(pytester):
    pytester.makepyfile(test_plain="def test_plain():\n    assert True\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--setup-plan")
    assert "pgstore_proc" not in result.stdout.str()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_a_suite_that_does_not_use_the_fixtures_imports_nothing_of_the_server_or_the_store(pytester):
    """The plugin is loaded in every pytest run of an app that installs
    pyramid_pgstore: until a test asks for a pgstore_ fixture it imports
    neither the store nor its own server machinery."""
    pytester.makepyfile(
        test_plain="""
import sys

def test_plain():
    loaded = sorted(
        name for name in sys.modules
        if name.startswith(("pyramid_pgstore", "pytest_pgstore.", "psycopg2"))
        and name != "pytest_pgstore.plugin"
    )
    assert loaded == []
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_pytest_postgresql_options_configure_the_throwaway_server(pytester):
    """--postgresql-port and --postgresql-postgres-options (pytest-postgresql's
    own) reach the server the pgstore_ fixtures start."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pytester.makepyfile(
        test_server=f"""
import psycopg2

def test_server(pgstore_proc, pgstore_dsn):
    assert pgstore_proc.port == {port}
    with psycopg2.connect(pgstore_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_setting('work_mem'), inet_server_port()")
        assert cur.fetchone() == ("7MB", {port})
    conn.close()
"""
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--postgresql-port={port}", "--postgresql-postgres-options=-c work_mem=7MB"
    )
    result.assert_outcomes(passed=1)


def test_missing_postgresql_binaries_give_a_clear_error(pytester):
    pytester.makepyfile(test_needs_db="def test_db(pgstore_dsn):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--pgstore-pg-bindir", "/nonexistent")
    result.stdout.fnmatch_lines(["*PostgreSQL's server programs were not found*apt-get install postgresql*"])
    assert "Traceback" not in result.stdout.str()
    assert result.ret != 0


@pytest.mark.skipif(os.geteuid() != 0, reason="the server runs as another user only under root")
def test_under_root_the_server_runs_as_an_unprivileged_user(pgstore_dsn):
    conn = psycopg2.connect(pgstore_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            (pid,) = cur.fetchone()
        owner = os.stat(f"/proc/{pid}").st_uid  # while the backend lives: it ends with the connection
    finally:
        conn.close()
    assert owner != 0


DOWNSTREAM_PGBOUNCER_TESTS = """
import psycopg2


def test_login_then_logout_through_pgbouncer(pgstore_pgbouncer_settings):
    app = make_app(pgstore_pgbouncer_settings)
    app.get("/login", {"user": "ann"})
    assert app.get("/whoami").text == "ann"
    app.get("/logout")
    assert app.get("/whoami").text == "nobody"


def test_the_store_goes_through_pgbouncer(pgstore_pgbouncer_store, pgstore_pgbouncer_dsn, pgstore_dsn):
    assert pgstore_pgbouncer_store.dsn == pgstore_pgbouncer_dsn != pgstore_dsn
    pgstore_pgbouncer_store.save("id", {"n": 1}, 60)
    with psycopg2.connect(pgstore_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM http_sessions")
        assert cur.fetchone() == (1,)
    conn.close()
"""


@pytest.mark.skipif(find_pgbouncer() is None, reason="pgbouncer is not installed")
def test_a_downstream_suite_runs_sessions_through_pgbouncer(pytester):
    pytester.makepyfile(test_downstream=DOWNSTREAM_TESTS.split("def test_")[0] + DOWNSTREAM_PGBOUNCER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=2)


def test_without_pgbouncer_its_tests_are_skipped_and_start_no_server(pytester):
    pytester.makeconftest(
        "import pytest_pgstore.pgbouncer\npytest_pgstore.pgbouncer.find_pgbouncer = lambda path='': None\n"
    )
    pytester.makepyfile(
        test_bouncer="def test_through_pgbouncer(pgstore_pgbouncer_settings):\n    pass\n",
        test_plain="def test_plain():\n    pass\n",
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs", "--setup-show")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*pgbouncer is not installed (Debian/Ubuntu: apt-get install *"])
    assert "pgstore_proc" not in result.stdout.str()


def test_a_pgbouncer_path_that_is_wrong_fails_instead_of_skipping(pytester):
    pytester.makepyfile(test_bouncer="def test_through_pgbouncer(pgstore_pgbouncer_dsn):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--pgstore-pgbouncer", "/nonexistent")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*--pgstore-pgbouncer: no program at /nonexistent*"])


SESSION_SCOPED_TESTS = """
import psycopg2
import pytest
import webtest
from pyramid.config import Configurator
from pyramid.response import Response


@pytest.fixture(scope="session")
def app_settings(pgstore_server):
    # The SQLAlchemy recipe's shape: settings (and the app) built once per run.
    return {"pgstore.dsn": pgstore_server.dsn, "pgstore.secret": "s" * 48, "pgstore.transaction": "none"}


@pytest.fixture(scope="session")
def router(app_settings):
    def put(request):
        request.session["n"] = request.params["n"]
        return Response("ok")

    with Configurator(settings=app_settings) as config:
        config.include("pyramid_pgstore")
        config.add_route("put", "/put")
        config.add_view(put, route_name="put")
    return config.make_wsgi_app()


@pytest.fixture
def testapp(router):
    return webtest.TestApp(router)


def rows(dsn):
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM http_sessions")
        return cur.fetchone()[0]


@pytest.mark.parametrize("round_", range(3))
def test_each_test_starts_without_the_last_ones_sessions(testapp, pgstore_server, round_):
    assert rows(pgstore_server.dsn) == 0
    testapp.get("/put?n=1")  # the session-scoped app's store still works
    assert rows(pgstore_server.dsn) == 1
"""


def test_tests_that_use_the_database_through_session_scoped_fixtures_are_isolated_too(pytester):
    """The SQLAlchemy recipe builds its settings from ``pgstore_server`` once
    per run, with ``pgstore_empty = sessions``: every test using them starts
    with no session rows, and the app built once keeps its store open."""
    pytester.makeini("[pytest]\npgstore_empty = sessions\n")
    pytester.makepyfile(test_session_scoped=SESSION_SCOPED_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
