"""The Pyramid session factory through WebTest, against the real throwaway server.

Every test builds a small app with ``config.include('pyramid_pgstore')`` and
drives it the way a browser would. Round trips are counted with the store's
``stats()['queries']``; the table is inspected on a connection of the test's own.
"""

import base64
import hashlib
import json
import logging
import threading

import pytest
import webtest
from db import sql
from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPFound
from pyramid.interfaces import ISession
from pyramid.response import Response
from webob.cookies import SignedSerializer
from zope.interface.verify import verifyObject

import pyramid_pgstore
from pyramid_pgstore import PGStore, PGStoreSessionFactory, SessionTooLarge, get_store
from pyramid_pgstore.cookie import SALT
from pyramid_pgstore.store import storage_key

# -- helpers ------------------------------------------------------------------


def rows(dsn):
    """The session table's sessions as {key: data}. A session a request ended
    (invalidate, a new id) stays a moment as a row with no data, so that
    requests in flight with its cookie know to leave the cookie alone: it
    holds nothing and is no session."""
    return dict(sql(dsn, "SELECT key, data FROM http_sessions WHERE data <> ''"))


def read(request):
    """Only reads the session."""
    session = request.session
    return {"data": dict(session), "new": session.new, "value": session.get("value")}


def write(request):
    """Stores every query parameter in the session."""
    request.session.update(request.GET.items())
    return {"data": dict(request.session)}


def incr(request):
    """A visit counter: read, modify, write."""
    session = request.session
    session["n"] = session.get("n", 0) + 1
    return {"n": session["n"], "new": session.new}


def untouched(request):
    """Never looks at request.session."""
    return {"ok": True}


def clear(request):
    request.session.clear()
    return {"data": dict(request.session)}


COMMON_VIEWS = {"read": read, "write": write, "incr": incr, "untouched": untouched, "clear": clear}


def make_router(pgstore_settings, views=(), setup=None, **settings):
    """A WSGI app with the common views plus ``views`` (name -> view), each at
    /name with the JSON renderer. ``settings`` are pgstore.* names without the
    prefix, merged over the test's DSN and secret."""
    config = Configurator(
        settings={**pgstore_settings, **{f"pgstore.{name}": value for name, value in settings.items()}}
    )
    config.include("pyramid_pgstore")
    for name, view in {**COMMON_VIEWS, **dict(views)}.items():
        config.add_route(name, f"/{name}")
        config.add_view(view, route_name=name, renderer="json")
    if setup is not None:
        setup(config)
    return config.make_wsgi_app()


def make_app(pgstore_settings, views=(), setup=None, **settings):
    return webtest.TestApp(make_router(pgstore_settings, views, setup, **settings))


def queries(app):
    return get_store(app.app.registry).stats()["queries"]


def cost(app, method, url, **kwargs):
    """Make one request; return the response and how many round trips it made."""
    before = queries(app)
    response = getattr(app, method)(url, **kwargs)
    return response, queries(app) - before


def set_cookies(response, name="session"):
    """The response's Set-Cookie headers for ``name``, parsed: (value, attributes),
    attribute names lowercased, flags mapped to True."""
    found = []
    for header in response.headers.getall("Set-Cookie"):
        first, *attributes = (part.strip() for part in header.split(";"))
        cookie_name, _, value = first.partition("=")
        if cookie_name != name:
            continue
        parsed = {}
        for attribute in attributes:
            key, sep, attr_value = attribute.partition("=")
            parsed[key.lower()] = attr_value if sep else True
        found.append((value, parsed))
    return found


def the_cookie(response, name="session"):
    """The one Set-Cookie for ``name``: (value, attributes)."""
    found = set_cookies(response, name)
    assert len(found) == 1, response.headers.getall("Set-Cookie")
    return found[0]


def is_deletion(attributes):
    return attributes.get("max-age") == "0"


def session_id_of(cookie_value):
    """The session id inside a cookie: the signed payload after the 64-byte HMAC-SHA512."""
    raw = base64.urlsafe_b64decode(cookie_value + "=" * (-len(cookie_value) % 4))
    return raw[64:].decode("ascii")


def cookie_header(value, name="session"):
    return {"Cookie": f"{name}={value}"}


def fresh_client(app):
    """Another browser: a TestApp with an empty cookie jar on the same WSGI app."""
    return webtest.TestApp(app.app)


def vary(response):
    return [part.strip() for part in response.headers.get("Vary", "").split(",") if part.strip()]


@pytest.fixture
def app(pgstore_settings):
    return make_app(pgstore_settings)


# -- the ISession -----------------------------------------------------------------


def test_the_session_provides_pyramids_isession(pgstore_settings):
    seen = []

    def grab(request):
        seen.append(request.session)
        return {}

    app = make_app(pgstore_settings, {"grab": grab})
    app.get("/grab")  # a new session
    app.get("/write?value=x")
    app.get("/grab")  # a loaded session
    assert len(seen) == 2
    for session in seen:
        assert verifyObject(ISession, session)
    assert seen[0].new is True
    assert seen[1].new is False


