"""A session's own lifetime: ``request.session.set_expiry()`` ("keep me signed
in"), Django's semantics, stored with the row."""

from datetime import timedelta

import pytest
import webtest
from db import sql
from pyramid.authentication import SessionAuthenticationHelper
from pyramid.config import Configurator

from pyramid_pgstore import get_store, list_sessions

DAY = 86400
auth = SessionAuthenticationHelper()


def login(request):
    """A login form: ``keep=1`` is its "Keep me signed in" checkbox."""
    auth.remember(request, request.params["user"])
    if request.params.get("keep"):
        request.session.set_expiry(30 * DAY)
    return {"age": request.session.get_expiry_age()}


def expiry(request):
    """``?value=`` for set_expiry(): seconds, 0, or none."""
    raw = request.params["value"]
    request.session["touched"] = True
    request.session.set_expiry(None if raw == "none" else float(raw))
    return {"age": request.session.get_expiry_age()}


def put(request):
    request.session.update(request.params)
    return {"age": request.session.get_expiry_age()}


def whoami(request):
    return {"userid": request.session.get("auth.userid"), "age": request.session.get_expiry_age()}


def lifetimes(request):
    return {info.handle: info.lifetime for info in list_sessions(request)}


def make_app(pgstore_settings, **settings):
    config = Configurator(settings={**pgstore_settings, **{f"pgstore.{k}": v for k, v in settings.items()}})
    config.include("pyramid_pgstore")
    for view in (login, expiry, put, whoami, lifetimes):
        config.add_route(view.__name__, f"/{view.__name__}")
        config.add_view(view, route_name=view.__name__, renderer="json")
    return webtest.TestApp(config.make_wsgi_app())


def session_cookie(response):
    (cookie,) = [h for h in response.headers.getall("Set-Cookie") if h.startswith("session=")]
    return cookie


def stored_lifetime(dsn):
    return sql(
        dsn,
        "SELECT lifetime, extract(epoch FROM expires_on - modified_on) FROM http_sessions WHERE data <> ''",
    )


def test_keep_me_signed_in_outlives_the_default_timeout(pgstore_settings, pgstore_clock, pgstore_dsn):
    app = make_app(pgstore_settings)  # the default idle timeout: 20 minutes
    response = app.get("/login?user=ann&keep=1")
    assert response.json == {"age": 30 * DAY}
    assert "Max-Age=2592000" in session_cookie(response)  # a cookie that outlives the browser
    ((lifetime, seconds),) = stored_lifetime(pgstore_dsn)
    assert lifetime == 30 * DAY and round(seconds) == 30 * DAY
    pgstore_clock.advance(2 * DAY)
    assert app.get("/whoami").json == {"userid": "ann", "age": 30 * DAY}


def test_without_it_the_session_ends_after_the_default_timeout(pgstore_settings, pgstore_clock):
    app = make_app(pgstore_settings)
    response = app.get("/login?user=ann")
    assert "Max-Age" not in session_cookie(response)
    assert response.json == {"age": 1200}
    pgstore_clock.advance(1201)
    assert app.get("/whoami").json == {"userid": None, "age": 1200}


def test_the_lifetime_holds_across_writes_refreshes_and_a_new_id_at_login(
    pgstore_settings, pgstore_clock, pgstore_dsn
):
    app = make_app(pgstore_settings)
    app.get("/put?cart=1")
    app.get("/expiry?value=3600")  # set before the login ...
    before = app.cookies["session"]
    response = app.get("/login?user=ann")  # ... kept by the login's new id
    assert app.cookies["session"] != before
    assert "Max-Age=3600" in session_cookie(response)
    assert stored_lifetime(pgstore_dsn)[0][0] == 3600
    response = app.get("/put?cart=2")  # a write sends the cookie's Max-Age again
    assert "Max-Age=3600" in session_cookie(response)
    pgstore_clock.advance(3000)  # past the default 1200 s; a read refreshes the expiry
    assert app.get("/whoami").json == {"userid": "ann", "age": 3600}
    ((lifetime, seconds),) = stored_lifetime(pgstore_dsn)
    assert lifetime == 3600 and seconds > 3000 + 3600 - 60  # refreshed from the later read
    pgstore_clock.advance(3000)
    assert app.get("/whoami").json["userid"] == "ann"


def test_zero_makes_a_browser_session_cookie_with_the_default_timeout(pgstore_settings, pgstore_clock):
    app = make_app(pgstore_settings, max_age="86400")  # the factory's cookie persists ...
    response = app.get("/put?x=1")
    assert "Max-Age=86400" in session_cookie(response)
    response = app.get("/expiry?value=0")  # ... this one's does not
    assert "Max-Age" not in session_cookie(response)
    assert response.json == {"age": 1200}
    response = app.get("/put?x=2")  # no Max-Age to push forward: the cookie is left as it is
    assert "Set-Cookie" not in response.headers


