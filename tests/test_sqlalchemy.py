"""An app laid out like pyramid-cookiecutter-starter's SQLAlchemy backend:
pyramid_tm, zope.sqlalchemy, ``request.dbsession``, WebTest."""

import re
import time

import psycopg2
import pytest
import sqlalchemy
import webtest
from db import add_dbsession, sql
from pyramid.authentication import SessionAuthenticationHelper
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError
from pyramid.httpexceptions import HTTPFound
from pyramid.interfaces import ISessionFactory
from pyramid.view import exception_view_config
from sqlalchemy import Column, Integer, MetaData, Text
from sqlalchemy.orm import declarative_base

from pyramid_pgstore import (
    PGStore,
    SchemaOutdated,
    StoreUnavailable,
    get_store,
    list_sessions,
    renew_session,
    revoke_other_sessions,
    revoke_session,
)
from pyramid_pgstore.cookie import new_session_id
from pyramid_pgstore.sqla import sessions_table

Base = declarative_base()
auth = SessionAuthenticationHelper()


class User(Base):
    __tablename__ = "users"
    id = Column(Integer, primary_key=True)
    name = Column(Text, nullable=False)


def login(request):
    """Adds a user row and logs it in; ``?how=raise`` ends with ``raise HTTPFound``."""
    user = User(name=request.params["name"])
    request.dbsession.add(user)
    request.dbsession.flush()
    auth.remember(request, user.id)
    if request.params.get("doom"):
        request.tm.doom()
    redirect = HTTPFound(location="/whoami")
    if request.params.get("how") == "raise":
        raise redirect
    return redirect


def logout(request):
    """``?by=invalidate`` or ``forget``; ``?how=raise`` ends with ``raise HTTPFound``;
    ``?keep=1`` leaves other data in the session."""
    if request.params.get("keep"):
        request.session["theme"] = "dark"
    if request.params["by"] == "invalidate":
        request.session.invalidate()
    else:
        auth.forget(request)
    redirect = HTTPFound(location="/whoami")
    if request.params.get("how") == "raise":
        raise redirect
    return redirect


def renew(request):
    renew_session(request)
    return {}


def become(request):
    """Log in as an existing user (another device of the same user)."""
    auth.remember(request, int(request.params["id"]))
    return {}


def note(request):
    request.session["notes"] = request.session.get("notes", 0) + 1
    return {"notes": request.session["notes"]}


def devices(request):
    return [{"handle": each.handle, "current": each.current} for each in list_sessions(request)]


def revoke(request):
    return {"revoked": revoke_session(request, request.params["handle"])}


def revoke_others(request):
    return {"ended": revoke_other_sessions(request)}


def whoami(request):
    userid = request.session.get("auth.userid")
    user = request.dbsession.get(User, userid) if userid is not None else None
    return {"userid": userid, "name": user.name if user else None}


@exception_view_config(StoreUnavailable, renderer="json")
def unavailable(exc, request):
    request.response.status = 503
    return {"error": str(exc)}


def make_app(settings):
    """The cookiecutter's models/__init__.py includeme, in a few lines."""
    settings = {"tm.manager_hook": "pyramid_tm.explicit_manager", **settings}
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        config.include("pyramid_pgstore")
        from pyramid_pgstore.sqla import engine_for

        engine = engine_for(config.registry, "sqlalchemy.")
        Base.metadata.create_all(engine)
        add_dbsession(config, engine)
        for view in (login, logout, renew, whoami, become, note, devices, revoke, revoke_others):
            config.add_route(view.__name__, f"/{view.__name__}")
            config.add_view(view, route_name=view.__name__, renderer="json")
        config.scan(__name__)
    return webtest.TestApp(config.make_wsgi_app())


def on_psycopg3(url):
    """An SQLAlchemy URL for psycopg 3's driver instead of psycopg2's."""
    assert url.startswith("postgresql+psycopg2://")
    return url.replace("+psycopg2://", "+psycopg://", 1)


@pytest.fixture(params=["dsn", "engine", "psycopg3"])
def settings(request, pgstore_settings, pgstore_url):
    """The app's settings, pgstore on its own DSN or on the app's engine;
    ``psycopg3``: the app's engine on psycopg 3 (``postgresql+psycopg``), and
    pgstore on a pool of its own, given the engine's URL as it is."""
    given = {**pgstore_settings, "sqlalchemy.url": pgstore_url}
    if request.param == "engine":
        del given["pgstore.dsn"]
        given["pgstore.engine"] = "sqlalchemy."
    elif request.param == "psycopg3":
        given["sqlalchemy.url"] = given["pgstore.dsn"] = on_psycopg3(pgstore_url)
    return given