def test_created_and_new_survive_across_requests(pgstore_settings, pgstore_clock):
    def show(request):
        return {"created": request.session.created, "new": request.session.new}

    app = make_app(pgstore_settings, {"show": show})
    first = app.get("/show").json
    app.get("/write?value=x")
    pgstore_clock.advance(100)
    later = app.get("/show").json
    assert first["new"] is True and later["new"] is False
    # The first is the app's clock, the later the database's: close, not equal.
    assert abs(later["created"] - first["created"]) < 5


def test_pop_of_a_missing_key_raises_key_error_and_pop_with_a_default_does_not(pgstore_settings):
    def pops(request):
        session = request.session
        try:
            session.pop("missing")
        except KeyError as exc:
            raised = repr(exc)
        else:
            raised = None
        return {
            "raised": raised,
            "default": session.pop("missing", "fallback"),
            "value": session.pop("value"),
        }

    app = make_app(pgstore_settings, {"pops": pops})
    app.get("/write?value=x&other=y")
    result = app.get("/pops").json
    assert result == {"raised": "KeyError('missing')", "default": "fallback", "value": "x"}
    assert app.get("/read").json["data"] == {"other": "y"}


def test_a_missing_key_raises_key_error_from_getitem(pgstore_settings):
    def getitem(request):
        try:
            request.session["missing"]
        except KeyError:
            return {"raised": True}
        return {"raised": False}

    app = make_app(pgstore_settings, {"getitem": getitem})
    assert app.get("/getitem").json == {"raised": True}


def test_the_session_reads_like_a_dict(pgstore_settings):
    def reads(request):
        session = request.session
        return {
            "len": len(session),
            "iter": list(session),
            "keys": list(session.keys()),
            "values": list(session.values()),
            "items": [list(item) for item in session.items()],
            "in": ["a" in session, "zzz" in session],
            "get": [session.get("a"), session.get("zzz"), session.get("zzz", 7)],
            "bool": bool(session),
            "eq": session == {"a": "1", "b": "2"},
        }

    app = make_app(pgstore_settings, {"reads": reads})
    app.get("/write?a=1&b=2")
    assert app.get("/reads").json == {
        "len": 2,
        "iter": ["a", "b"],
        "keys": ["a", "b"],
        "values": ["1", "2"],
        "items": [["a", "1"], ["b", "2"]],
        "in": [True, False],
        "get": ["1", None, 7],
        "bool": True,
        "eq": True,
    }


def test_setdefault_update_popitem_and_del_are_saved(pgstore_settings):
    def mutate(request):
        session = request.session
        kept = session.setdefault("a", "ignored")
        added = session.setdefault("c", "3")
        session.update({"d": "4"}, e="5")
        last = session.popitem()
        del session["b"]
        return {"kept": kept, "added": added, "popped": list(last)}

    app = make_app(pgstore_settings, {"mutate": mutate})
    app.get("/write?a=1&b=2")
    assert app.get("/mutate").json == {"kept": "1", "added": "3", "popped": ["e", "5"]}
    assert app.get("/read").json["data"] == {"a": "1", "c": "3", "d": "4"}


def test_the_in_place_or_operator_saves_like_update(pgstore_settings):
    def merge(request):
        session = request.session
        session |= {"merged": request.GET["v"]}
        return {"data": dict(session)}

    app = make_app(pgstore_settings, {"merge": merge})
    app.get("/merge?v=first")  # on a new session
    assert app.get("/read").json["data"] == {"merged": "first"}
    app.get("/merge?v=second")  # on a loaded session
    assert app.get("/read").json["data"] == {"merged": "second"}


def test_clear_empties_the_session_for_the_next_request(app):
    app.get("/write?a=1&b=2")
    assert app.get("/clear").json == {"data": {}}
    # Like Pyramid's own cookie sessions: still the same session, now empty.
    assert app.get("/read").json == {"data": {}, "new": False, "value": None}


def test_legacy_csrf_tokens_persist_across_requests(pgstore_settings):
    def get_token(request):
        return {"token": request.session.get_csrf_token()}

    def new_token(request):
        return {"token": request.session.new_csrf_token()}

    app = make_app(pgstore_settings, {"get_token": get_token, "new_token": new_token})
    first = app.get("/get_token").json["token"]  # made on a new session, and saved
    assert first
    assert app.get("/get_token").json["token"] == first
    second = app.get("/new_token").json["token"]
    assert second != first
    assert app.get("/get_token").json["token"] == second
    assert fresh_client(app).get("/get_token").json["token"] not in (first, second)


def test_pyramids_default_csrf_policy_checks_the_token_from_a_previous_request(pgstore_settings):
    from pyramid.csrf import get_csrf_token

    def form(request):
        return {"token": get_csrf_token(request)}

    def submit(request):
        request.session["submitted"] = True
        return {"ok": True}

    def setup(config):
        config.set_default_csrf_options(require_csrf=True)
        config.add_route("submit", "/submit")
        config.add_view(submit, route_name="submit", request_method="POST", renderer="json")

    app = make_app(pgstore_settings, {"form": form}, setup)
    token = app.get("/form").json["token"]
    assert app.post("/submit", status=400)
    assert app.post("/submit", {"csrf_token": "not-the-token"}, status=400)
    assert app.get("/read").json["data"].get("submitted") is None
    assert app.post("/submit", {"csrf_token": token}).json == {"ok": True}
    assert app.post("/submit", headers={"X-CSRF-Token": token}).json == {"ok": True}
    assert app.get("/read").json["data"]["submitted"] is True
    # Another browser's session has another token.
    other = fresh_client(app)
    other.get("/form")
    assert other.post("/submit", {"csrf_token": token}, status=400)


