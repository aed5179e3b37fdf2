"""What the settings and the factory's arguments accept, and what errors may show.

Values too large to work are refused at ``config.include``; a DSN's password
never appears in an error, a script's output or the log; the code-built
factory converts its arguments as the settings are converted; and
``set_on_exception = false`` still sends what already happened to the row.
"""

import logging
import re
import traceback

import pytest
import webtest
from db import sql
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError
from pyramid.response import Response

from pyramid_pgstore import OptionError, PGStore, PGStoreSessionFactory, StoreUnavailable, renew_session
from pyramid_pgstore.scripts import cleanup, schema


def put(request):
    request.session.update(request.params)
    return {}


def read(request):
    return {"data": dict(request.session), "new": request.session.new}


class Boom(Exception):
    pass


def invalidate_then_raise(request):
    request.session.invalidate()
    raise Boom()


def change_then_raise(request):
    request.session["value"] = "changed"
    raise Boom()


def renew_then_raise(request):
    renew_session(request)
    raise Boom()


VIEWS = [put, read, invalidate_then_raise, change_then_raise, renew_then_raise]


def make_app(settings=None, factory=None):
    config = Configurator(settings=settings)
    if factory is None:
        config.include("pyramid_pgstore")
    else:
        config.set_session_factory(factory)
    for view in VIEWS:
        config.add_route(view.__name__, f"/{view.__name__}")
        config.add_view(view, route_name=view.__name__, renderer="json")
    config.add_exception_view(lambda exc, request: Response("boom", status=500), context=Boom)
    return webtest.TestApp(config.make_wsgi_app())


def session_cookies(response):
    return [h for h in response.headers.getall("Set-Cookie") if h.startswith("session=")]


def live_data(dsn):
    return sql(dsn, "SELECT data FROM http_sessions WHERE data <> ''")


# -- values too large to work ---------------------------------------------------------


TEN_YEARS = 10 * 365 * 86400  # the documented limit of durations


TOO_LARGE = {
    "timeout 3e11": ({"timeout": "3e11"}, "timeout"),
    "timeout 1e13": ({"timeout": "1e13"}, "timeout"),
    "timeout 1e400": ({"timeout": "1e400"}, "timeout"),
    "max_age 1e12": ({"max_age": "1000000000000"}, "max_age"),
    "statement_timeout 25 days": ({"statement_timeout": "2160000"}, "statement_timeout"),
    "pool_timeout 1e7": ({"pool_timeout": "1e7"}, "pool_timeout"),
    "max_lifetime 1e12": ({"max_lifetime": "1e12"}, "max_lifetime"),
    "cleanup_interval 1e12": ({"cleanup_interval": "1e12"}, "cleanup_interval"),
    "reissue_time huge": ({"reissue_time": "1e12"}, "reissue_time"),
    "reissue_time huge, no timeout": ({"timeout": "none", "reissue_time": "1e12"}, "reissue_time"),
    "max_length over 1 GiB": ({"max_length": str(2**31)}, "max_length"),
    "pool_max a million": ({"pool_max": "1000000"}, "pool_max"),
}


@pytest.mark.parametrize("case", TOO_LARGE)
def test_a_value_too_large_to_work_is_refused_at_include_naming_the_setting(pgstore_settings, case):
    changes, name = TOO_LARGE[case]
    settings = {**pgstore_settings, **{f"pgstore.{k}": v for k, v in changes.items()}}
    with pytest.raises(ConfigurationError, match=re.escape(f"pgstore.{name}:")):
        Configurator(settings=settings).include("pyramid_pgstore")


def test_too_large_values_are_refused_in_code_too(pgstore_store, pgstore_dsn):
    with pytest.raises(OptionError, match="pool_timeout"):
        PGStore(pgstore_dsn, pool_timeout=1e7)
    with pytest.raises(OptionError, match="timeout"):
        PGStoreSessionFactory(pgstore_store, "s" * 32, timeout=3e11)
    with pytest.raises(ValueError, match="ttl"):
        pgstore_store.save("s", {"n": 1}, 3e11)
    assert pgstore_store.load("s") is None


