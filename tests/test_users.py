"""Sessions that know their user: owner, client, absolute lifetime, devices, renewal.

Apps log in with Pyramid's own ``SessionAuthenticationHelper.remember()``;
each ``webtest.TestApp`` on one router is a browser (its own cookie jar).
The table is inspected on a connection of the test's own.
"""

import base64
import dataclasses
import time
from datetime import datetime

import pytest
import webtest
from db import sql
from pyramid.authentication import SessionAuthenticationHelper
from pyramid.config import Configurator
from pyramid.csrf import SessionCSRFStoragePolicy, check_csrf_token, get_csrf_token
from pyramid.interfaces import ICSRFStoragePolicy, ISessionFactory

from pyramid_pgstore import get_store, list_sessions, renew_session, revoke_other_sessions, revoke_session
from pyramid_pgstore.records import storage_key


def login(request):
    user = request.params["user"]
    helper = SessionAuthenticationHelper(request.params.get("prefix", "auth."))
    helper.remember(request, int(user) if user.isdigit() else user)  # 42: an int, as from a user table
    return {}


def logout(request):
    SessionAuthenticationHelper().forget(request)
    return {}


def put(request):
    request.session.update(request.params)
    return {}


def read(request):
    return {"data": dict(request.session), "new": request.session.new}


def devices(request):
    """list_sessions(), the times as epoch seconds."""
    return [
        {k: v.timestamp() if isinstance(v, datetime) else v for k, v in dataclasses.asdict(info).items()}
        for info in list_sessions(request)
    ]


def revoke(request):
    return {"done": revoke_session(request, request.json_body["handle"])}


def revoke_others(request):
    return {"count": revoke_other_sessions(request)}


def renew(request):
    request.session.get("x")  # loaded first
    before = get_store(request).stats()["queries"]
    renew_session(request)
    return {"trips": get_store(request).stats()["queries"] - before}


def slow_write(request):
    """A request that takes 5 seconds between reading and writing its session."""
    request.session.get("n")
    request.registry.clock.advance(5)
    request.session["n"] = "slow"
    return {}


def csrf(request):
    """The CSRF token, after a login in this same request if ``user`` is given."""
    if "user" in request.params:
        login(request)
    return {"token": request.session.get_csrf_token()}


def policy_token(request):
    """The CSRF token through the app's CSRF storage policy."""
    return {"token": get_csrf_token(request)}


def login_raced(request):
    """A login during which another request on the same pre-login id makes a
    CSRF token (``t2``) and writes it, between this one's read and write."""
    request.session.get("x")  # read: no CSRF token yet
    session_id = request.session.session_id  # the test stands in for that other request
    store = get_store(request)
    store.save(session_id, {**store.load(session_id).data, "_csrft_": request.params["t2"]}, 3600)
    login(request)
    return {}


def remember_and_renew(request):
    """A login done by hand: remember(), then renew_session() at once."""
    login(request)
    renew_session(request)
    return {}


def guarded(request):
    """A form post: is its CSRF token the session's?"""
    return {"accepted": check_csrf_token(request, raises=False)}


VIEWS = [login, logout, put, read, devices, revoke, revoke_others, renew, slow_write]
VIEWS += [csrf, policy_token, guarded, login_raced, remember_and_renew]


def make_router(pgstore_settings, **settings):
    config = Configurator(settings={**pgstore_settings, **{f"pgstore.{k}": v for k, v in settings.items()}})
    config.include("pyramid_pgstore")
    for view in VIEWS:
        config.add_route(view.__name__, f"/{view.__name__}")
        config.add_view(view, route_name=view.__name__, renderer="json")
    return config.make_wsgi_app()


def browser(router, **environ):
    return webtest.TestApp(router, extra_environ=environ)


LIFETIME = "SELECT extract(epoch FROM expires_on - created_on) FROM http_sessions WHERE data <> ''"


def live_rows(dsn, columns="userid"):
    """The stored sessions (an ended one is a row without data, for a minute)."""
    return sql(dsn, f"SELECT {columns} FROM http_sessions WHERE data <> '' ORDER BY modified_on")


def cost(app, url):
    """GET ``url``: the response, and how many round trips it made."""
    before = get_store(app.app.registry).stats()["queries"]
    response = app.get(url)
    return response, get_store(app.app.registry).stats()["queries"] - before


def session_cookies(response):
    return [h for h in response.headers.getall("Set-Cookie") if h.startswith("session=")]


def session_id(app):
    """The session id in a browser's cookie (the payload after the 64-byte signature)."""
    value = app.cookies["session"]
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))[64:].decode("ascii")