# -- the cookie -------------------------------------------------------------------


def test_default_cookie_attributes(app):
    value, attributes = the_cookie(app.get("/write?value=x"))
    assert value
    assert attributes["path"] == "/"
    assert attributes["httponly"] is True
    assert attributes["samesite"] == "Lax"
    for absent in ("max-age", "expires", "domain", "secure"):
        assert absent not in attributes  # a browser-session cookie, for this host only


def test_every_cookie_setting_shows_in_the_cookie(pgstore_settings):
    app = make_app(
        pgstore_settings,
        cookie_name="sid",
        max_age="3600",
        path="/app",
        domain="example.com",
        secure="true",
        httponly="false",
        samesite="Strict",
    )
    response = app.get("/write?value=x")
    assert set_cookies(response, "session") == []
    value, attributes = the_cookie(response, "sid")
    assert value
    assert attributes["max-age"] == "3600"
    assert "expires" in attributes
    assert attributes["path"] == "/app"
    assert attributes["domain"] == "example.com"
    assert attributes["secure"] is True
    assert "httponly" not in attributes
    assert attributes["samesite"] == "Strict"
    # The cookie is read under its configured name, too.
    assert app.get("/read", headers=cookie_header(value, "sid")).json["data"] == {"value": "x"}
    assert app.get("/read", headers=cookie_header(value, "session")).json["data"] == {}


def test_samesite_none_with_secure(pgstore_settings):
    app = make_app(pgstore_settings, samesite="None", secure="true")
    _, attributes = the_cookie(app.get("/write?value=x"))
    assert attributes["samesite"] == "None"
    assert attributes["secure"] is True


def test_max_age_is_sent_again_when_the_session_is_saved(pgstore_settings):
    app = make_app(pgstore_settings, max_age="600")
    value, _ = the_cookie(app.get("/write?value=x"))
    again, attributes = the_cookie(app.get("/write?value=y"))
    assert again == value
    assert attributes["max-age"] == "600"


def test_the_cookie_holds_a_signed_opaque_id_and_the_table_only_its_hash(app, pgstore_dsn):
    secret_note = "hunter2-the-secret-note"
    value, _ = the_cookie(app.get(f"/write?note={secret_note}"))
    raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    assert secret_note.encode() not in raw and secret_note not in value
    session_id = session_id_of(value)
    assert len(base64.urlsafe_b64decode(session_id + "=")) == 32  # 256 random bits
    table = rows(pgstore_dsn)
    assert list(table) == [hashlib.sha256(session_id.encode()).hexdigest()]
    dump = repr(sql(pgstore_dsn, "SELECT * FROM http_sessions"))
    assert value not in dump and session_id not in dump
    assert json.loads(table[storage_key(session_id)]) == {"note": secret_note}


def test_a_second_session_gets_another_id(app):
    first, _ = the_cookie(app.get("/write?value=x"))
    second, _ = the_cookie(fresh_client(app).get("/write?value=x"))
    assert session_id_of(first) != session_id_of(second)


def forge(secret, session_id):
    """A cookie value for ``session_id`` signed with ``secret`` the way WebOb does it."""
    signer = SignedSerializer(secret, SALT, "sha512", serializer=_Ascii())
    return signer.dumps(session_id).decode("ascii")


class _Ascii:
    def dumps(self, value):
        return value.encode("ascii")

    def loads(self, value):
        return value.decode("ascii")


def test_secret_rotation_old_cookie_loads_while_the_old_secret_is_listed(pgstore_settings, pgstore_dsn):
    old = pgstore_settings["pgstore.secret"]
    new = "n" * 20 + old[:20]  # another secret, long enough
    before = make_app(pgstore_settings)
    old_cookie, _ = the_cookie(before.get("/write?value=kept"))

    rotated = make_app({**pgstore_settings, "pgstore.secret": f"{new}\n{old}"})
    response = rotated.get("/read", headers=cookie_header(old_cookie))
    assert response.json["data"] == {"value": "kept"}
    # Re-issued for the same session, now signed with the new secret.
    new_cookie, _ = the_cookie(response)
    assert new_cookie != old_cookie
    assert session_id_of(new_cookie) == session_id_of(old_cookie)
    assert "Cookie" in vary(response)
    assert len(rows(pgstore_dsn)) == 1

    only_new = make_app({**pgstore_settings, "pgstore.secret": new})
    assert only_new.get("/read", headers=cookie_header(new_cookie)).json["data"] == {"value": "kept"}
    response, trips = cost(only_new, "get", "/read", headers=cookie_header(old_cookie))
    assert response.json == {"data": {}, "new": True, "value": None}
    assert trips == 0
    # A current cookie is not re-issued on a read.
    assert set_cookies(rotated.get("/read", headers=cookie_header(new_cookie))) == []