def test_the_largest_reasonable_values_are_accepted_and_a_session_works(pgstore_settings, pgstore_dsn):
    ten_years = str(TEN_YEARS - 1)
    large = {"timeout": ten_years, "max_age": ten_years, "max_lifetime": ten_years}
    large |= {"statement_timeout": "86400", "pool_timeout": "3600"}
    app = make_app({**pgstore_settings, **{f"pgstore.{k}": v for k, v in large.items()}})
    (cookie,) = session_cookies(app.get("/put?cart=book"))
    assert f"Max-Age={ten_years}" in cookie
    assert app.get("/read").json == {"data": {"cart": "book"}, "new": False}
    (left,) = sql(pgstore_dsn, "SELECT extract(epoch FROM expires_on - now()) FROM http_sessions")
    assert TEN_YEARS - 10 < float(left[0]) < TEN_YEARS


# -- a DSN's password ---------------------------------------------------------------------


MALFORMED = {  # a DSN libpq cannot parse, and the pieces of its password
    "url, bad percent-encoding": ("postgresql://u:correct-horse%zz@h/db", ["correct-horse", "horse%zz"]),
    "keyword, unquoted spaces": (
        "host=x password=correct horse battery dbname=y",
        ["correct", "horse", "battery"],
    ),
    "keyword, an = inside": ("password=correct horse=battery", ["correct", "horse", "battery"]),
}
REFUSED = {  # a DSN the server at it refuses (nothing listens on port 9)
    "keyword": "host=127.0.0.1 port=9 user=x dbname=x password=sekrit123",
    "url": "postgresql://x:sekrit123@127.0.0.1:9/x",
}


def everything_shown(exc):
    """What a traceback of ``exc`` shows: its message, type and chain."""
    return "".join(traceback.format_exception(exc)) + repr(exc)


def assert_hidden(text, pieces):
    for piece in pieces:
        assert piece not in text, f"{piece!r} shown in {text!r}"


@pytest.fixture
def all_logs(caplog):
    caplog.set_level(logging.DEBUG)
    yield caplog
    logged = "".join(
        record.getMessage()
        + ("".join(traceback.format_exception(*record.exc_info)) if record.exc_info else "")
        for record in caplog.get_records("setup") + caplog.get_records("call")
    )
    assert_hidden(logged, ["correct", "horse", "battery", "sekrit123"])


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_dsn_never_shows_its_password_at_include_or_in_code(all_logs, pgstore_settings, case):
    dsn, pieces = MALFORMED[case]
    with pytest.raises(ConfigurationError, match=r"pgstore\.dsn") as info:
        Configurator(settings={**pgstore_settings, "pgstore.dsn": dsn}).include("pyramid_pgstore")
    assert_hidden(everything_shown(info.value), pieces)
    with pytest.raises(OptionError, match="dsn") as info:
        PGStore(dsn)
    assert_hidden(everything_shown(info.value), pieces)


@pytest.mark.parametrize("script", [cleanup, schema], ids=["pgstore-cleanup", "pgstore-schema"])
@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_dsn_never_shows_its_password_in_the_scripts(all_logs, tmp_path, capsys, script, case):
    dsn, pieces = MALFORMED[case]
    path = tmp_path / "app.ini"
    path.write_text(f"[app:main]\nuse = egg:WebTest#debug\npgstore.dsn = {dsn.replace('%', '%%')}\n")
    assert script.main(["script", str(path)]) == 2
    out, err = capsys.readouterr()
    assert "pgstore.dsn" in err
    assert_hidden(out + err, pieces)


@pytest.mark.parametrize("where", ["ini file", "command line"])
def test_a_percent_in_the_password_is_not_printed_by_the_scripts(tmp_path, capsys, where):
    dsn = "host=x user=u password=pa%ss-word-secret dbname=y"
    path = tmp_path / "app.ini"
    in_file = dsn if where == "ini file" else "dbname=y"
    path.write_text(f"[app:main]\nuse = egg:WebTest#debug\npgstore.dsn = {in_file}\n")
    extra = [f"pgstore.dsn={dsn}"] if where == "command line" else []
    schema.main(["pgstore-schema", str(path), *extra])
    assert_hidden(capsys.readouterr().err, ["ss-word-secret"])


