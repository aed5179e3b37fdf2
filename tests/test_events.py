"""Sign-in and sign-out events, and a limit of sessions per user.

``SessionOwnerChanged`` and ``SessionEnded`` are notified through the
registry once the write they report is stored: under pyramid_tm, after the
commit, and never for a write rolled back.
"""

import threading

import pytest
import sqlalchemy
import webtest
from db import add_dbsession, sql
from pyramid.authentication import SessionAuthenticationHelper
from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPFound
from served import Served

from pyramid_pgstore import (
    SessionEnded,
    SessionOwnerChanged,
    get_store,
    list_sessions,
    revoke_other_sessions,
    revoke_session,
)

auth = SessionAuthenticationHelper()


def login(request):
    auth.remember(request, request.params["user"])
    if request.params.get("how") == "raise":
        raise HTTPFound("/")
    if request.params.get("doom"):
        request.tm.doom()
    return {}


def logout(request):
    if request.params.get("by") == "invalidate":
        request.session.invalidate()
    else:
        auth.forget(request)
        if request.params.get("keep"):
            request.session["theme"] = "dark"
    if request.params.get("how") == "raise":
        raise HTTPFound("/")  # pyramid_tm aborts
    return {}


def put(request):
    request.session.update(request.params)
    return {}


def handles(request):
    return {"mine": request.session.storage_key, "all": [info.handle for info in list_sessions(request)]}


def revoke(request):
    return {"done": revoke_session(request, request.params["handle"])}


def revoke_others(request):
    return {"count": revoke_other_sessions(request)}


VIEWS = (login, logout, put, handles, revoke, revoke_others)


class Heard:
    """The events an app's subscribers were told, in order."""

    def __init__(self, config):
        self.events = []
        self.lock = threading.Lock()
        config.add_subscriber(self.hear, SessionOwnerChanged)
        config.add_subscriber(self.hear, SessionEnded)

    def hear(self, event):
        with self.lock:
            self.events.append(event)

    def take(self):
        with self.lock:
            taken, self.events = self.events, []
        return taken


def make_app(settings, tm=False, engine=None):
    config = Configurator(settings={"tm.manager_hook": "pyramid_tm.explicit_manager", **settings})
    if tm:
        config.include("pyramid_tm")
    config.include("pyramid_pgstore")
    if engine is not None:
        add_dbsession(config, engine)
    heard = Heard(config)
    for view in VIEWS:
        config.add_route(view.__name__, f"/{view.__name__}")
        config.add_view(view, route_name=view.__name__, renderer="json")
    return webtest.TestApp(config.make_wsgi_app()), heard


def sign_in(browser, user):
    """Log ``browser`` in as ``user``; the handle of its session once stored."""
    browser.get(f"/login?user={user}")
    return browser.get("/handles").json["mine"]


def owner_changes(events):
    return [(e.previous_userid, e.userid) for e in events if isinstance(e, SessionOwnerChanged)]


# -- sign-in and sign-out -----------------------------------------------------


def test_a_login_a_switch_and_a_logout_by_forget_each_say_who_and_which_session(pgstore_settings):
    app, heard = make_app(pgstore_settings)
    handle = sign_in(app, "ann")
    (event,) = heard.take()
    assert isinstance(event, SessionOwnerChanged)
    assert (event.previous_userid, event.userid, event.handle) == (None, "ann", handle)
    assert event.request is not None and event.request.path == "/login"
    app.get("/login?user=bob")
    assert owner_changes(heard.take()) == [("ann", "bob")]
    app.get("/logout")  # forget(): nothing left, the session ends
    assert owner_changes(heard.take()) == [("bob", None)]


def test_a_logout_by_forget_keeping_data_names_the_renewed_session(pgstore_settings):
    app, heard = make_app(pgstore_settings)
    app.get("/login?user=ann")
    heard.take()
    app.get("/logout?keep=1")
    (event,) = heard.take()
    assert (event.previous_userid, event.userid) == ("ann", None)
    assert event.handle == app.get("/handles").json["mine"]


def test_invalidate_is_a_session_ended(pgstore_settings):
    app, heard = make_app(pgstore_settings)
    handle = sign_in(app, "ann")
    heard.take()
    app.get("/logout?by=invalidate")
    (event,) = heard.take()
    assert isinstance(event, SessionEnded)
    assert (event.handle, event.userid, event.reason) == (handle, "ann", "invalidated")


def test_reading_and_writing_a_session_of_the_same_user_says_nothing(pgstore_settings):
    app, heard = make_app(pgstore_settings)
    app.get("/login?user=ann")
    heard.take()
    app.get("/login?user=ann")  # the same user again: no change of owner
    app.get("/handles")
    assert heard.take() == []


def test_revoking_one_or_all_other_sessions_says_which_ended(pgstore_settings):
    app, heard = make_app(pgstore_settings)
    others = [webtest.TestApp(app.app) for _ in range(3)]
    handles = [sign_in(other, "ann") for other in others]
    app.get("/login?user=ann")
    heard.take()
    assert app.get(f"/revoke?handle={handles[0]}").json == {"done": True}
    (event,) = heard.take()
    assert (event.handle, event.userid, event.reason) == (handles[0], "ann", "revoked")
    assert app.get("/revoke_others").json == {"count": 2}
    events = heard.take()
    assert sorted(e.handle for e in events) == sorted(handles[1:])
    assert {(e.userid, e.reason, e.request.path) for e in events} == {("ann", "revoked", "/revoke_others")}