def test_a_forged_cookie_for_a_real_id_is_refused_unless_signed_with_the_secret(app, pgstore_settings):
    value, _ = the_cookie(app.get("/write?value=x"))
    session_id = session_id_of(value)
    secret = pgstore_settings["pgstore.secret"]
    assert fresh_client(app).get("/read", headers=cookie_header(forge(secret, session_id))).json["data"] == {
        "value": "x"
    }
    wrong = forge("w" * 48, session_id)
    assert fresh_client(app).get("/read", headers=cookie_header(wrong)).json["new"] is True


# -- the cost model -----------------------------------------------------------------


def test_a_request_that_never_touches_the_session_costs_nothing(app):
    app.get("/write?value=x")  # the browser now sends a valid cookie
    response, trips = cost(app, "get", "/untouched")
    assert trips == 0
    assert set_cookies(response) == []


def test_a_new_session_that_only_reads_costs_nothing_and_sets_no_cookie(app, pgstore_dsn):
    response, trips = cost(app, "get", "/read")
    assert response.json == {"data": {}, "new": True, "value": None}
    assert trips == 0
    assert set_cookies(response) == []
    assert rows(pgstore_dsn) == {}


def test_creating_a_session_is_one_round_trip(app, pgstore_dsn):
    response, trips = cost(app, "get", "/write?value=x")
    assert trips == 1
    assert the_cookie(response)
    assert len(rows(pgstore_dsn)) == 1


def test_reading_an_existing_session_is_one_round_trip_and_writes_nothing(app, pgstore_dsn):
    app.get("/write?value=x")
    before = sql(pgstore_dsn, "SELECT data, modified_on, expires_on FROM http_sessions")
    response, trips = cost(app, "get", "/read")
    assert response.json["value"] == "x"
    assert trips == 1
    assert set_cookies(response) == []
    assert sql(pgstore_dsn, "SELECT data, modified_on, expires_on FROM http_sessions") == before


def test_read_modify_write_is_two_round_trips(app):
    app.get("/incr")
    response, trips = cost(app, "get", "/incr")
    assert response.json["n"] == 2
    assert trips == 2
    assert set_cookies(response) == []  # the browser already has it


def test_a_session_emptied_by_the_app_stays_empty_so_a_concurrent_change_is_kept(app, pgstore_dsn):
    """Emptying is a write like any other (another request may be adding a
    key at the same moment: tests/test_concurrency.py); only invalidate(), or
    removing the user of a session with nothing else in it, ends it."""
    value, _ = the_cookie(app.get("/write?a=1&b=2"))
    response, trips = cost(app, "get", "/clear")
    assert trips == 2  # load, write
    assert rows(pgstore_dsn) == {storage_key(session_id_of(value)): "{}"}
    assert set_cookies(response) == []
    assert "Cookie" in vary(response)
    assert fresh_client(app).get("/read", headers=cookie_header(value)).json["new"] is False


def test_a_logout_that_leaves_nothing_ends_the_session_with_its_cookie(pgstore_settings, pgstore_dsn):
    def login(request):
        request.session["auth.userid"] = "ann"
        return {}

    def logout(request):
        request.session.pop("auth.userid")  # what Pyramid's forget() does
        return {}

    app = make_app(pgstore_settings, {"login": login, "logout": logout})
    value, _ = the_cookie(app.get("/login"))
    response = app.get("/logout")
    _, attributes = the_cookie(response)
    assert is_deletion(attributes)
    assert rows(pgstore_dsn) == {}
    assert fresh_client(app).get("/read", headers=cookie_header(value)).json["new"] is True


def test_many_changes_in_one_request_are_one_write(pgstore_settings, pgstore_clock):
    def busy(request):
        session = request.session
        for i in range(20):
            session[f"k{i}"] = i
        session.setdefault("list", []).append(1)
        session.update(more=True)
        del session["k0"]
        session.changed()
        session.changed()
        return {"len": len(session)}

    app = make_app(pgstore_settings, {"busy": busy})
    app.get("/write?value=x")
    pgstore_clock.advance(600)  # the expiry refresh is due as well
    response, trips = cost(app, "get", "/busy")
    assert response.json == {"len": 22}
    assert trips == 2  # load, one save that also moves the expiry


def test_a_read_refreshes_the_expiry_only_once_reissue_time_has_passed(app, pgstore_clock, pgstore_dsn):
    def expires():
        return sql(pgstore_dsn, "SELECT expires_on FROM http_sessions")[0][0]

    app.get("/write?value=x")  # default timeout 1200 s: reissue_time 120 s
    saved = expires()
    pgstore_clock.advance(100)
    response, trips = cost(app, "get", "/read")
    assert trips == 1
    assert expires() == saved
    pgstore_clock.advance(30)  # 130 s since the save
    response, trips = cost(app, "get", "/read")
    assert response.json["value"] == "x"
    assert trips == 2  # load, touch
    assert (expires() - saved).total_seconds() == pytest.approx(130, abs=5)
    assert set_cookies(response) == []  # a browser-session cookie needs no refresh
    _, trips = cost(app, "get", "/read")
    assert trips == 1  # just refreshed


