"""Attacks and bad input: forged cookies, fixation, secrets, payloads."""

import base64
import hmac
import random
import secrets

import pytest
import webtest
from pyramid.config import Configurator
from webob.cookies import SignedSerializer

from pyramid_pgstore import get_store
from pyramid_pgstore.cookie import SALT, RotatingSigner
from pyramid_pgstore.store import storage_key


def whoami(request):
    return {"user": request.session.get("user"), "new": request.session.new}


def login(request):
    request.session["user"] = request.params["user"]
    return {"ok": True}


def put(request):
    request.session[request.params["key"]] = {"set": {1, 2}} if request.params.get("bad") else "fine"
    return {"ok": True}


def make_app(settings):
    with Configurator(settings=settings) as config:
        config.include("pyramid_pgstore")
        for view in (whoami, login, put):
            config.add_route(view.__name__, "/" + view.__name__)
            config.add_view(view, route_name=view.__name__, renderer="json")
    return webtest.TestApp(config.make_wsgi_app())


def queries(app):
    return get_store(app.app.registry).stats()["queries"]


def sign(secret, session_id):
    return RotatingSigner([secret]).dumps(session_id).decode()


def random_cookie_values(rng, secret, count):
    """Cookie values an attacker might send, ``count`` of them, by kind."""
    signed_length = len(sign(secret, "a" * 43))
    makers = {
        "random bytes": lambda: bytes(rng.randrange(33, 256) for _ in range(rng.randrange(1, 200))).decode(
            "latin-1"
        ),
        "over-long": lambda: "A" * rng.randrange(4000, 9000),
        "bad base64": lambda: "".join(rng.choice("!@#$%^&*()<>?~") for _ in range(rng.randrange(1, 150))),
        "base64, bad signature": lambda: (
            base64.urlsafe_b64encode(rng.randbytes(64 + 43)).decode().rstrip("=")
        ),
        "truncated": lambda: sign(secret, secrets.token_urlsafe(32))[: rng.randrange(1, signed_length)],
        "non-UTF-8": lambda: '"' + bytes(rng.randrange(128, 256) for _ in range(40)).decode("latin-1") + '"',
        "wrong secret": lambda: sign("w" * 48, secrets.token_urlsafe(32)),
        "signed, unknown id": lambda: sign(secret, secrets.token_urlsafe(32)),
    }
    kinds = list(makers)
    return [(kind, makers[kind]()) for kind in (kinds[i % len(kinds)] for i in range(count))]


def test_ten_thousand_hostile_cookies_all_get_a_fresh_session_and_no_query_unless_signed(pgstore_settings):
    app = make_app(pgstore_settings)
    app.get("/login", {"user": "ann"})  # a real session beside the noise
    real_cookie = app.cookies["session"]
    rng = random.Random(20261126)  # seeded: a failure can be replayed
    cases = random_cookie_values(rng, pgstore_settings["pgstore.secret"], 10_000)
    unverifiable_queries = 0
    for kind, value in cases:
        client = webtest.TestApp(app.app)
        before = queries(app)
        response = client.get("/whoami", headers={"Cookie": f"session={value}"}.items(), status=200)
        assert response.json == {"user": None, "new": True}, (kind, value)
        if kind != "signed, unknown id":
            unverifiable_queries += queries(app) - before
    assert unverifiable_queries == 0  # a cookie that does not verify never reaches the database
    app.set_cookie("session", real_cookie)
    assert app.get("/whoami").json == {"user": "ann", "new": False}


def test_an_attacker_chosen_id_is_never_adopted(pgstore_settings, pgstore_dsn):
    app = make_app(pgstore_settings)
    chosen = secrets.token_urlsafe(32)
    for cookie in (
        chosen,
        sign(pgstore_settings["pgstore.secret"], chosen),
    ):  # unsigned, then signed but unknown
        client = webtest.TestApp(app.app)
        client.set_cookie("session", cookie)
        client.get("/login", {"user": "victim"})
        issued = RotatingSigner([pgstore_settings["pgstore.secret"]]).loads(
            client.cookies["session"].encode()
        )
        assert issued != chosen
        assert get_store(app.app.registry).load(chosen) is None


def test_ids_are_256_random_bits_and_the_table_holds_only_their_hashes(pgstore_settings, pgstore_dsn):
    app = make_app(pgstore_settings)
    signer = RotatingSigner([pgstore_settings["pgstore.secret"]])
    ids = set()
    for n in range(200):
        client = webtest.TestApp(app.app)
        client.get("/login", {"user": f"u{n}"})
        session_id = signer.loads(client.cookies["session"].encode())
        assert len(base64.urlsafe_b64decode(session_id + "=")) == 32
        ids.add(session_id)
    assert len(ids) == 200
    import psycopg2

    with psycopg2.connect(pgstore_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT string_agg(key || data, ' ') FROM http_sessions")
        (dump,) = cur.fetchone()
    conn.close()
    assert not any(session_id in dump for session_id in ids)
    assert all(storage_key(session_id) in dump for session_id in ids)


def test_signatures_are_compared_in_constant_time(pgstore_settings, monkeypatch):
    compared = []
    constant_time = hmac.compare_digest

    def recording(expected, given):
        compared.append((len(expected), len(given)))
        return constant_time(expected, given)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    app = make_app(pgstore_settings)
    forged = base64.urlsafe_b64encode(b"\0" * 64 + b"a" * 43).decode().rstrip("=")
    app.set_cookie("session", forged)
    assert app.get("/whoami").json["new"] is True
    assert (64, 64) in compared  # the SHA-512 HMAC was checked there


def test_the_cookie_is_signed_with_hmac_sha512_under_our_salt(pgstore_settings):
    app = make_app(pgstore_settings)
    app.get("/login", {"user": "ann"})
    verifier = SignedSerializer(pgstore_settings["pgstore.secret"], SALT, "sha512", serializer=_Raw())
    assert len(verifier.loads(app.cookies["session"].encode())) == 43


class _Raw:
    def dumps(self, value):
        return value

    def loads(self, value):
        return value


def test_an_unserializable_value_names_its_key_and_leaves_the_stored_session(pgstore_settings):
    app = make_app(pgstore_settings)
    app.get("/login", {"user": "ann"})
    with pytest.raises(TypeError, match="'evil'"):
        app.get("/put", {"key": "evil", "bad": "1"})
    assert app.get("/whoami").json == {"user": "ann", "new": False}