def test_the_store_says_so_too_when_called_without_a_request(pgstore_settings):
    app, heard = make_app(pgstore_settings)
    handle = sign_in(app, "ann")
    heard.take()
    assert get_store(app.app.registry).delete_sessions_of("ann") == 1
    (event,) = heard.take()
    assert (event.request, event.handle, event.userid, event.reason) == (None, handle, "ann", "revoked")


# -- under pyramid_tm ---------------------------------------------------------


@pytest.fixture(params=["auto", "shared"])
def tm_app(request, pgstore_settings, pgstore_url):
    engine = sqlalchemy.create_engine(pgstore_url)
    app, heard = make_app({**pgstore_settings, "pgstore.transaction": request.param}, tm=True, engine=engine)
    yield app, heard
    engine.dispose()


def test_under_pyramid_tm_a_login_is_told_once_its_transaction_commits(tm_app):
    app, heard = tm_app
    handle = sign_in(app, "ann")
    (event,) = heard.take()
    assert (event.previous_userid, event.userid, event.handle) == (None, "ann", handle)
    app.get("/login?user=bob")  # a switch of user: a new id, at the commit
    (event,) = heard.take()
    assert (event.previous_userid, event.userid) == ("ann", "bob")
    assert event.handle == app.get("/handles").json["mine"] != handle


@pytest.mark.parametrize("how", ["how=raise", "doom=1"])
def test_an_aborted_or_doomed_transaction_sends_no_event(tm_app, how, pgstore_dsn):
    app, heard = tm_app
    app.get(f"/login?user=ann&{how}", status="*")
    assert heard.take() == []
    assert sql(pgstore_dsn, "SELECT count(*) FROM http_sessions WHERE userid = 'ann'") == [(0,)]


def test_a_logout_stands_when_its_transaction_aborts_and_so_does_its_event(tm_app, pgstore_dsn):
    app, heard = tm_app
    app.get("/login?user=ann")
    heard.take()

    app.get("/logout?how=raise", status=302)
    assert owner_changes(heard.take()) == [("ann", None)]
    assert sql(pgstore_dsn, "SELECT count(*) FROM http_sessions WHERE userid = 'ann'") == [(0,)]


# -- max_sessions_per_user ----------------------------------------------------


def live_sessions_of(dsn, userid):
    rows = sql(dsn, "SELECT count(*) FROM http_sessions WHERE userid = %s AND expires_on > now()", (userid,))
    return rows[0][0]


def test_logins_beyond_the_limit_end_the_least_recently_seen(pgstore_settings, pgstore_dsn):
    app, heard = make_app({**pgstore_settings, "pgstore.max_sessions_per_user": "2"})
    browsers = [webtest.TestApp(app.app) for _ in range(3)]
    first = sign_in(browsers[0], "ann")
    second = sign_in(browsers[1], "ann")
    browsers[0].get("/put?x=1")  # the first is seen again: the second is now the least recent
    heard.take()
    browsers[2].get("/login?user=ann")
    ended = [e for e in heard.take() if isinstance(e, SessionEnded)]
    assert [(e.handle, e.userid, e.reason) for e in ended] == [(second, "ann", "limit")]
    assert live_sessions_of(pgstore_dsn, "ann") == 2
    assert browsers[0].get("/handles").json["mine"] == first
    assert browsers[1].get("/handles").json["mine"] is None  # signed out on that device
    webtest.TestApp(app.app).get("/login?user=bob")  # another user's sessions are not counted
    assert live_sessions_of(pgstore_dsn, "ann") == 2


def test_a_login_costs_one_statement_more_with_the_limit(pgstore_settings):
    costs = {}
    for limit in ("none", "3"):
        app, _ = make_app({**pgstore_settings, "pgstore.max_sessions_per_user": limit})
        app.get("/handles?warm=1")
        store = get_store(app.app.registry)
        app.get("/login?user=ann")  # a new session with a user: one INSERT
        app.get("/login?user=bob")  # a switch: read, renew
        before = store.stats()["queries"]
        app.get("/login?user=cid")
        costs[limit] = store.stats()["queries"] - before
    assert costs == {"none": 2, "3": 3}


def test_simultaneous_logins_never_leave_more_than_the_limit(pgstore_settings, pgstore_dsn):
    import urllib.request

    app, heard = make_app({**pgstore_settings, "pgstore.max_sessions_per_user": "2"})
    served = Served(app.app, threads=8)
    try:
        for round_ in range(8):
            user = f"user{round_}"
            barrier = threading.Barrier(6)

            def sign_in(user, barrier):
                barrier.wait()
                url = f"{served.url}/login?user={user}"
                with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - our own http URL
                    assert response.status == 200

            threads = [threading.Thread(target=sign_in, args=(user, barrier)) for _ in range(6)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert live_sessions_of(pgstore_dsn, user) == 2, f"round {round_}"
        limit_events = [e for e in heard.take() if isinstance(e, SessionEnded)]
        assert len(limit_events) == 8 * 4  # each surplus session ended once, and said so once
        assert {e.reason for e in limit_events} == {"limit"}
    finally:
        served.close()