def test_reissue_time_setting_controls_the_refresh(pgstore_settings, pgstore_clock):
    app = make_app(pgstore_settings, timeout="1200", reissue_time="10")
    app.get("/write?value=x")
    pgstore_clock.advance(5)
    assert cost(app, "get", "/read")[1] == 1
    pgstore_clock.advance(6)
    assert cost(app, "get", "/read")[1] == 2


def test_a_refresh_with_max_age_sends_the_cookie_again(pgstore_settings, pgstore_clock):
    app = make_app(pgstore_settings, max_age="3600", timeout="1200")
    value, _ = the_cookie(app.get("/write?value=x"))
    pgstore_clock.advance(200)
    response, trips = cost(app, "get", "/read")
    assert trips == 2
    again, attributes = the_cookie(response)
    assert again == value and attributes["max-age"] == "3600"


# -- expiry ---------------------------------------------------------------------------


def test_a_session_idle_past_the_timeout_is_gone(pgstore_settings, pgstore_clock):
    app = make_app(pgstore_settings, timeout="60")
    app.get("/write?value=x")
    pgstore_clock.advance(59)
    assert app.get("/read").json["value"] == "x"
    pgstore_clock.advance(61)  # 61 s idle since that read refreshed it
    assert app.get("/read").json == {"data": {}, "new": True, "value": None}
    # A write now starts a new session, under a new id.
    assert app.get("/incr").json == {"n": 1, "new": True}


def test_a_session_used_every_30_seconds_outlives_a_60_second_timeout(pgstore_settings, pgstore_clock):
    app = make_app(pgstore_settings, timeout="60")
    app.get("/write?value=x")
    for _ in range(6):  # three minutes in all
        pgstore_clock.advance(30)
        response = app.get("/read")
        assert response.json["value"] == "x"
        assert response.json["new"] is False


def test_timeout_none_never_expires(pgstore_settings, pgstore_clock):
    app = make_app(pgstore_settings, timeout="none")
    app.get("/write?value=x")
    pgstore_clock.advance(10 * 365 * 86400)
    response, trips = cost(app, "get", "/read")
    assert response.json["value"] == "x"
    assert trips == 1  # nothing to refresh


def test_with_timeout_none_max_age_bounds_the_stored_session(pgstore_settings, pgstore_clock):
    app = make_app(pgstore_settings, timeout="none", max_age="100")
    app.get("/write?value=x")
    pgstore_clock.advance(101)
    assert app.get("/read").json["new"] is True


# -- invalidate ----------------------------------------------------------------------


def test_invalidate_deletes_the_row_at_once_and_drops_the_cookie(pgstore_settings, pgstore_dsn):
    def logout(request):
        request.session.invalidate()
        return {
            "rows_left": len(rows(pgstore_dsn)),
            "data": dict(request.session),
            "new": request.session.new,
        }

    app = make_app(pgstore_settings, {"logout": logout})
    value, _ = the_cookie(app.get("/write?user=ann"))
    response = app.get("/logout")
    assert response.json == {"rows_left": 0, "data": {}, "new": True}
    _, attributes = the_cookie(response)
    assert is_deletion(attributes)
    assert "Cookie" in vary(response)
    replay, trips = cost(app, "get", "/read", headers=cookie_header(value))
    assert replay.json == {"data": {}, "new": True, "value": None}
    assert trips == 1  # a well-signed cookie for a dead id: one SELECT, finds nothing


def test_a_write_after_invalidate_gets_a_brand_new_id(pgstore_settings, pgstore_dsn):
    def login(request):
        session = request.session
        session.invalidate()
        session["user"] = request.GET["user"]
        return {"new": session.new}

    app = make_app(pgstore_settings, {"login": login})
    old_cookie, _ = the_cookie(app.get("/write?user=anonymous&cart=1"))
    response, trips = cost(app, "get", "/login?user=ann")
    assert trips == 3  # load, delete, insert
    new_cookie, attributes = the_cookie(response)
    assert not is_deletion(attributes)
    assert session_id_of(new_cookie) != session_id_of(old_cookie)
    table = rows(pgstore_dsn)
    assert list(table) == [storage_key(session_id_of(new_cookie))]
    assert json.loads(table[storage_key(session_id_of(new_cookie))]) == {"user": "ann"}
    assert app.get("/read").json["data"] == {"user": "ann"}
    assert fresh_client(app).get("/read", headers=cookie_header(old_cookie)).json["new"] is True


def test_invalidate_on_a_new_session_writes_nothing(pgstore_settings, pgstore_dsn):
    def logout(request):
        request.session.invalidate()
        return {}

    app = make_app(pgstore_settings, {"logout": logout})
    response, trips = cost(app, "get", "/logout")
    assert trips == 0
    assert set_cookies(response) == []
    assert rows(pgstore_dsn) == {}


# -- flash ----------------------------------------------------------------------------