def count(dsn, table):
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                f"SELECT count(*) FROM {table}" + (" WHERE data <> ''" if table == "http_sessions" else "")
            )
            return cur.fetchone()[0]
    finally:
        conn.close()


@pytest.mark.parametrize("mode", ["auto", "shared"])
def test_a_login_that_raises_a_redirect_saves_neither_user_nor_session(settings, mode, pgstore_dsn):
    """pyramid_tm aborts a request whose view raised (even HTTPFound): the
    session write follows, and the cookie is left alone."""
    app = make_app({**settings, "pgstore.transaction": mode})
    response = app.get("/login?name=ann&how=raise")
    assert response.status_int == 302
    assert "Set-Cookie" not in response.headers
    assert count(pgstore_dsn, "users") == 0
    assert count(pgstore_dsn, "http_sessions") == 0
    assert app.get("/whoami").json == {"userid": None, "name": None}


@pytest.mark.parametrize("mode", ["auto", "shared"])
def test_a_doomed_transaction_saves_no_session(settings, mode, pgstore_dsn):
    app = make_app({**settings, "pgstore.transaction": mode})
    response = app.get("/login?name=ann&doom=1")
    assert "Set-Cookie" not in response.headers
    assert count(pgstore_dsn, "http_sessions") == 0


@pytest.mark.parametrize("mode", ["auto", "shared"])
def test_a_login_that_commits_saves_user_and_session(settings, mode, pgstore_dsn):
    app = make_app({**settings, "pgstore.transaction": mode})
    response = app.get("/login?name=ann")
    assert response.status_int == 302 and "Set-Cookie" in response.headers
    assert app.get("/whoami").json["name"] == "ann"
    assert count(pgstore_dsn, "users") == 1


def test_a_committed_request_is_not_logged_as_aborted(settings, pgstore_dsn, caplog):
    """The transaction package calls abort() on its resources when it cleans
    up after a commit too: a session written at the vote says nothing then."""
    app = make_app({**settings, "pgstore.transaction": "auto"})
    with caplog.at_level("INFO", logger="pyramid_pgstore"):
        app.get("/login?name=ann")
        app.get("/whoami")
        app.get("/login?name=bob&how=raise")  # this one aborts, and says so
    aborted = [r for r in caplog.records if "transaction was aborted" in r.getMessage()]
    assert len(aborted) == 1


def owned_sessions(dsn):
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM http_sessions WHERE data <> '' AND userid IS NOT NULL")
            return cur.fetchone()[0]
    finally:
        conn.close()


@pytest.mark.parametrize("mode", ["auto", "shared", "none"])
@pytest.mark.parametrize("by", ["invalidate", "forget"])
@pytest.mark.parametrize("keep", ["", "1"])
def test_a_logout_stands_even_when_its_transaction_aborts(settings, mode, by, keep, pgstore_dsn):
    """A logout view that raises its redirect aborts pyramid_tm's transaction;
    the user is logged out anyway, and the response drops the cookie."""
    app = make_app({**settings, "pgstore.transaction": mode})
    app.get("/login?name=ann")
    assert app.get("/whoami").json["name"] == "ann"
    before = app.cookies["session"]
    response = app.get(f"/logout?by={by}&how=raise&keep={keep}")
    assert response.status_int == 302
    # The cookie is dropped, or replaced by a session without a user (forget()
    # keeping other data, where the renewal is written).
    assert before not in response.headers["Set-Cookie"]
    assert app.get("/whoami").json == {"userid": None, "name": None}
    app.set_cookie("session", before)  # a copy of the old cookie is no good either
    assert app.get("/whoami").json == {"userid": None, "name": None}
    assert owned_sessions(pgstore_dsn) == 0
    assert count(pgstore_dsn, "users") == 1  # the login's user row, committed