@pytest.mark.parametrize("case", REFUSED)
def test_a_refused_connection_never_shows_the_password(all_logs, pgstore_settings, case):
    dsn = REFUSED[case]
    with pytest.raises(StoreUnavailable) as info:  # include checks the table: it connects
        Configurator(settings={**pgstore_settings, "pgstore.dsn": dsn}).include("pyramid_pgstore")
    assert "cannot connect" in str(info.value)
    assert_hidden(everything_shown(info.value), ["sekrit123"])
    app = make_app({**pgstore_settings, "pgstore.dsn": dsn, "pgstore.create_table": "false"})
    with pytest.raises(StoreUnavailable) as info:  # the first request does
        app.get("/put?a=1")
    assert_hidden(everything_shown(info.value), ["sekrit123"])


@pytest.mark.parametrize("script", [cleanup, schema], ids=["pgstore-cleanup", "pgstore-schema"])
def test_a_refused_connection_never_shows_the_password_in_the_scripts(all_logs, tmp_path, capsys, script):
    path = tmp_path / "app.ini"
    path.write_text(f"[app:main]\nuse = egg:WebTest#debug\npgstore.dsn = {REFUSED['url']}\n")
    assert script.main(["script", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "cannot connect" in err
    assert_hidden(out + err, ["sekrit123"])


# -- the code-built factory's arguments ---------------------------------------------------


def test_the_factory_converts_text_arguments_as_the_settings_do(pgstore_store, pgstore_dsn):
    factory = PGStoreSessionFactory(pgstore_store, "s" * 32, max_age="3600", secure="false", reissue_time="0")
    app = make_app(factory=factory)
    (cookie,) = session_cookies(app.get("/put?a=1"))
    assert "Max-Age=3600" in cookie
    assert "secure" not in cookie.lower()  # "false" is False, not a true non-empty string
    before = sql(pgstore_dsn, "SELECT expires_on FROM http_sessions")
    store_queries = pgstore_store.stats()["queries"]
    assert app.get("/read").json["data"] == {"a": "1"}
    assert pgstore_store.stats()["queries"] - store_queries == 2  # reissue_time 0: every read refreshes
    assert sql(pgstore_dsn, "SELECT expires_on FROM http_sessions") > before
    secure = make_app(factory=PGStoreSessionFactory(pgstore_store, "s" * 32, secure="true"))
    (cookie,) = session_cookies(secure.get("/put?a=1"))
    assert "; secure" in cookie.lower()


@pytest.mark.parametrize(
    ("arguments", "name"),
    [({"max_age": "x"}, "max_age"), ({"timeout": "abc"}, "timeout"), ({"secure": "maybe"}, "secure")],
)
def test_the_factory_refuses_a_bad_argument_at_construction_naming_it(pgstore_store, arguments, name):
    with pytest.raises(OptionError) as info:
        PGStoreSessionFactory(pgstore_store, "s" * 32, **arguments)
    assert isinstance(info.value, ValueError)
    assert info.value.name == name
    assert name in str(info.value)


@pytest.mark.parametrize("name", ["cookie_max_age", "pool_max"])
def test_the_factory_refuses_an_unknown_keyword(pgstore_store, name):
    with pytest.raises(TypeError, match=name):
        PGStoreSessionFactory(pgstore_store, "s" * 32, **{name: 3})


# -- set_on_exception = false ---------------------------------------------------------------


@pytest.fixture
def careful(pgstore_settings):
    app = make_app({**pgstore_settings, "pgstore.set_on_exception": "false"})
    app.get("/put?value=kept")
    return app


def test_without_set_on_exception_an_invalidate_before_raising_still_logs_out(careful, pgstore_dsn):
    old = careful.cookies["session"]
    response = careful.get("/invalidate_then_raise", status=500)
    (cookie,) = session_cookies(response)
    assert "Max-Age=0" in cookie
    assert live_data(pgstore_dsn) == []
    stale = webtest.TestApp(careful.app)
    stale.set_cookie("session", old)
    assert stale.get("/read").json == {"data": {}, "new": True}


def test_without_set_on_exception_a_change_before_raising_is_not_saved(careful, pgstore_dsn):
    before = live_data(pgstore_dsn)
    response = careful.get("/change_then_raise", status=500)
    assert session_cookies(response) == []
    assert live_data(pgstore_dsn) == before
    assert careful.get("/read").json["data"] == {"value": "kept"}


def test_without_set_on_exception_a_renewal_before_raising_sends_the_new_id(careful):
    old = careful.cookies["session"]
    response = careful.get("/renew_then_raise", status=500)
    assert len(session_cookies(response)) == 1
    assert careful.cookies["session"] != old
    assert careful.get("/read").json == {"data": {"value": "kept"}, "new": False}