def test_flash_messages_queue_across_requests(pgstore_settings):
    def flash(request):
        session = request.session
        session.flash("saved")
        session.flash("saved")  # duplicates allowed by default
        session.flash("only once", allow_duplicate=False)
        session.flash("only once", allow_duplicate=False)
        session.flash("careful", queue="warning")
        return {}

    def peek(request):
        session = request.session
        return {"default": session.peek_flash(), "warning": session.peek_flash("warning")}

    def pop(request):
        return {"default": request.session.pop_flash()}

    def pop_warning(request):
        return {"warning": request.session.pop_flash("warning")}

    app = make_app(pgstore_settings, {"flash": flash, "peek": peek, "pop": pop, "pop_warning": pop_warning})
    app.get("/flash")
    expected = {"default": ["saved", "saved", "only once"], "warning": ["careful"]}
    assert app.get("/peek").json == expected
    assert app.get("/peek").json == expected  # peeking leaves them
    assert app.get("/pop").json == {"default": ["saved", "saved", "only once"]}
    assert app.get("/peek").json == {"default": [], "warning": ["careful"]}
    assert app.get("/pop").json == {"default": []}
    response = app.get("/pop_warning")
    assert response.json == {"warning": ["careful"]}
    # Nothing left in the session: it stays, empty (a concurrent flash may be on its way).
    assert set_cookies(response) == []
    assert app.get("/peek").json == {"default": [], "warning": []}


# -- nested mutation ------------------------------------------------------------------


def test_a_change_inside_a_nested_value_is_saved_without_changed(pgstore_settings):
    def add(request):
        session = request.session
        session["cart"].append(request.GET["item"])
        session["profile"]["visits"] += 1
        return {}

    def start(request):
        request.session["cart"] = []
        request.session["profile"] = {"visits": 0}
        return {}

    app = make_app(pgstore_settings, {"add": add, "start": start})
    app.get("/start")
    _, trips = cost(app, "get", "/add?item=apple")
    assert trips == 2
    app.get("/add?item=pear")
    assert app.get("/read").json["data"] == {"cart": ["apple", "pear"], "profile": {"visits": 2}}


# -- bad input ---------------------------------------------------------------------------


def _tamper(value, position):
    replacement = "A" if value[position] != "A" else "B"
    return value[:position] + replacement + value[position + 1 :]


GARBAGE = {
    "tampered signature": lambda value: _tamper(value, 10),
    "tampered id": lambda value: _tamper(value, len(value) - 10),
    "truncated": lambda value: value[:-12],
    "wrong secret": lambda value: forge("x" * 48, session_id_of(value)),
    "unsigned id": session_id_of,
    "non-base64": lambda value: "!!!$$$***@@@" * 10,
    # Raw bytes as a server hands them over: latin-1 decoded. Quoted, WebOb
    # decodes them as UTF-8; unquoted, it stops at the first non-ASCII byte.
    "non-utf-8 quoted": lambda value: '"' + b"\xff\xfe\x80\xc3(garbage".decode("latin-1") + '"',
    "utf-8 beyond latin-1 quoted": lambda value: '"' + "€uro".encode().decode("latin-1") + '"',
    "non-ascii unquoted": lambda value: b"\xff\xfe\x80\xc3(garbage".decode("latin-1"),
    "empty": lambda value: "",
}


@pytest.mark.parametrize("kind", GARBAGE)
def test_a_garbage_cookie_gives_a_fresh_session_and_leaves_stored_data_alone(app, pgstore_dsn, kind):
    real, _ = the_cookie(app.get("/write?value=precious"))
    stored = rows(pgstore_dsn)
    garbage = GARBAGE[kind](real)
    browser = fresh_client(app)
    environ = {"HTTP_COOKIE": f"session={garbage}"}

    response, trips = cost(browser, "get", "/read", extra_environ=environ)
    assert response.status_int == 200
    assert response.json == {"data": {}, "new": True, "value": None}
    assert trips == 0  # nothing that is not a well-signed id reaches the database

    response = browser.get("/incr", extra_environ=environ)
    assert response.json == {"n": 1, "new": True}
    fresh, _ = the_cookie(response)
    assert session_id_of(fresh) != session_id_of(real)

    assert {key: data for key, data in rows(pgstore_dsn).items() if key in stored} == stored
    assert fresh_client(app).get("/read", headers=cookie_header(real)).json["value"] == "precious"


def test_a_stored_payload_that_no_longer_deserializes_gives_a_fresh_session(app, pgstore_dsn, caplog):
    old_cookie, _ = the_cookie(app.get("/write?value=x"))
    sql(pgstore_dsn, "UPDATE http_sessions SET data = 'not json{'")
    old_key = storage_key(session_id_of(old_cookie))
    with caplog.at_level(logging.WARNING, logger="pyramid_pgstore"):
        response = app.get("/incr")
    assert response.status_int == 200
    assert response.json == {"n": 1, "new": True}
    assert any(r.name == "pyramid_pgstore" and r.levelno == logging.WARNING for r in caplog.records)
    assert old_key[:12] in caplog.text  # which row, by its key (never the id)
    new_cookie, _ = the_cookie(response)
    new_key = storage_key(session_id_of(new_cookie))
    assert new_key != old_key
    table = rows(pgstore_dsn)
    assert table[old_key] == "not json{"  # left for someone to look at
    assert json.loads(table[new_key]) == {"n": 1}


# -- oversized ------------------------------------------------------------------------------


