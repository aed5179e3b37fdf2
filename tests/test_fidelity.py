"""What goes in comes back: text stored as UTF-8, awkward strings kept, silent changes refused.

Through the store (save, load) and through a Pyramid session (one request
writes, the next reads), against the real server.
"""

import re
import secrets

import pytest
import webtest
from db import rewrite, sql
from pyramid.config import Configurator

from pyramid_pgstore import PGStore, SessionTooLarge

AWKWARD = {
    "nul": "a\x00b",
    "lone high": "\ud800",
    "lone low in text": "x\udfffy",
    "mixed": "é\ud800😀\x00",
    "k\x00ey": 1,
    "\ud800key": 2,
    "😀": ["\x00", {"\udc00": "\ud800"}],
}


def stored(dsn):
    """The one stored session's data column, and its size in bytes."""
    return sql(dsn, "SELECT data, octet_length(data) FROM http_sessions WHERE data <> ''")


def make_app(pgstore_settings, value, key="v"):
    """/write stores ``value`` (Python, not from a URL) under ``key``; /same and
    /repr say what comes back."""

    def write(request):
        request.session[key] = value
        return {}

    def same(request):
        return {"same": request.session.get(key) == value, "new": request.session.new}

    def show(request):
        return {"repr": repr(request.session.get(key))}

    config = Configurator(settings=pgstore_settings)
    config.include("pyramid_pgstore")
    for name, view in {"write": write, "same": same, "repr": show}.items():
        config.add_route(name, f"/{name}")
        config.add_view(view, route_name=name, renderer="json")
    return webtest.TestApp(config.make_wsgi_app())


# -- UTF-8 and max_length ------------------------------------------------------


@pytest.mark.parametrize("text", ["é" * 1000, "😀" * 500], ids=["1000 é", "500 emoji"])
def test_non_ascii_text_is_stored_as_utf8_and_fits_max_length(pgstore_store, pgstore_dsn, text):
    pgstore_store.save("s", {"t": text}, 60)
    assert stored(pgstore_dsn) == [('{"t":"' + text + '"}', 2008)]  # not \\u escapes (6,000+ bytes)
    assert pgstore_store.load("s").data == {"t": text}


def test_max_length_counts_the_utf8_bytes_stored_to_the_byte(pgstore_dsn):
    store = PGStore(pgstore_dsn, max_length=100)
    exactly = {"v": "é" * 46}  # {"v":"…"} is 8 bytes, each é 2: 100 bytes in all
    store.save("s", exactly, 60)
    assert stored(pgstore_dsn) == [('{"v":"' + "é" * 46 + '"}', 100)]
    with pytest.raises(SessionTooLarge) as info:
        store.save("s", {"v": "é" * 46 + "x"}, 60)
    assert (info.value.size, info.value.max_length) == (101, 100)
    assert store.load("s").data == exactly


def test_a_session_of_non_ascii_text_round_trips_through_pyramid(pgstore_settings):
    app = make_app(pgstore_settings, "😀" * 500)
    app.get("/write")
    assert app.get("/same").json == {"same": True, "new": False}


# -- NUL and lone surrogates ---------------------------------------------------------


def test_nul_and_lone_surrogates_in_keys_and_values_round_trip_through_the_store(pgstore_store):
    pgstore_store.save("s", AWKWARD, 60)
    assert pgstore_store.load("s").data == AWKWARD
    assert rewrite(pgstore_store, "s", {**AWKWARD, "n": 2}, 60)
    assert pgstore_store.load("s").data == {**AWKWARD, "n": 2}


def test_nul_and_lone_surrogates_round_trip_through_a_pyramid_session(pgstore_settings):
    app = make_app(pgstore_settings, AWKWARD)
    app.get("/write")
    assert app.get("/same").json == {"same": True, "new": False}
    app.get("/write")  # unchanged: the next request still reads it back
    assert app.get("/same").json == {"same": True, "new": False}