def stale_browser(router, cookie):
    """Another browser, sending ``cookie``."""
    stale = browser(router)
    stale.set_cookie("session", cookie)
    return stale


@pytest.fixture
def router(pgstore_settings):
    return make_router(pgstore_settings)


# -- the owner ----------------------------------------------------------------


def test_each_save_records_the_user_remember_wrote_as_text(router, pgstore_dsn):
    ann = browser(router)
    ann.get("/put?cart=book")
    assert live_rows(pgstore_dsn) == [(None,)]  # no user yet: no owner
    ann.get("/login?user=42")
    assert live_rows(pgstore_dsn) == [("42",)]
    ann.get("/put?cart=pen")  # a later save keeps it
    assert live_rows(pgstore_dsn, "userid, data") == [("42", '{"cart":"pen","auth.userid":42}')]
    browser(router).get("/login?user=7")  # a login that is the session's first write
    assert live_rows(pgstore_dsn) == [("42",), ("7",)]


def test_switching_user_replaces_the_owner_and_logging_out_clears_it(router, pgstore_dsn):
    app = browser(router)
    app.get("/login?user=ann")
    app.get("/login?user=bob")
    assert live_rows(pgstore_dsn) == [("bob",)]
    app.get("/put?cart=book")
    app.get("/logout")
    assert live_rows(pgstore_dsn, "userid, data") == [(None, '{"cart":"book"}')]


def test_the_userid_key_setting_chooses_which_key_names_the_owner(pgstore_settings, pgstore_dsn):
    router = make_router(pgstore_settings, userid_key="app.userid")
    browser(router).get("/login?user=ann")  # auth.userid: not the owner here
    browser(router).get("/login?user=bob&prefix=app.")
    assert live_rows(pgstore_dsn) == [(None,), ("bob",)]


# -- the client -----------------------------------------------------------------


def test_the_row_records_the_client_address_and_a_bounded_user_agent(router, pgstore_dsn):
    browser(router, REMOTE_ADDR="198.51.100.7", HTTP_USER_AGENT="Firefox/1").get("/put?a=1")
    proxied = browser(
        router,
        REMOTE_ADDR="10.0.0.1",
        HTTP_X_FORWARDED_FOR="203.0.113.9, 10.0.0.2",
        HTTP_USER_AGENT="x\x00y" + "z" * 1000,
    )
    proxied.get("/put?b=2")
    assert live_rows(pgstore_dsn, "ip, user_agent") == [
        ("198.51.100.7", "Firefox/1"),
        ("203.0.113.9", "xy" + "z" * 510),
    ]


def test_track_client_false_records_neither(pgstore_settings, pgstore_dsn):
    router = make_router(pgstore_settings, track_client="false")
    app = browser(router, REMOTE_ADDR="198.51.100.7", HTTP_USER_AGENT="Firefox/1")
    app.get("/put?a=1")
    app.get("/put?a=2")
    assert live_rows(pgstore_dsn, "ip, user_agent") == [(None, None)]


# -- the absolute lifetime --------------------------------------------------------


def test_a_session_used_constantly_still_ends_max_lifetime_after_creation(
    pgstore_settings, pgstore_clock, pgstore_dsn
):
    app = browser(make_router(pgstore_settings, timeout="60", max_lifetime="100"))
    created = time.monotonic()
    for step in range(5):  # t = 0, 20, 40, 60, 80: used well within the idle timeout
        app.get(f"/put?step={step}")
        lifetime = sql(pgstore_dsn, LIFETIME)[0][0]
        assert float(lifetime) <= 100.5  # never past the cap (but by the request's own time)
        pgstore_clock.advance(20)
    assert float(lifetime) > 99  # the last write's expiry is the cap, not 80 + 60
    # t = 99, the real time these requests took included (a second, on a busy Citus cluster)
    pgstore_clock.advance(-1 - (time.monotonic() - created))
    assert app.get("/read").json == {"data": {"step": "4"}, "new": False}
    pgstore_clock.advance(1.5)
    assert app.get("/read").json == {"data": {}, "new": True}


def test_max_lifetime_is_enforced_on_read_whatever_the_stored_expiry(
    pgstore_settings, pgstore_clock, pgstore_dsn
):
    before = browser(make_router(pgstore_settings, timeout="1000"))  # a session made without a cap
    before.get("/put?a=1")
    capped = browser(make_router(pgstore_settings, timeout="1000", max_lifetime="100"))
    capped.set_cookie("session", before.cookies["session"])
    pgstore_clock.advance(99)
    assert capped.get("/read").json["new"] is False
    pgstore_clock.advance(2)
    assert capped.get("/read").json == {"data": {}, "new": True}
    assert before.get("/read").json["new"] is False  # the row itself still lives 1000 s