def test_an_oversized_session_raises_and_the_stored_session_is_kept(pgstore_settings, pgstore_dsn):
    app = make_app(pgstore_settings, max_length="200")
    app.get("/write?value=small")
    stored = rows(pgstore_dsn)
    with pytest.raises(SessionTooLarge) as info:
        app.get("/write?big=" + "x" * 300)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, pyramid_pgstore.PGStoreError)
    assert rows(pgstore_dsn) == stored
    assert app.get("/read").json["data"] == {"value": "small"}


def test_an_oversized_new_session_writes_no_row(pgstore_settings, pgstore_dsn):
    app = make_app(pgstore_settings, max_length="200")
    with pytest.raises(SessionTooLarge):
        app.get("/write?big=" + "x" * 300)
    assert rows(pgstore_dsn) == {}
    assert app.cookies == {}


def test_max_length_zero_allows_large_sessions(pgstore_settings):
    app = make_app(pgstore_settings, max_length="0")
    app.get("/write?big=" + "x" * 10_000)
    assert len(app.get("/read").json["data"]["big"]) == 10_000


# -- exceptions --------------------------------------------------------------------------------


class Boom(Exception):
    pass


def raising_views(pgstore_settings, **settings):
    def boom(request):
        request.session["value"] = request.GET["value"]
        raise Boom()

    def redirect(request):
        request.session["value"] = request.GET["value"]
        raise HTTPFound(location="/read")

    def setup(config):
        config.add_exception_view(lambda exc, request: Response("boom", status=500), context=Boom)

    return make_app(pgstore_settings, {"boom": boom, "redirect": redirect}, setup, **settings)


def test_by_default_a_view_that_raises_still_saves_the_session(pgstore_settings):
    app = raising_views(pgstore_settings)
    assert the_cookie(app.get("/boom?value=new", status=500))
    assert app.get("/read").json["value"] == "new"
    app.get("/boom?value=changed", status=500)
    assert app.get("/read").json["value"] == "changed"


def test_a_session_changed_before_raising_a_redirect_is_saved(pgstore_settings):
    app = raising_views(pgstore_settings)
    app.get("/redirect?value=after-login", status=302)
    assert app.get("/read").json["value"] == "after-login"


def test_set_on_exception_false_saves_nothing_when_the_view_raises(pgstore_settings, pgstore_dsn):
    app = raising_views(pgstore_settings, set_on_exception="false")
    response, trips = cost(app, "get", "/boom?value=new", status=500)
    assert set_cookies(response) == []
    assert trips == 0
    assert rows(pgstore_dsn) == {}
    app.get("/write?value=kept")
    stored = rows(pgstore_dsn)
    response = app.get("/boom?value=changed", status=500)
    assert set_cookies(response) == []
    assert rows(pgstore_dsn) == stored
    assert app.get("/read").json["value"] == "kept"


# -- Vary ---------------------------------------------------------------------------------------


def test_vary_cookie_on_responses_that_set_the_session_cookie(pgstore_settings):
    def keep_vary(request):
        request.response.vary = ("Accept-Encoding",)
        request.session["value"] = "x"
        return {}

    app = make_app(pgstore_settings, {"keep_vary": keep_vary})
    response = app.get("/write?value=x")
    assert the_cookie(response) and "Cookie" in vary(response)
    response = app.get("/clear")
    assert set_cookies(response) == [] and "Cookie" in vary(response)  # made from a stored session
    response = fresh_client(app).get("/keep_vary")
    assert the_cookie(response)
    assert sorted(vary(response)) == ["Accept-Encoding", "Cookie"]


def test_no_vary_cookie_on_responses_that_do_not_set_it(app):
    for response in (app.get("/untouched"), app.get("/read")):
        assert set_cookies(response) == []
        assert "Cookie" not in vary(response)


def test_vary_cookie_on_every_response_made_from_a_stored_session(app):
    """A read-only page showing session data sets no cookie, but a shared
    cache must still not serve it to someone else."""
    app.get("/write?value=mine")
    response = app.get("/read")
    assert response.json["value"] == "mine"
    assert set_cookies(response) == []
    assert "Cookie" in vary(response)


def test_a_cookie_for_an_expired_session_is_left_alone_until_a_write_replaces_it(
    pgstore_settings, pgstore_clock, pgstore_dsn
):
    """A read never deletes a cookie it does not own: the browser may hold a
    newer one by the time the response arrives (a login in another tab). A
    dead cookie costs a query per request until a write replaces it."""
    app = make_app(pgstore_settings, timeout="60")
    old_cookie, _ = the_cookie(app.get("/write?value=x"))
    pgstore_clock.advance(61)
    for _ in range(2):
        response, round_trips = cost(app, "get", "/read")
        assert round_trips == 1 and set_cookies(response) == []
        assert response.json["new"] is True
    response, round_trips = cost(app, "get", "/write?value=y")
    assert round_trips == 2  # the read, then the new session (which ends the dead one)
    new_cookie, _ = the_cookie(response)
    assert session_id_of(new_cookie) != session_id_of(old_cookie)
    assert rows(pgstore_dsn) == {storage_key(session_id_of(new_cookie)): '{"value":"y"}'}