def test_none_goes_back_to_the_factorys_defaults(pgstore_settings, pgstore_dsn, pgstore_clock):
    app = make_app(pgstore_settings)
    app.get("/expiry?value=7200")
    response = app.get("/expiry?value=none")
    assert response.json == {"age": 1200}
    assert "Max-Age" not in session_cookie(response)
    ((lifetime, seconds),) = stored_lifetime(pgstore_dsn)
    assert lifetime is None and round(seconds) == 1200
    pgstore_clock.advance(1201)
    assert app.get("/whoami").json["age"] == 1200
    assert sql(pgstore_dsn, "SELECT count(*) FROM http_sessions WHERE expires_on > now() + interval '0 s'")


def test_max_lifetime_still_ends_the_session(pgstore_settings, pgstore_clock):
    app = make_app(pgstore_settings, max_lifetime="7200")
    app.get("/login?user=ann&keep=1")
    whoami = app.get("/whoami").json
    assert whoami["userid"] == "ann" and whoami["age"] == pytest.approx(
        7200, abs=5
    )  # what is left of the cap
    pgstore_clock.advance(3600)
    assert app.get("/whoami").json["age"] == pytest.approx(3600, abs=5)
    pgstore_clock.advance(3601)
    assert app.get("/whoami").json["userid"] is None


def test_list_sessions_shows_each_sessions_lifetime(pgstore_settings):
    router = make_app(pgstore_settings).app
    kept, plain = webtest.TestApp(router), webtest.TestApp(router)
    kept.get("/login?user=ann&keep=1")
    plain.get("/login?user=ann")
    assert sorted(kept.get("/lifetimes").json.values(), key=str) == sorted([30 * DAY, None], key=str)


@pytest.mark.parametrize(
    ("value", "error", "named"),
    [
        (-1, ValueError, "-1"),
        (float("nan"), ValueError, "nan"),
        (11 * 365 * DAY, ValueError, str(11 * 365 * DAY)),
        (True, TypeError, "True"),
        ("3600", TypeError, "'3600'"),
        ([60], TypeError, "[60]"),
    ],
)
def test_a_bad_value_is_refused_at_the_call_naming_it(pgstore_settings, value, error, named):
    def bad(request):
        request.session["x"] = 1
        with pytest.raises(error, match=named.replace("[", r"\[").replace("]", r"\]")):
            request.session.set_expiry(value)
        return {"age": request.session.get_expiry_age()}

    config = Configurator(settings=pgstore_settings)
    config.include("pyramid_pgstore")
    config.add_route("bad", "/bad")
    config.add_view(bad, route_name="bad", renderer="json")
    response = webtest.TestApp(config.make_wsgi_app()).get("/bad")
    assert response.json == {"age": 1200}  # nothing changed
    assert "Max-Age" not in session_cookie(response)


def test_a_timedelta_counts_as_its_seconds(pgstore_settings, pgstore_dsn):
    def week(request):
        request.session["x"] = 1
        request.session.set_expiry(timedelta(days=7))
        return {}

    config = Configurator(settings=pgstore_settings)
    config.include("pyramid_pgstore")
    config.add_route("week", "/week")
    config.add_view(week, route_name="week", renderer="json")
    response = webtest.TestApp(config.make_wsgi_app()).get("/week")
    assert "Max-Age=604800" in session_cookie(response)
    assert stored_lifetime(pgstore_dsn)[0][0] == 7 * DAY


def test_setting_the_same_lifetime_again_writes_nothing(pgstore_settings):
    app = make_app(pgstore_settings)
    app.get("/login?user=ann&keep=1")
    store = get_store(app.app.registry)
    before = store.stats()["queries"]
    response = app.get("/login?user=ann&keep=1")  # the same user, the same lifetime: a read only
    assert store.stats()["queries"] - before == 1
    assert "Set-Cookie" not in response.headers


def logout(request):
    auth.forget(request)
    return {"age": request.session.get_expiry_age()}


def test_a_logout_keeping_data_goes_back_to_a_browser_session(pgstore_settings, pgstore_dsn):
    """On a shared computer, signing out must not leave a 30-day cookie behind."""
    config = Configurator(settings=pgstore_settings)
    config.include("pyramid_pgstore")
    for view in (login, put, logout, whoami):
        config.add_route(view.__name__, f"/{view.__name__}")
        config.add_view(view, route_name=view.__name__, renderer="json")
    app = webtest.TestApp(config.make_wsgi_app())
    app.get("/put?cart=1")
    app.get("/login?user=ann&keep=1")
    response = app.get("/logout")  # reset as the request ends: the view still saw 30 days
    assert "Max-Age" not in session_cookie(response)  # a new id, a browser-session cookie
    assert app.get("/whoami").json == {"userid": None, "age": 1200}
    assert [row[0] for row in stored_lifetime(pgstore_dsn)] == [None]  # the cart is kept
