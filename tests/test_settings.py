"""The pgstore.* settings read by config.include('pyramid_pgstore')."""

import json
import re

import psycopg2
import pytest
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError

from pyramid_pgstore import get_store
from pyramid_pgstore.settings import SETTINGS, parse_settings

LONG_SECRET = "s" * 32
OTHER_SECRET = "t" * 40


def include(settings):
    config = Configurator(settings=settings)
    config.include("pyramid_pgstore")
    return config


def sql(dsn, query):
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


# A value other than the default for every setting, and what it parses to.
# The DSN is filled in by the test.
CONFIGURED = {
    "secret": (f"{LONG_SECRET}\n  {OTHER_SECRET}", (LONG_SECRET, OTHER_SECRET)),
    "cookie_name": (" sid ", "sid"),
    "max_age": ("3600", 3600),
    "path": ("/app", "/app"),
    "domain": ("example.com", "example.com"),
    "secure": ("yes", True),
    "httponly": ("off", False),
    "samesite": ("strict", "Strict"),
    "timeout": ("90.5", 90.5),
    "reissue_time": ("5", 5.0),
    "set_on_exception": ("False", False),
    "userid_key": ("user.id", "user.id"),
    "renew_on_login": ("no", False),
    "track_client": ("off", False),
    "max_lifetime": ("28800", 28800.0),
    "transaction": ("None", "none"),
    "dbsession": ("db", "db"),
    "max_sessions_per_user": ("3", 3),
    "max_length": ("100000", 100_000),
    "table": ("custom_sessions", "custom_sessions"),
    "create_table": ("true", True),
    "pool_min": ("0", 0),
    "pool_max": ("3", 3),
    "pool_timeout": ("2.5", 2.5),
    "statement_timeout": ("1.5", 1.5),
    "synchronous_commit": ("off", False),
    "prepare_statements": ("true", True),
    "cleanup_interval": ("3600", 3600.0),
    "serializer": ("json", json),
    "failover_timeout": ("2.5", 2.5),
    "commit_timeout": ("none", None),
    "distributed": ("yes", True),
}


def test_every_setting_parses(pgstore_dsn):
    assert set(CONFIGURED) | {"dsn", "engine"} == {setting.name for setting in SETTINGS}
    settings = {f"pgstore.{name}": raw for name, (raw, _) in CONFIGURED.items()}
    settings["pgstore.dsn"] = pgstore_dsn
    parsed = parse_settings(settings).by_name()
    expected = {
        "dsn": pgstore_dsn,
        "engine": None,
        **{name: value for name, (_, value) in CONFIGURED.items()},
    }
    assert parsed == expected

    config = include(settings)
    store = get_store(config.registry)
    assert store.table == "custom_sessions"
    assert store.max_length == 100_000
    assert store.serializer is json
    assert sql(pgstore_dsn, "SELECT to_regclass('custom_sessions') IS NOT NULL") == [(True,)]


def test_the_defaults_are_the_documented_ones(pgstore_dsn):
    parsed = parse_settings({"pgstore.dsn": pgstore_dsn, "pgstore.secret": LONG_SECRET}).by_name()
    assert parsed == {
        "dsn": pgstore_dsn,
        "engine": None,
        "secret": (LONG_SECRET,),
        "cookie_name": "session",
        "max_age": None,
        "path": "/",
        "domain": None,
        "secure": False,
        "httponly": True,
        "samesite": "Lax",
        "timeout": 1200,
        "reissue_time": None,
        "set_on_exception": True,
        "userid_key": "auth.userid",
        "renew_on_login": True,
        "track_client": True,
        "max_lifetime": None,
        "transaction": "auto",
        "dbsession": "dbsession",
        "max_sessions_per_user": None,
        "max_length": 4096,
        "table": "http_sessions",
        "create_table": True,
        "pool_min": 1,
        "pool_max": 10,
        "pool_timeout": 30,
        "statement_timeout": None,
        "synchronous_commit": True,
        "prepare_statements": False,
        "cleanup_interval": 0,
        "serializer": None,
        "failover_timeout": 5.0,
        "commit_timeout": 10.0,
        "distributed": None,
    }


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("Yes", True), ("on", True), ("1", True), ("FALSE", False), ("no", False), ("0", False)],
)
def test_booleans_are_spelled_as_in_ini_files(raw, expected):
    parsed = parse_settings({"pgstore.dsn": "dbname=x", "pgstore.secret": LONG_SECRET, "pgstore.secure": raw})
    assert parsed.cookie.secure is expected


@pytest.mark.parametrize(("raw", "expected"), [("auto", None), (" AUTO ", None), ("1", True), ("off", False)])
def test_distributed_is_auto_or_a_boolean(raw, expected):
    parsed = parse_settings({"pgstore.dsn": "dbname=x", "pgstore.distributed": raw}, need_secret=False)
    assert parsed.store.distributed is expected


@pytest.mark.parametrize("name", ["timeout", "reissue_time", "max_age"])
@pytest.mark.parametrize("raw", ["none", "None", ""])
def test_none_switches_off_an_optional_duration(name, raw):
    parsed = parse_settings(
        {"pgstore.dsn": "dbname=x", "pgstore.secret": LONG_SECRET, f"pgstore.{name}": raw}
    )
    assert parsed.by_name()[name] is None


@pytest.mark.parametrize("raw", ["Strict", "lax", "NONE"])
def test_samesite_is_case_insensitive(raw):
    parsed = parse_settings(
        {
            "pgstore.dsn": "dbname=x",
            "pgstore.secret": LONG_SECRET,
            "pgstore.samesite": raw,
            "pgstore.secure": "1",
        }
    )
    assert parsed.cookie.samesite == raw.capitalize()


