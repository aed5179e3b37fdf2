"""``lean``: the least a hand-written PostgreSQL session store can do, leaner than ``floor``.

What a team writes in an afternoon with the parts at hand (issue 24): WebOb's
``SignedCookieProfile`` around a random token (no hashing: the token is the
row's key, so a copy of the table holds usable cookies), one ``SELECT
created, data`` by text primary key from a ``jsonb`` column (psycopg2 decodes
it), no expiry column and so no expiry index, one upsert when the session was
changed through ``__setitem__``, autocommit, and psycopg2's own
``ThreadedConnectionPool``. No expiry, no size limit, no retries, no nested
change detection, no merge of concurrent writes.

Beside ``floor`` (``bench/floor.py``: the id hashed at rest, an expiry column
with its index, text data), it shows what those cost, and what
pyramid_pgstore adds beyond them.
"""

from __future__ import annotations

import os
import secrets
import threading
from typing import Any

import psycopg2
from psycopg2.extras import Json
from psycopg2.pool import ThreadedConnectionPool
from pyramid.interfaces import ISession, ISessionFactory
from webob.cookies import SignedCookieProfile
from zope.interface import implementer, provider

TABLE = "lean_sessions"

CREATE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id text PRIMARY KEY,
    created timestamptz NOT NULL DEFAULT now(),
    data jsonb NOT NULL
);
"""

LOAD = f"SELECT created, data FROM {TABLE} WHERE id = %s"
SAVE = f"INSERT INTO {TABLE} (id, data) VALUES (%s, %s) ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data"


def create_table(dsn: str) -> None:
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(CREATE)
    finally:
        conn.close()


class LeanStore:
    """psycopg2's ``ThreadedConnectionPool``, built on first use in each
    process (a server that forks its workers shares no socket), its
    connections in autocommit mode."""

    def __init__(self, dsn: str, maxconn: int = 10) -> None:
        self._dsn = dsn
        self._maxconn = maxconn
        self._pool: ThreadedConnectionPool | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def _get(self) -> tuple[ThreadedConnectionPool, Any]:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._pool = ThreadedConnectionPool(
                        1, self._maxconn, self._dsn, application_name="bench_lean"
                    )
                    self._pid = os.getpid()
        pool = self._pool
        assert pool is not None
        conn = pool.getconn()
        if not conn.autocommit:
            conn.autocommit = True
        return pool, conn

    def load(self, token: str) -> Any:
        pool, conn = self._get()
        try:
            with conn.cursor() as cur:
                cur.execute(LOAD, (token,))
                row = cur.fetchone()
        finally:
            pool.putconn(conn)
        return row

    def save(self, token: str, data: dict[str, Any]) -> None:
        pool, conn = self._get()
        try:
            with conn.cursor() as cur:
                cur.execute(SAVE, (token, Json(data)))
        finally:
            pool.putconn(conn)


def LeanSessionFactory(dsn: str, secret: str, cookie_name: str = "session") -> ISessionFactory:
    store = LeanStore(dsn)
    profile = SignedCookieProfile(secret, "bench.lean.", cookie_name, httponly=True, samesite="Lax")

    @implementer(ISession)
    class LeanSession(dict):
        def __init__(self, request: Any) -> None:
            self.request = request
            self.new = True
            self.created = 0.0
            self._token = None
            self._dirty = False
            token = profile.bind(request).get_value()
            if token is not None:
                row = store.load(token)
                if row is not None:
                    created, data = row
                    dict.update(self, data)
                    self.created = created.timestamp()
                    self._token = token
                    self.new = False

        def changed(self) -> None:
            if not self._dirty:
                self._dirty = True
                self.request.add_response_callback(self._save)

        def __setitem__(self, key: str, value: Any) -> None:
            dict.__setitem__(self, key, value)
            self.changed()

        def __delitem__(self, key: str) -> None:
            dict.__delitem__(self, key)
            self.changed()

        def invalidate(self) -> None:
            self.clear()
            self._token = None

        def _save(self, request: Any, response: Any) -> None:
            if self._token is None:
                self._token = secrets.token_urlsafe(32)
                profile.bind(request).set_cookies(response, self._token)
            store.save(self._token, dict(self))

        # The rest of ISession, unused by the benchmark's views.
        def flash(self, msg: Any, queue: str = "", allow_duplicate: bool = True) -> None:
            self.setdefault("_f_" + queue, []).append(msg)
            self.changed()

        def pop_flash(self, queue: str = "") -> list[Any]:
            return self.pop("_f_" + queue, [])

        def peek_flash(self, queue: str = "") -> list[Any]:
            return self.get("_f_" + queue, [])

        def new_csrf_token(self) -> str:
            self["_csrft_"] = token = secrets.token_hex(20)
            return token

        def get_csrf_token(self) -> str:
            return self.get("_csrft_") or self.new_csrf_token()

    return provider(ISessionFactory)(LeanSession)
