"""The benchmarked app: the same three views on each session backend.

``gunicorn 'apps:make_app()'`` (with ``--pythonpath bench``) builds it from
environment variables that ``bench/run.py`` sets (``matrix.start_backends``):

``BENCH_BACKEND``   ``cookie``, ``redis``, ``redis-lru``, ``lean``, ``floor``, ``pgstore``,
                    ``pgstore-prep`` (pgstore with ``pgstore.prepare_statements = true``)
                    or ``pgstore-base`` (the library at ``--baseline``)
``BENCH_SECRET``    the signing secret (the same for every backend)
``BENCH_DSN``       PostgreSQL DSN (lean, floor, pgstore)
``BENCH_REDIS_URL`` redis URL (redis)
``BENCH_TIMEOUT``   idle timeout in seconds
``BENCH_TABLE``     pgstore.table (pgstore; the scale section uses a second table)
``BENCH_PGSTORE``   extra pgstore.* settings, ``key=value`` separated by ``;``

Views: ``/untouched`` never touches ``request.session``; ``/read`` reads two
keys; ``/write`` increments a counter (the data changes on every request, so
every backend really writes). A write without a cookie creates a session of
three keys (about 100 bytes of JSON); the harness makes its sessions that way.
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

from pyramid.config import Configurator
from pyramid.response import Response
from pyramid.session import JSONSerializer, SignedCookieSessionFactory


def untouched(request: Any) -> Response:
    return Response("ok")


def read(request: Any) -> Response:
    session = request.session
    return Response(f"{session.get('user', 'none')} {session.get('n', 0)}")


def write(request: Any) -> Response:
    session = request.session
    if "user" not in session:
        session["user"] = "user-" + secrets.token_hex(6)
        session["csrf"] = secrets.token_hex(20)
    session["n"] = session.get("n", 0) + 1
    return Response(str(session["n"]))


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def session_factory(backend: str, env: dict[str, str]) -> Any:
    """The factory for ``backend``, configured alike: same secret, cookie name,
    timeout, JSON, and reads that write nothing (expiry refreshes are rare)."""
    secret = env["BENCH_SECRET"]
    timeout = int(env.get("BENCH_TIMEOUT", "86400"))
    if backend == "cookie":
        # reissue_time=None: a read never re-sends the cookie (the load
        # generator replays old cookies, so any reissue would happen on every read).
        return SignedCookieSessionFactory(
            secret, timeout=timeout, reissue_time=None, httponly=True, serializer=JSONSerializer()
        )
    if backend in ("redis", "redis-lru"):
        from pyramid_session_redis import RedisSessionFactory

        # JSON like the others (its default, pickle, is no choice for a comparison).
        common = {
            "secret": secret,
            "timeout": timeout,
            "redis_url": env["BENCH_REDIS_URL"],
            "cookie_httponly": True,
            "cookie_samesite": "Lax",
            "serialize": _json_bytes,
            "deserialize": json.loads,
        }
        if backend == "redis":
            # Expiry kept by Redis, slid on every access: a read is GET then
            # EXPIRE (two round trips), a write GET then SETEX. Its option to
            # pipeline GET+EXPIRE, set_redis_ttl_readheavy, fails in 1.8.1
            # (it deserializes the Pipeline object), so it cannot be used.
            return RedisSessionFactory(**common, python_expires=False)
        # "LRU mode": no TTL in Redis (it must evict by itself), expiry
        # checked in Python and rewritten once a tenth of the timeout has
        # passed, like pgstore's reissue_time: a read is one GET.
        return RedisSessionFactory(
            **common, set_redis_ttl=False, python_expires=True, timeout_trigger=timeout // 10
        )
    if backend == "floor":
        from floor import FloorSessionFactory

        return FloorSessionFactory(env["BENCH_DSN"], secret, timeout)
    if backend == "lean":
        from lean import LeanSessionFactory

        return LeanSessionFactory(env["BENCH_DSN"], secret)  # no expiry: nothing to time out
    raise ValueError(f"unknown backend {backend!r}")


def make_app(env: dict[str, str] | None = None) -> Any:
    env = dict(os.environ if env is None else env)
    backend = env["BENCH_BACKEND"]
    settings: dict[str, str] = {}
    if backend in ("pgstore", "pgstore-prep", "pgstore-base"):
        settings = {
            "pgstore.dsn": env["BENCH_DSN"],
            "pgstore.secret": env["BENCH_SECRET"],
            "pgstore.timeout": env.get("BENCH_TIMEOUT", "86400"),
            "pgstore.table": env.get("BENCH_TABLE", "http_sessions"),
        }
        if backend in ("pgstore-prep", "pgstore-base"):
            # A table of its own: the scale section's small table keeps 1,000 rows.
            table = env.get("BENCH_TABLE", "http_sessions")
            settings["pgstore.table"] = table + backend.removeprefix("pgstore").replace("-", "_")
        if backend == "pgstore-prep":
            settings["pgstore.prepare_statements"] = "true"
        for item in filter(None, env.get("BENCH_PGSTORE", "").split(";")):
            key, _, value = item.partition("=")
            settings[key.strip()] = value.strip()
    with Configurator(settings=settings) as config:
        if backend in ("pgstore", "pgstore-prep", "pgstore-base"):
            config.include("pyramid_pgstore")
        else:
            config.set_session_factory(session_factory(backend, env))
        for view in (untouched, read, write):
            config.add_route(view.__name__, "/" + view.__name__)
            config.add_view(view, route_name=view.__name__)
    return config.make_wsgi_app()
