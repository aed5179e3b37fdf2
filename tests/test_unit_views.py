"""A view unit-tested with ``pyramid.testing.DummyRequest`` and a real session,
and a test app that shares one doomed transaction between requests."""

import pytest
import transaction
import webtest
from db import sql
from pyramid import testing
from pyramid.config import Configurator

from pyramid_pgstore import PGStoreWarning
from pyramid_pgstore.testing import finish_request, session_for


def add_to_cart(request):
    """The view under test."""
    request.session.setdefault("cart", []).append(request.params["item"])
    return {"items": len(request.session["cart"])}


def test_a_view_unit_tested_with_a_dummy_request_saves_a_real_session(pgstore_settings, pgstore_dsn):
    with testing.testConfig(settings=pgstore_settings) as config:
        config.include("pyramid_pgstore")
        request = testing.DummyRequest(params={"item": "tea"})
        session_for(request)
        assert add_to_cart(request) == {"items": 1}
        response = finish_request(request)
        assert response.headers["Set-Cookie"].startswith("session=")
        # Saved, with no client details: a DummyRequest has no address or User-Agent.
        assert sql(pgstore_dsn, "SELECT data, ip, user_agent FROM http_sessions") == [
            ('{"cart":["tea"]}', None, None)
        ]
        # The next request brings the cookie back, and finds the cart.
        cookie = response.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
        again = testing.DummyRequest(params={"item": "milk"}, cookies={"session": cookie})
        session_for(again)
        assert add_to_cart(again) == {"items": 2}
        assert "Set-Cookie" not in finish_request(again).headers
        assert sql(pgstore_dsn, "SELECT data FROM http_sessions") == [('{"cart":["tea","milk"]}',)]


def test_a_test_sharing_one_doomed_transaction_is_told_why_its_sessions_are_not_saved(
    pgstore_settings, pgstore_dsn
):
    """pyramid-cookiecutter-starter's testapp: tm.active and a doomed tm.manager
    in the environ. With transaction = auto, the session waits for a commit
    that never comes: a warning names the mode and what to do."""
    config = Configurator(settings={**pgstore_settings, "tm.manager_hook": "pyramid_tm.explicit_manager"})
    config.include("pyramid_tm")
    config.include("pyramid_pgstore")
    config.add_route("add", "/add")
    config.add_view(add_to_cart, route_name="add", renderer="json")
    app = config.make_wsgi_app()
    tm = transaction.TransactionManager(explicit=True)
    tm.begin()
    tm.doom()
    testapp = webtest.TestApp(app, extra_environ={"tm.active": True, "tm.manager": tm})
    try:
        with pytest.warns(
            PGStoreWarning, match="pgstore.transaction = auto.*doomed.*pgstore.transaction = none"
        ):
            testapp.get("/add?item=tea")
    finally:
        tm.abort()
    assert sql(pgstore_dsn, "SELECT count(*) FROM http_sessions") == [(0,)]
    # The advice works: the same test app with transaction = none saves its sessions.
    config = Configurator(settings={**pgstore_settings, "pgstore.transaction": "none"})
    config.include("pyramid_tm")
    config.include("pyramid_pgstore")
    config.add_route("add", "/add")
    config.add_view(add_to_cart, route_name="add", renderer="json")
    tm = transaction.TransactionManager(explicit=True)
    tm.begin()
    tm.doom()
    testapp = webtest.TestApp(config.make_wsgi_app(), extra_environ={"tm.active": True, "tm.manager": tm})
    try:
        testapp.get("/add?item=tea")
        assert testapp.get("/add?item=milk").json == {"items": 2}
    finally:
        tm.abort()