def test_a_slow_request_sets_no_expiry_past_max_lifetime(pgstore_settings, pgstore_clock, pgstore_dsn):
    router = make_router(pgstore_settings, timeout="60", max_lifetime="100")
    router.registry.clock = pgstore_clock
    app = browser(router)
    app.get("/put?n=0")  # expires at t = 60
    pgstore_clock.advance(50)
    app.get("/slow_write")  # read at t = 50 (50 s left before the cap), written at t = 55
    assert float(sql(pgstore_dsn, LIFETIME)[0][0]) <= 100.5


# -- a user's sessions ---------------------------------------------------------------


def test_list_sessions_newest_activity_first_marks_the_current_one_and_is_empty_for_anonymous(
    router, pgstore_clock
):
    phones = [browser(router, REMOTE_ADDR=f"192.0.2.{i}", HTTP_USER_AGENT=f"Phone {i}") for i in range(3)]
    for phone in phones:
        phone.get("/login?user=ann")
        pgstore_clock.advance(10)
    browser(router).get("/login?user=bob")
    anonymous = browser(router)
    anonymous.get("/put?cart=pen")
    phones[0].get("/put?cart=book")  # the most recent activity
    listed = phones[1].get("/devices").json
    assert [(d["ip"], d["user_agent"], d["current"]) for d in listed] == [
        ("192.0.2.0", "Phone 0", False),
        ("192.0.2.2", "Phone 2", False),
        ("192.0.2.1", "Phone 1", True),
    ]
    assert {d["userid"] for d in listed} == {"ann"}
    for d in listed:
        assert d["created_on"] <= d["last_seen"] < d["expires_on"]
        assert len(d["handle"]) == 64
    assert listed[2]["handle"] == storage_key(session_id(phones[1]))
    assert anonymous.get("/devices").json == []  # a session without a user has none
    assert browser(router).get("/devices").json == []


def test_an_expired_session_is_not_listed(router, pgstore_clock, pgstore_dsn):
    laptop, phone = browser(router), browser(router)
    laptop.get("/login?user=ann")
    phone.get("/login?user=ann")
    pgstore_clock.advance(1000)
    laptop.get("/put?cart=book")  # moves its expiry; the phone's stays at 1200
    pgstore_clock.advance(300)
    assert len(laptop.get("/devices").json) == 1
    assert sql(pgstore_dsn, "SELECT count(*) FROM http_sessions WHERE userid = 'ann'") == [(2,)]


def two_users(router):
    ann = [browser(router), browser(router), browser(router)]
    for each in ann:
        each.get("/login?user=ann")
    bob = browser(router)
    bob.get("/login?user=bob")
    return ann, bob


def logged_in(app):
    return app.get("/read").json["data"].get("auth.userid")


def test_revoke_session_ends_one_of_the_users_own_sessions(router):
    (laptop, phone, tablet), _ = two_users(router)
    handle = storage_key(session_id(phone))
    assert laptop.post_json("/revoke", {"handle": handle}).json == {"done": True}
    assert logged_in(phone) is None
    assert logged_in(laptop) == logged_in(tablet) == "ann"


def test_revoke_session_refuses_other_users_unknown_and_malformed_handles(router, pgstore_dsn):
    (laptop, phone, _), bob = two_users(router)
    bobs = storage_key(session_id(bob))
    phones = storage_key(session_id(phone))
    before = sql(pgstore_dsn, "SELECT key, data, expires_on FROM http_sessions ORDER BY key")
    malformed = ["", "x", "0" * 64, phones.upper(), phones + "\n", session_id(phone), 123, None, [phones]]
    for handle in [bobs, *malformed]:
        assert laptop.post_json("/revoke", {"handle": handle}).json == {"done": False}, handle
    assert browser(router).post_json("/revoke", {"handle": phones}).json == {"done": False}  # anonymous
    assert sql(pgstore_dsn, "SELECT key, data, expires_on FROM http_sessions ORDER BY key") == before
    assert logged_in(bob) == "bob"
    assert logged_in(phone) == "ann"


def test_revoking_your_own_session_logs_you_out(router):
    (laptop, _, _), _ = two_users(router)
    old = laptop.cookies["session"]
    response = laptop.post_json("/revoke", {"handle": storage_key(session_id(laptop))})
    assert response.json == {"done": True}
    (cookie,) = session_cookies(response)
    assert "Max-Age=0" in cookie
    assert stale_browser(router, old).get("/read").json == {"data": {}, "new": True}