# -- concurrency ----------------------------------------------------------------------------------


def run_threads(count, target):
    """Run ``target(i)`` in ``count`` threads started together; return the errors."""
    barrier = threading.Barrier(count)
    errors = []

    def wrapped(i):
        try:
            barrier.wait(10)
            target(i)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    return errors


REQUESTS_PER_THREAD = 30


def test_sixteen_threads_on_distinct_sessions(pgstore_settings, pgstore_dsn):
    router = make_router(pgstore_settings)
    counts = {}

    def browse(i):
        browser = webtest.TestApp(router)
        for expected in range(1, REQUESTS_PER_THREAD + 1):
            assert browser.get("/incr").json["n"] == expected
        counts[i] = browser.get("/read").json["data"]["n"]

    assert run_threads(16, browse) == []
    assert counts == dict.fromkeys(range(16), REQUESTS_PER_THREAD)
    table = rows(pgstore_dsn)
    assert len(table) == 16
    assert all(json.loads(data) == {"n": REQUESTS_PER_THREAD} for data in table.values())


def test_eight_threads_on_one_session(pgstore_settings, pgstore_dsn):
    router = make_router(pgstore_settings)
    value, _ = the_cookie(webtest.TestApp(router).get("/incr"))
    cookie = cookie_header(value)
    lost = []

    def browse(i):
        browser = webtest.TestApp(router)
        for _ in range(REQUESTS_PER_THREAD):
            response = browser.get("/incr", headers=cookie)
            if response.json["new"] or set_cookies(response):
                lost.append(response)

    assert run_threads(8, browse) == []
    assert lost == []  # no request ever lost the session
    table = rows(pgstore_dsn)
    assert list(table) == [storage_key(session_id_of(value))]
    n = json.loads(table[storage_key(session_id_of(value))])["n"]
    assert 2 <= n <= 1 + 8 * REQUESTS_PER_THREAD  # concurrent writes: last one wins


# -- a factory built in code ---------------------------------------------------------------------


def test_a_code_built_factory_takes_a_list_of_secrets(pgstore_store):
    old, new = "o" * 40, "n" * 40

    def app_with(secret):
        config = Configurator()
        config.set_session_factory(PGStoreSessionFactory(pgstore_store, secret))
        config.add_route("incr", "/incr")
        config.add_view(incr, route_name="incr", renderer="json")
        return webtest.TestApp(config.make_wsgi_app())

    value, _ = the_cookie(app_with(old).get("/incr"))
    assert app_with([new, old]).get("/incr", headers=cookie_header(value)).json["n"] == 2
    assert app_with([new]).get("/incr", headers=cookie_header(value)).json["n"] == 1


def test_a_short_secret_is_refused_by_the_factory(pgstore_store):
    with pytest.raises(ValueError, match="32"):
        PGStoreSessionFactory(pgstore_store, "too-short")


def test_the_store_is_reachable_from_the_registry_and_the_request(pgstore_settings):
    def which(request):
        return {"same": get_store(request) is get_store(request.registry)}

    app = make_app(pgstore_settings, {"which": which})
    assert isinstance(get_store(app.app.registry), PGStore)
    assert app.get("/which").json == {"same": True}


def test_a_request_that_began_before_a_logout_cannot_bring_the_session_back(pgstore_settings, pgstore_dsn):
    """Request A reads the session; meanwhile request B (same cookie) logs
    out; then A changes the session. The logout wins: nothing is written,
    and A's response leaves the cookie alone (the browser may hold a newer
    one by then: B's, or a login's)."""

    def logout(request):
        request.session.invalidate()
        return {}

    def slow_write(request):
        assert request.session["user"] == "ann"
        request.registry.concurrent_logout()  # B runs to completion here
        request.session["last_page"] = "/account"
        return {}

    app = make_app(pgstore_settings, {"logout": logout, "slow_write": slow_write})
    app.get("/write?user=ann")
    other_tab = webtest.TestApp(app.app)
    other_tab.set_cookie("session", app.cookies["session"])
    app.app.registry.concurrent_logout = lambda: other_tab.get("/logout")
    response = app.get("/slow_write")
    assert set_cookies(response) == []
    assert rows(pgstore_dsn) == {}


def test_an_expiry_refresh_does_not_revive_a_session_deleted_meanwhile(
    pgstore_settings, pgstore_clock, pgstore_dsn
):
    def logout(request):
        request.session.invalidate()
        return {}

    def slow_read(request):
        value = request.session.get("user")
        request.registry.concurrent_logout()
        return {"user": value}

    app = make_app(pgstore_settings, {"logout": logout, "slow_read": slow_read}, timeout="100")
    app.get("/write?user=ann")
    pgstore_clock.advance(50)  # past reissue_time: this read refreshes the expiry
    other_tab = webtest.TestApp(app.app)
    other_tab.set_cookie("session", app.cookies["session"])
    app.app.registry.concurrent_logout = lambda: other_tab.get("/logout")
    response = app.get("/slow_read")
    assert response.json == {"user": "ann"}
    assert set_cookies(response) == []  # not this response's session any more: left alone
    assert rows(pgstore_dsn) == {}
