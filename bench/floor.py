"""``floor``: the least a hand-written PostgreSQL session store can do.

What a team writes when it decides to "just use a table": a signed id in the
cookie (WebOb's ``SignedSerializer``, HMAC-SHA512, like the other backends),
one primary-key ``SELECT`` to load, one ``INSERT ... ON CONFLICT`` when the
session was changed through ``__setitem__``, psycopg2 in autocommit mode and a
small pool that keeps its connections. No expiry refresh on reads, no nested
change detection, no retries, no size limit, no key rotation: the floor under
which no real store can go. The key is the SHA-256 of the id, like
pyramid_pgstore's, so both tables have the same shape and the same index.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from typing import Any

import psycopg2
from pyramid.interfaces import ISession, ISessionFactory
from webob.cookies import SignedSerializer
from zope.interface import implementer, provider

TABLE = "floor_sessions"

CREATE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    key text PRIMARY KEY,
    data text NOT NULL,
    created_on timestamptz NOT NULL,
    modified_on timestamptz NOT NULL,
    expires_on timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS {TABLE}_expires_on_idx ON {TABLE} (expires_on);
"""

LOAD = f"SELECT data FROM {TABLE} WHERE key = %s AND expires_on > now()"
SAVE = (
    f"INSERT INTO {TABLE} (key, data, created_on, modified_on, expires_on)"
    " VALUES (%s, %s, now(), now(), now() + %s * interval '1 second')"
    " ON CONFLICT (key) DO UPDATE SET data = EXCLUDED.data,"
    " modified_on = EXCLUDED.modified_on, expires_on = EXCLUDED.expires_on"
)


def create_table(dsn: str) -> None:
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(CREATE)
    finally:
        conn.close()


class FloorStore:
    """One statement per call on a pooled autocommit connection.

    The pool is a list under a lock: take the last idle connection or open
    one; give it back unless ``keep`` are already idle. Connections are opened
    lazily, so a server that forks its workers shares none.
    """

    def __init__(self, dsn: str, keep: int = 10) -> None:
        self._dsn = dsn
        self._keep = keep
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _get(self) -> Any:
        with self._lock:
            if self._pid != os.getpid():  # forked after use: not our sockets
                self._idle, self._pid = [], os.getpid()
            if self._idle:
                return self._idle.pop()
        conn = psycopg2.connect(self._dsn, application_name="bench_floor")
        conn.autocommit = True
        return conn

    def _put(self, conn: Any) -> None:
        if not conn.closed:
            with self._lock:
                if len(self._idle) < self._keep:
                    self._idle.append(conn)
                    return
            conn.close()

    def load(self, key: str) -> str | None:
        conn = self._get()
        try:
            with conn.cursor() as cur:
                cur.execute(LOAD, (key,))
                row = cur.fetchone()
        finally:
            self._put(conn)
        return row[0] if row else None

    def save(self, key: str, payload: str, ttl: float) -> None:
        conn = self._get()
        try:
            with conn.cursor() as cur:
                cur.execute(SAVE, (key, payload, ttl))
        finally:
            self._put(conn)


class _IdSerializer:
    def dumps(self, session_id: str) -> bytes:
        return session_id.encode("ascii")

    def loads(self, bstruct: bytes) -> str:
        return bstruct.decode("ascii")


def FloorSessionFactory(
    dsn: str, secret: str, timeout: float, cookie_name: str = "session"
) -> ISessionFactory:
    store = FloorStore(dsn)
    signer = SignedSerializer(secret, "bench.floor.", "sha512", serializer=_IdSerializer())

    @implementer(ISession)
    class FloorSession(dict):
        def __init__(self, request: Any) -> None:
            self.request = request
            self.new = True
            self.created = time.time()
            self._id: str | None = None
            self._dirty = False
            value = request.cookies.get(cookie_name)
            if value:
                try:
                    session_id = signer.loads(value.encode("latin-1"))
                except ValueError:
                    return
                payload = store.load(hashlib.sha256(session_id.encode()).hexdigest())
                if payload is not None:
                    dict.update(self, json.loads(payload))
                    self._id = session_id
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
            self._id = None

        def _save(self, request: Any, response: Any) -> None:
            if self._id is None:
                self._id = secrets.token_urlsafe(32)
                cookie = signer.dumps(self._id).decode("ascii")
                response.set_cookie(cookie_name, cookie, path="/", httponly=True, samesite="Lax")
            key = hashlib.sha256(self._id.encode()).hexdigest()
            store.save(key, json.dumps(dict(self), separators=(",", ":")), timeout)

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

    return provider(ISessionFactory)(FloorSession)