@pytest.mark.parametrize("mode", ["auto", "shared"])
def test_a_logout_that_commits_ends_the_session(settings, mode, pgstore_dsn):
    app = make_app({**settings, "pgstore.transaction": mode})
    app.get("/login?name=ann")
    response = app.get("/logout?by=invalidate")
    assert "Max-Age=0" in response.headers["Set-Cookie"]
    assert response.headers.getall("Set-Cookie") == [response.headers["Set-Cookie"]]  # once
    assert app.get("/whoami").json == {"userid": None, "name": None}
    assert count(pgstore_dsn, "http_sessions") == 0


@pytest.mark.parametrize("mode", ["auto", "shared", "none"])
def test_renewing_an_anonymous_empty_session_keeps_it(settings, mode, pgstore_dsn):
    """renew_session() gives a new id; with nothing in the session and no
    user it is not a logout."""
    app = make_app({**settings, "pgstore.transaction": mode})
    cookie = app.app.registry.queryUtility(ISessionFactory).cookie
    session_id = new_session_id()
    get_store(app.app.registry).save(session_id, {}, 600)
    app.set_cookie("session", cookie.value(session_id))
    response = app.get("/renew")
    assert "Max-Age=0" not in response.headers["Set-Cookie"]
    assert cookie.signer.loads(app.cookies["session"].strip('"').encode()) != session_id
    assert count(pgstore_dsn, "http_sessions") == 1  # the renewed one (the ended row has no data)


def test_without_following_the_transaction_the_session_outlives_the_rolled_back_user(settings, pgstore_dsn):
    """What the cookiecutter user saw before: a session for a user that does not exist."""
    app = make_app({**settings, "pgstore.transaction": "none"})
    app.get("/login?name=ann&how=raise")
    assert count(pgstore_dsn, "users") == 0
    assert app.get("/whoami").json == {"userid": 1, "name": None}


def test_in_shared_mode_a_failed_commit_rolls_back_user_and_session_together(settings, pgstore_dsn):
    """The user row and the session are one database transaction: a
    constraint checked at commit fails both."""
    app = make_app({**settings, "pgstore.transaction": "shared"})
    conn = psycopg2.connect(pgstore_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "ALTER TABLE users ADD CONSTRAINT names_once UNIQUE (name) DEFERRABLE INITIALLY DEFERRED;"
            "INSERT INTO users (name) VALUES ('ann')"
        )
    try:
        with pytest.raises(sqlalchemy.exc.IntegrityError):  # from the commit, through pyramid_tm
            app.get("/login?name=ann")
    finally:
        with conn.cursor() as cur:
            cur.execute("ALTER TABLE users DROP CONSTRAINT names_once")
        conn.close()
    assert count(pgstore_dsn, "users") == 1  # only the one inserted above
    assert count(pgstore_dsn, "http_sessions") == 0


def test_in_shared_mode_the_session_is_read_in_the_apps_transaction(settings, pgstore_dsn):
    app = make_app({**settings, "pgstore.transaction": "shared"})
    app.get("/login?name=ann")
    store = get_store(app.app.registry)
    before = store.stats()["queries"]
    assert app.get("/whoami").json["name"] == "ann"
    assert store.stats()["queries"] == before  # nothing went through the store's own pool


def test_pgstore_engine_refuses_a_psycopg3_engine_naming_the_setting_and_what_to_use(
    pgstore_settings, pgstore_url
):
    settings = {
        **pgstore_settings,
        "sqlalchemy.url": on_psycopg3(pgstore_url),
        "pgstore.engine": "sqlalchemy.",
    }
    del settings["pgstore.dsn"]
    with pytest.raises(ConfigurationError) as info:
        make_app(settings)
    message = str(info.value)
    assert message.startswith("pgstore.engine: the engine is postgresql+psycopg;")
    assert "pgstore.dsn = the engine's URL" in message and "pgstore.transaction = shared" in message


