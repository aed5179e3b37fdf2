"""The plugin's helper fixtures as an app's tests use them: pgstore_sessions,
pgstore_url and what pgstore_dsn empties (--pgstore-empty)."""

import psycopg2
import pytest
import sqlalchemy
import webtest
from pyramid.authentication import SessionAuthenticationHelper
from pyramid.config import Configurator
from pyramid.response import Response

import pyramid_pgstore
from pyramid_pgstore import PGStoreError


def make_app(settings, **extra):
    def whoami(request):
        return Response(str(request.session.get("auth.userid", "anonymous")))

    def theme(request):
        return Response(request.session.get("theme", "light"))

    def set_theme(request):
        request.session["theme"] = request.params["theme"]
        return Response("ok")

    def devices(request):
        return Response(",".join(s.userid for s in pyramid_pgstore.list_sessions(request)))

    def login(request):
        return Response(
            "welcome", headers=SessionAuthenticationHelper().remember(request, request.params["user"])
        )

    with Configurator(settings={**settings, **extra}) as config:
        config.include("pyramid_pgstore")
        for view in (whoami, theme, set_theme, devices, login):
            config.add_route(view.__name__, "/" + view.__name__)
            config.add_view(view, route_name=view.__name__)
    return webtest.TestApp(config.make_wsgi_app())


@pytest.fixture
def app(pgstore_settings):
    return make_app(pgstore_settings)


def test_login_makes_the_app_see_the_user_without_a_login_view(app, pgstore_sessions):
    pgstore_sessions.login(app, "ann", theme="dark")
    assert app.get("/whoami").text == "ann"
    assert app.get("/theme").text == "dark"
    assert app.get("/devices").text == "ann"  # recorded as the session's user


def test_data_is_what_the_app_stored(app, pgstore_sessions):
    assert pgstore_sessions.data(app) is None  # no cookie yet
    app.get("/set_theme", {"theme": "blue"})
    assert pgstore_sessions.data(app) == {"theme": "blue"}
    pgstore_sessions.start(app, {"theme": "green", "cart": [1, 2]})
    assert app.get("/theme").text == "green"
    assert pgstore_sessions.data(app)["cart"] == [1, 2]


def test_a_login_through_a_view_and_through_the_fixture_agree(app, pgstore_sessions):
    app.get("/login", {"user": "bob"})
    assert pgstore_sessions.data(app)["auth.userid"] == "bob"
    other = make_app({**app.app.registry.settings})
    pgstore_sessions.login(other, "bob")
    assert other.get("/devices").text == "bob,bob"  # both sessions belong to bob


def test_login_honours_the_apps_userid_key(pgstore_settings, pgstore_sessions):
    app = make_app(pgstore_settings, **{"pgstore.userid_key": "uid"})
    pgstore_sessions.login(app, 7)
    assert pgstore_sessions.data(app) == {"uid": 7}
    assert app.get("/devices").text == "7"


def test_a_tampered_cookie_reads_as_no_session(app, pgstore_sessions):
    pgstore_sessions.login(app, "ann")
    app.set_cookie("session", "forged")
    assert pgstore_sessions.data(app) is None


def test_an_app_without_pgstore_is_refused_clearly(pgstore_sessions):
    with Configurator() as config:
        pass
    with pytest.raises(PGStoreError, match="not pyramid_pgstore's"):
        pgstore_sessions.login(webtest.TestApp(config.make_wsgi_app()), "ann")


def test_the_url_names_the_same_database_as_the_dsn(pgstore_url, pgstore_dsn):
    assert pgstore_url.startswith("postgresql+psycopg2://")
    engine = sqlalchemy.create_engine(pgstore_url)
    try:
        with engine.connect() as conn:
            via_url = conn.execute(sqlalchemy.text("SELECT current_database(), inet_server_port()")).one()
    finally:
        engine.dispose()
    with psycopg2.connect(pgstore_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_database(), inet_server_port()")
        assert cur.fetchone() == tuple(via_url)
    conn.close()


# Two tests in order: the first leaves an app row and a session behind, the
# second sees what pgstore_dsn emptied.
EMPTYING = """
import psycopg2

from pyramid_pgstore import PGStore


def rows(dsn, table):
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        return cur.fetchone()[0]


def test_1_leaves_rows_behind(pgstore_dsn):
    with psycopg2.connect(pgstore_dsn) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS users (name text)")
        cur.execute("INSERT INTO users VALUES ('ann')")
    with PGStore(pgstore_dsn) as store:
        store.save("leftover", {"n": 1}, 600)


def test_2_sees_what_was_emptied(pgstore_dsn):
    print("users:", rows(pgstore_dsn, "users"), "sessions:", rows(pgstore_dsn, "http_sessions"))
"""


@pytest.mark.parametrize(
    ("args", "ini", "users"),
    [
        ((), "", 0),  # default: every table
        (("--pgstore-empty=sessions",), "", 1),
        ((), "[pytest]\npgstore_empty = sessions\n", 1),
        (("--pgstore-empty=all",), "[pytest]\npgstore_empty = sessions\n", 0),  # command line wins
    ],
)
def test_pgstore_empty_chooses_what_each_test_starts_without(pytester, args, ini, users):
    pytester.makepyfile(test_emptying=EMPTYING)
    if ini:
        pytester.makeini(ini)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", *args)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"*users: {users} sessions: 0*"])


def test_a_wrong_pgstore_empty_fails_with_its_choices(pytester):
    pytester.makepyfile(test_emptying=EMPTYING)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--pgstore-empty=some")
    result.stdout.fnmatch_lines(["*--pgstore-empty must be 'all' or 'sessions', not 'some'*"])
    assert result.ret != 0