def test_revoke_other_sessions_ends_all_but_the_current_one(router):
    (laptop, phone, tablet), bob = two_users(router)
    assert laptop.get("/revoke_others").json == {"count": 2}
    assert logged_in(laptop) == "ann"
    assert logged_in(phone) is None and logged_in(tablet) is None
    assert logged_in(bob) == "bob"
    assert browser(router).get("/revoke_others").json == {"count": 0}  # anonymous: nothing


def test_the_store_lists_and_ends_a_users_sessions_without_a_request(pgstore_store):
    for name, user in [("s1", "7"), ("s2", "7"), ("s3", "8"), ("s4", None)]:
        pgstore_store.save(name, {"auth.userid": user}, 60, userid=user)
    assert {info.handle for info in pgstore_store.sessions_of(7)} == {storage_key("s1"), storage_key("s2")}
    assert pgstore_store.delete_sessions_of(7, keep=storage_key("s1")) == 2  # a handle spares nothing
    for name in ["s1", "s2"]:
        pgstore_store.save(name, {"auth.userid": "7"}, 60, userid="7")
    assert pgstore_store.delete_sessions_of("7", keep="s1") == 1  # keep is a session id
    assert [info.handle for info in pgstore_store.sessions_of("7")] == [storage_key("s1")]
    assert pgstore_store.load("s3") is not None and pgstore_store.load("s4") is not None


def test_a_handle_signed_as_a_cookie_is_no_session(router):
    app = browser(router)
    app.get("/login?user=ann")
    (info,) = app.get("/devices").json
    assert info["handle"] != session_id(app)
    forged = browser(router)
    forged.set_cookie("session", router.registry.queryUtility(ISessionFactory).cookie.value(info["handle"]))
    response, trips = cost(forged, "/read")
    assert response.json == {"data": {}, "new": True}
    assert trips == 0  # refused before any query


# -- renewal ----------------------------------------------------------------------------


def test_renew_session_gives_a_new_id_keeps_the_data_and_kills_the_old_id(router):
    app = browser(router)
    app.get("/put?cart=book")
    old = app.cookies["session"]
    response, trips = cost(app, "/renew")
    assert response.json == {"trips": 1}  # the renewal itself: one statement
    assert trips == 2  # the load, the renewal
    assert app.cookies["session"] != old
    assert app.get("/read").json == {"data": {"cart": "book"}, "new": False}
    assert stale_browser(router, old).get("/read").json == {"data": {}, "new": True}


def test_login_renews_the_id_so_a_fixated_cookie_stays_anonymous(router):
    victim = browser(router)
    victim.get("/put?cart=book")
    attacker = browser(router)
    attacker.set_cookie("session", victim.cookies["session"])  # planted before login
    assert cost(victim, "/login?user=ann")[1] == 2  # the load, the move to a new id with the user
    assert victim.cookies["session"] != attacker.cookies["session"]
    assert victim.get("/read").json["data"] == {"cart": "book", "auth.userid": "ann"}
    assert attacker.get("/read").json == {"data": {}, "new": True}


def test_logging_out_with_forget_renews_the_id_too(router):
    app = browser(router)
    app.get("/login?user=ann")
    app.get("/put?cart=book")
    logged_in_cookie = app.cookies["session"]
    app.get("/logout")
    assert app.get("/read").json["data"] == {"cart": "book"}
    assert stale_browser(router, logged_in_cookie).get("/read").json == {"data": {}, "new": True}


def test_a_browser_left_with_a_just_ended_cookie_can_log_in_again_at_once(router):
    """The login's response was lost: the browser still sends the id that
    login ended (kept a minute as an ended row). Logging in again saves at
    once; any other write with that cookie is dropped for that minute, since
    it may be a request racing the login, whose newer cookie it must not replace."""
    app = browser(router)
    app.get("/put?cart=book")
    old = app.cookies["session"]
    app.get("/login?user=ann")
    lost = stale_browser(router, old)
    assert session_cookies(lost.get("/login?user=ann"))
    assert lost.get("/read").json["data"] == {"auth.userid": "ann"}
    assert session_cookies(stale_browser(router, old).get("/put?note=x")) == []
    assert app.get("/read").json["data"] == {"cart": "book", "auth.userid": "ann"}


def test_renew_on_login_false_keeps_the_id(pgstore_settings):
    router = make_router(pgstore_settings, renew_on_login="false")
    app = browser(router)
    app.get("/put?cart=book")
    before = app.cookies["session"]
    response = app.get("/login?user=ann")
    assert session_cookies(response) == []
    assert app.cookies["session"] == before