def test_every_statement_built_for_a_transaction_gives_each_parameter_a_type():
    """What psycopg 3 needs (sql.typed): a statement added with a parameter
    sql.PARAMETER_TYPES does not know fails here, not in an app."""
    from pyramid_pgstore.sql import Statements

    def flattened(value):  # a family of statements, or of their guarded forms (sql.Guarded)
        if isinstance(value, tuple):
            for each in value:
                yield from flattened(each)
        else:
            yield value

    statements = vars(Statements("s.http_sessions", typed=True))
    texts = [text for value in statements.values() for text in flattened(value)]
    assert sum("UPDATE" in text for text in texts if isinstance(text, str)) > 20
    untyped = [text for text in texts if isinstance(text, str) and re.search(r"%\(\w+\)s(?!::)", text)]
    assert untyped == []
    assert any("%(version)s::text IS NULL" in text for text in texts if isinstance(text, str))


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg3"])
def test_in_shared_mode_every_session_statement_runs_on_either_driver(
    driver, pgstore_settings, pgstore_url, pgstore_dsn
):
    """Each statement the session runs in the app's transaction (load, save,
    write, refresh, renewal, a new session for a dead cookie, the user's
    sessions listed and revoked) on a psycopg2 or a psycopg 3 connection,
    with and without the values that may be NULL (a version, a cap)."""
    url = pgstore_url if driver == "psycopg2" else on_psycopg3(pgstore_url)
    settings = {**pgstore_settings, "sqlalchemy.url": url, "pgstore.transaction": "shared"}
    settings.update({"pgstore.reissue_time": "0", "pgstore.max_lifetime": "3600"})  # every read refreshes
    app = make_app(settings)
    phone = webtest.TestApp(app.app)
    laptop = webtest.TestApp(app.app)
    app.get("/login?name=ann")  # save
    ann = app.get("/whoami").json["userid"]  # load, touch (capped)
    assert [app.get("/note").json["notes"] for _ in range(2)] == [1, 2]  # replace, with the version read
    app.get("/renew")  # renew
    assert app.get("/whoami").json["name"] == "ann"
    for device in (phone, laptop):
        device.get(f"/become?id={ann}")
        assert device.get("/whoami").json["userid"] == ann
    listed = app.get("/devices").json  # sessions_of
    assert len(listed) == 3 and sum(each["current"] for each in listed) == 1
    phones = next(each["handle"] for each in listed if not each["current"])
    assert app.get(f"/revoke?handle={phones}").json == {"revoked": True}  # delete_session_of
    assert app.get("/revoke_others").json == {"ended": 1}  # delete_sessions_of
    assert [device.get("/whoami").json["userid"] for device in (phone, laptop)] == [None, None]
    assert phone.get("/note").json == {"notes": 1}  # a new session for a dead cookie: succeed
    assert app.get("/whoami").json == {"userid": ann, "name": "ann"}
    assert owned_sessions(pgstore_dsn) == 1


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg3"])
def test_in_shared_mode_a_failed_statement_is_a_store_error_on_either_driver(
    driver, pgstore_settings, pgstore_url, pgstore_dsn
):
    """The session's statements in the app's transaction fail as the store's
    errors, whatever the app's driver: a refused write is StoreUnavailable
    (the app's 503 view), a table without a column SchemaOutdated."""
    url = pgstore_url if driver == "psycopg2" else on_psycopg3(pgstore_url)
    table = f"shared_fails_{driver}"
    settings = {**pgstore_settings, "sqlalchemy.url": url, "pgstore.transaction": "shared"}
    app = make_app({**settings, "pgstore.table": table})
    app.get("/login?name=ann")
    try:
        sql(pgstore_dsn, f"ALTER TABLE {table} ADD CONSTRAINT no_robots CHECK (user_agent <> 'robot')")
        response = app.get("/login?name=bob", headers={"User-Agent": "robot"}, status=503)
        assert "the statement failed in the app's transaction" in response.json["error"]
        assert "no_robots" in response.json["error"]
        assert app.get("/whoami").json["name"] == "ann"  # nothing of bob's login was kept
        sql(pgstore_dsn, f"ALTER TABLE {table} RENAME COLUMN last_seen TO seen")
        with pytest.raises(SchemaOutdated, match="lacks a column"):
            app.get("/login?name=cat")
    finally:
        sql(pgstore_dsn, f"DROP TABLE {table}")