BAD = {
    # id: (settings changed or removed (None), the setting the message must name)
    "missing dsn": ({"pgstore.dsn": None}, "pgstore.dsn"),
    "empty dsn": ({"pgstore.dsn": "  "}, "pgstore.dsn"),
    "unparsable dsn": ({"pgstore.dsn": "host=localhost nonsense"}, "pgstore.dsn"),
    "missing secret": ({"pgstore.secret": None}, "pgstore.secret"),
    "short secret": ({"pgstore.secret": "s" * 31}, "pgstore.secret"),
    "short second secret": ({"pgstore.secret": f"{LONG_SECRET} short"}, "pgstore.secret"),
    "timeout abc": ({"pgstore.timeout": "abc"}, "pgstore.timeout"),
    "negative timeout": ({"pgstore.timeout": "-1"}, "pgstore.timeout"),
    "zero timeout": ({"pgstore.timeout": "0"}, "pgstore.timeout"),
    "infinite timeout": ({"pgstore.timeout": "inf"}, "pgstore.timeout"),
    "nan timeout": ({"pgstore.timeout": "nan"}, "pgstore.timeout"),
    "nan pool_timeout": ({"pgstore.pool_timeout": "nan"}, "pgstore.pool_timeout"),
    "prepare_statements maybe": ({"pgstore.prepare_statements": "maybe"}, "pgstore.prepare_statements"),
    "distributed maybe": ({"pgstore.distributed": "maybe"}, "pgstore.distributed"),
    "reissue_time over timeout": (
        {"pgstore.timeout": "60", "pgstore.reissue_time": "60"},
        "pgstore.reissue_time",
    ),
    "zero max_age": ({"pgstore.max_age": "0"}, "pgstore.max_age"),
    "reissue_time abc": ({"pgstore.reissue_time": "soon"}, "pgstore.reissue_time"),
    "max_age float": ({"pgstore.max_age": "1.5"}, "pgstore.max_age"),
    "max_length negative": ({"pgstore.max_length": "-1"}, "pgstore.max_length"),
    "pool_max 0": ({"pgstore.pool_max": "0"}, "pgstore.pool_max"),
    "pool_min over pool_max": ({"pgstore.pool_min": "5", "pgstore.pool_max": "2"}, "pgstore.pool_min"),
    "pool_timeout 0": ({"pgstore.pool_timeout": "0"}, "pgstore.pool_timeout"),
    "cleanup_interval negative": ({"pgstore.cleanup_interval": "-5"}, "pgstore.cleanup_interval"),
    "samesite Sideways": ({"pgstore.samesite": "Sideways"}, "pgstore.samesite"),
    "samesite None without secure": ({"pgstore.samesite": "None"}, "pgstore.samesite"),
    "secure maybe": ({"pgstore.secure": "maybe"}, "pgstore.secure"),
    "httponly maybe": ({"pgstore.httponly": "maybe"}, "pgstore.httponly"),
    "set_on_exception maybe": ({"pgstore.set_on_exception": "maybe"}, "pgstore.set_on_exception"),
    "create_table maybe": ({"pgstore.create_table": "maybe"}, "pgstore.create_table"),
    "serializer missing": ({"pgstore.serializer": "no.such.thing"}, "pgstore.serializer"),
    "serializer without dumps": ({"pgstore.serializer": "os.path"}, "pgstore.serializer"),
    "empty cookie_name": ({"pgstore.cookie_name": ""}, "pgstore.cookie_name"),
    "unknown key": ({"pgstore.timout": "60"}, "pgstore.timout"),
    "hostile table": ({"pgstore.table": 'x"; DROP TABLE y; --'}, "pgstore.table"),
    "three-part table": ({"pgstore.table": "a.b.c"}, "pgstore.table"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_missing_or_bad_setting_fails_at_include_naming_it(pgstore_settings, case):
    changes, name = BAD[case]
    settings = {**pgstore_settings, **changes}
    settings = {key: value for key, value in settings.items() if value is not None}
    config = Configurator(settings=settings)
    with pytest.raises(ConfigurationError, match=re.escape(name)):
        config.include("pyramid_pgstore")


def test_an_error_about_the_secret_does_not_show_it(pgstore_dsn):
    secret = "do-not-print-me"
    with pytest.raises(ConfigurationError, match=r"pgstore\.secret") as info:
        include({"pgstore.dsn": pgstore_dsn, "pgstore.secret": f"{LONG_SECRET} {secret}"})
    assert secret not in str(info.value)
    assert LONG_SECRET not in str(info.value)


def test_a_hostile_table_name_runs_nothing(pgstore_settings, pgstore_dsn):
    sql(pgstore_dsn, "CREATE TABLE IF NOT EXISTS y (id int)")
    with pytest.raises(ConfigurationError, match=r"pgstore\.table"):
        include({**pgstore_settings, "pgstore.table": 'x"; DROP TABLE y; --'})
    assert sql(pgstore_dsn, "SELECT to_regclass('y') IS NOT NULL") == [(True,)]


@pytest.mark.parametrize("name", ["my session", "a;b", "sess=ion"])
def test_a_cookie_name_no_browser_accepts_fails_at_include(pgstore_settings, name):
    config = Configurator(settings={**pgstore_settings, "pgstore.cookie_name": name})
    with pytest.raises(ConfigurationError, match=r"pgstore\.cookie_name"):
        config.include("pyramid_pgstore")