def test_a_high_then_low_surrogate_comes_back_as_the_character_they_encode(pgstore_store):
    """In JSON a pair of \\u escapes is one character (as with the json module
    itself, which the old ASCII-escaped serializer did the same): documented."""
    pgstore_store.save("s", {"v": "\ud83d\ude00", "w": "\ude00\ud83d"}, 60)
    assert pgstore_store.load("s").data == {"v": "😀", "w": "\ude00\ud83d"}


@pytest.mark.parametrize("userid", ["ann\x00", "\ud800ann"], ids=["nul", "lone surrogate"])
def test_a_user_id_with_nul_or_a_lone_surrogate_is_saved_like_any_value(pgstore_settings, userid):
    app = make_app(pgstore_settings, userid, key="auth.userid")  # what remember() writes
    app.get("/write")
    assert app.get("/same").json == {"same": True, "new": False}


def test_a_long_user_id_within_max_length_is_saved(pgstore_settings):
    app = make_app(pgstore_settings, secrets.token_hex(1500), key="auth.userid")  # 3,000 characters
    app.get("/write")
    assert app.get("/same").json == {"same": True, "new": False}


# -- what JSON would change --------------------------------------------------------------


MERGING = {  # data, what the message names
    "top level": ({1: "a", "1": "b"}, "the session has the keys 1 and '1'"),
    "nested": ({"prefs": {1: "a", "1": "b"}}, "key 'prefs' has the keys 1 and '1'"),
    "inside a list": ({"rows": [{"x": 1}, {True: 1, "true": 2}]}, "key 'rows' has the keys True and 'true'"),
    "None and null": ({"m": {None: 1, "null": 2}}, "key 'm' has the keys None and 'null'"),
    "float": ({"m": {1.5: 1, "1.5": 2}}, "key 'm' has the keys 1.5 and '1.5'"),
}


@pytest.mark.parametrize("case", MERGING)
def test_keys_json_would_merge_are_refused_naming_the_key_before_any_write(pgstore_store, pgstore_dsn, case):
    data, message = MERGING[case]
    pgstore_store.save("s", {"kept": 1}, 60)
    before = stored(pgstore_dsn)
    queries = pgstore_store.stats()["queries"]
    with pytest.raises(TypeError, match=re.escape(message)):
        pgstore_store.save("s", data, 60)
    assert pgstore_store.stats()["queries"] == queries  # refused before the database
    assert stored(pgstore_dsn) == before


@pytest.mark.parametrize("special", [float("nan"), float("inf"), float("-inf")], ids=str)
def test_special_float_keys_json_would_merge_are_refused(pgstore_store, special):
    spelled = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}[str(special)]
    with pytest.raises(TypeError):
        pgstore_store.save("s", {"m": {special: "lost", spelled: "kept"}}, 60)


def test_merging_keys_set_in_a_view_fail_the_request_and_leave_the_stored_session(
    pgstore_settings, pgstore_dsn
):
    app = make_app(pgstore_settings, "first")
    app.get("/write")
    before = stored(pgstore_dsn)
    bad = make_app(pgstore_settings, {1: "book", "1": "pen"}, key="cart")
    bad.set_cookie("session", app.cookies["session"])
    with pytest.raises(TypeError, match="key 'cart' has the keys 1 and '1'"):
        bad.get("/write")
    assert stored(pgstore_dsn) == before
    assert app.get("/same").json == {"same": True, "new": False}


def test_tuples_come_back_as_lists_and_int_keys_as_strings(pgstore_store, pgstore_settings):
    pgstore_store.save("s", {"pair": (1, 2), "by_id": {7: "ann"}, 5: "five"}, 60)
    assert pgstore_store.load("s").data == {"pair": [1, 2], "by_id": {"7": "ann"}, "5": "five"}
    app = make_app(pgstore_settings, {"pair": (1, 2), 7: "ann"})
    app.get("/write")
    assert app.get("/repr").json == {"repr": "{'pair': [1, 2], '7': 'ann'}"}