def test_statement_counts_read_1_read_modify_write_2_login_2(router):
    app = browser(router)
    app.get("/put?a=1")
    assert cost(app, "/read")[1] == 1
    assert cost(app, "/put?a=2")[1] == 2
    assert cost(app, "/login?user=ann")[1] == 2
    assert cost(app, "/read")[1] == 1


def test_listing_one_users_sessions_among_many_uses_the_userid_index(pgstore_store, pgstore_dsn):
    sql(
        pgstore_dsn,
        "INSERT INTO http_sessions (key, data, created_on, modified_on, expires_on, userid)"
        " SELECT md5(i::text) || md5((-i)::text), '{}', now(), now(), now() + interval '1 hour',"
        " 'user' || (random() * 20000)::int FROM generate_series(1, 100000) AS i",
    )
    sql(pgstore_dsn, "ANALYZE http_sessions")
    statement = pgstore_store._sql.sessions_of
    assert statement.startswith("SELECT")
    plan = "\n".join(row[0] for row in sql(pgstore_dsn, "EXPLAIN " + statement, {"userid": "user42"}))
    assert "http_sessions_userid_idx" in plan, plan
    assert "Index Scan" in plan and "Seq Scan" not in plan, plan


# -- the CSRF token at login --------------------------------------------------


@pytest.mark.parametrize("renew_on_login", ["true", "false"])
def test_a_login_gives_a_new_csrf_token_and_the_one_from_before_is_refused(pgstore_settings, renew_on_login):
    """Whoever planted the session before the login (fixation) knows its
    CSRF token; after the login it must not be valid."""
    app = browser(make_router(pgstore_settings, renew_on_login=renew_on_login))
    before = app.get("/csrf").json["token"]
    assert app.get("/csrf").json["token"] == before  # stable while nothing changes
    assert app.post("/guarded", {"csrf_token": before}).json["accepted"]

    app.get("/login?user=alice")
    after = app.get("/csrf").json["token"]
    assert after != before
    assert app.get("/csrf").json["token"] == after  # stable again
    assert not app.post("/guarded", {"csrf_token": before}).json["accepted"]
    assert app.post("/guarded", {"csrf_token": after}).json["accepted"]


def test_a_token_read_after_remember_in_the_login_request_is_the_new_one(router):
    app = browser(router)
    before = app.get("/csrf").json["token"]
    during = app.get("/csrf?user=alice").json["token"]  # remember(), then get_csrf_token()
    assert during != before
    assert app.get("/csrf").json["token"] == during
    assert app.post("/guarded", {"csrf_token": during}).json["accepted"]


def test_a_logout_that_keeps_data_gives_a_new_csrf_token(router):
    app = browser(router)
    app.get("/login?user=alice")
    app.get("/put?cart=3")
    logged_in = app.get("/csrf").json["token"]
    app.get("/logout")
    assert app.get("/read").json["data"]["cart"] == "3"  # the rest of the session kept
    assert app.get("/csrf").json["token"] != logged_in


def test_with_pyramids_session_csrf_policy_a_login_also_replaces_the_token(pgstore_settings):
    """SessionCSRFStoragePolicy reads and writes the session key itself,
    not through the session's get_csrf_token()."""
    router = make_router(pgstore_settings)
    router.registry.registerUtility(SessionCSRFStoragePolicy(), ICSRFStoragePolicy)
    app = browser(router)
    before = app.get("/policy_token").json["token"]
    assert app.post("/guarded", {"csrf_token": before}).json["accepted"]
    app.get("/login?user=alice")
    after = app.get("/policy_token").json["token"]
    assert after != before
    assert not app.post("/guarded", {"csrf_token": before}).json["accepted"]
    assert app.post("/guarded", {"csrf_token": after}).json["accepted"]


def test_a_token_made_by_another_request_during_the_login_is_not_kept(router):
    app = browser(router)
    app.get("/put?x=1")  # a session without a CSRF token
    app.get("/login_raced?user=alice&t2=known-to-whoever-sent-it")
    assert app.get("/read").json["data"]["auth.userid"] == "alice"
    assert app.get("/csrf").json["token"] != "known-to-whoever-sent-it"
    assert not app.post("/guarded", {"csrf_token": "known-to-whoever-sent-it"}).json["accepted"]


def test_renew_session_right_after_remember_still_replaces_the_csrf_token(pgstore_settings):
    app = browser(make_router(pgstore_settings, renew_on_login="false"))
    before = app.get("/csrf").json["token"]
    app.get("/remember_and_renew?user=alice")
    assert app.get("/csrf").json["token"] != before
    assert not app.post("/guarded", {"csrf_token": before}).json["accepted"]