def connections(dsn):
    """Connections the app under test holds on its database: its engine's and its store's."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name IN ('pool_test_engine', 'pool_test_store')"
            )
            return cur.fetchone()[0]
    finally:
        conn.close()


def test_on_the_apps_engine_a_process_holds_one_pool(pgstore_settings, pgstore_url, pgstore_dsn):
    """Connections the app's process keeps open after serving 60 requests,
    6 at a time: the engine's pool only, instead of the engine's plus the store's."""
    from concurrent.futures import ThreadPoolExecutor

    # Names of their own, so that no other test's connections are counted.
    url = pgstore_url + "?application_name=pool_test_engine"
    dsn = pgstore_settings["pgstore.dsn"] + " application_name=pool_test_store"
    base = {**pgstore_settings, "pgstore.dsn": dsn, "sqlalchemy.url": url}
    base.update({"sqlalchemy.pool_size": "3", "sqlalchemy.max_overflow": "0"})
    counts = {}
    for how in ("dsn", "engine"):
        given = {**base, "pgstore.table": f"pool_{how}", "pgstore.pool_max": "3"}
        if how == "engine":
            del given["pgstore.dsn"], given["pgstore.pool_max"]
            given["pgstore.engine"] = "sqlalchemy."
        app = make_app(given)
        app.get("/login?name=ann")
        browser = webtest.TestApp(app.app, cookiejar=app.cookiejar)
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(browser.get, ["/whoami"] * 60))
        counts[how] = connections(pgstore_dsn)
        get_store(app.app.registry).close()
        app.app.registry["pyramid_pgstore.engines"]["sqlalchemy."].dispose()
        deadline = time.monotonic() + 10
        while connections(pgstore_dsn) and time.monotonic() < deadline:
            time.sleep(0.05)  # closed backends leave pg_stat_activity a moment later
    assert counts["engine"] <= 3 < counts["dsn"]
    print(f"connections held, store on its own DSN: {counts['dsn']}; on the app's engine: {counts['engine']}")


def test_the_engine_backed_store_waits_discards_and_leaves_nothing_checked_out(pgstore_url, pgstore_dsn):
    engine = sqlalchemy.create_engine(
        pgstore_url + "?application_name=cookie_app", pool_size=1, max_overflow=0, pool_timeout=2
    )
    store = PGStore.from_engine(engine)
    store.save("id-1", {"n": 1}, 60)
    conn = psycopg2.connect(pgstore_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:  # the engine's one connection, killed while idle
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'cookie_app'"
        )
    conn.close()
    assert store.load("id-1").data == {"n": 1}  # retried on a fresh connection
    assert engine.pool.checkedout() == 0
    with engine.connect() as held:  # the engine's only connection taken by the app
        with pytest.raises(StoreUnavailable):
            store.load("id-1")
        held.rollback()
    assert store.load("id-1").data == {"n": 1}
    store.close()
    assert engine.pool.checkedout() == 0
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT 1")).scalar() == 1  # close() left the engine alone
    engine.dispose()


# pyramid-cookiecutter-starter's models/meta.py
COOKIECUTTER_NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def catalog(dsn, schema):
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns"
                " WHERE table_schema = %s AND table_name = 'http_sessions' ORDER BY ordinal_position",
                (schema,),
            )
            columns = cur.fetchall()
            cur.execute(
                "SELECT replace(indexdef, %s, 'S') FROM pg_indexes WHERE schemaname = %s"
                " AND tablename = 'http_sessions' ORDER BY indexname",
                (f"{schema}.", schema),
            )
            indexes = cur.fetchall()
            cur.execute("SELECT obj_description(%s::regclass, 'pg_class')", (f"{schema}.http_sessions",))
            comment = cur.fetchone()
        return columns, indexes, comment
    finally:
        conn.close()


def test_the_sqlalchemy_table_is_the_table_the_store_creates(pgstore_dsn, pgstore_url):
    conn = psycopg2.connect(pgstore_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE SCHEMA IF NOT EXISTS by_store; CREATE SCHEMA IF NOT EXISTS by_alembic")
    conn.close()
    PGStore(pgstore_dsn, table="by_store.http_sessions").close()
    engine = sqlalchemy.create_engine(pgstore_url)
    metadata = MetaData(naming_convention=COOKIECUTTER_NAMING)  # must not rename the key
    sessions_table(metadata, schema_name="by_alembic")
    metadata.create_all(engine)
    engine.dispose()
    try:
        assert catalog(pgstore_dsn, "by_alembic") == catalog(pgstore_dsn, "by_store")
        with PGStore(pgstore_dsn, table="by_alembic.http_sessions", create_table=False) as store:
            assert store.prepare_table() == []  # current: nothing to create or upgrade
            store.save("id-1", {"n": 1}, 60)
    finally:
        conn = psycopg2.connect(pgstore_dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("DROP SCHEMA by_store CASCADE; DROP SCHEMA by_alembic CASCADE")
        conn.close()
